"""Fault drill: the Ray head is killed in the middle of an ``ldp submit --no-wait`` job.

A real head (``ldp cluster up`` on free ports) runs a small adapter job that checkpoints every few
steps. Once the first checkpoint is committed, every process of that head is SIGKILLed (its own
session: the head machine dying; never ``ray stop``). Then:

- ``ldp status JOB`` answers at once and says in one line what happened: the head was lost, the
  job was interrupted, the step of its last checkpoint;
- the head is started again and ``ldp submit --resume JOB`` continues from that checkpoint (the
  resumed run starts there, not at 0), finishes, and publishes the adapter exactly once.

It prints its figure line: operations tried, failures injected, data lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import free_port, subprocess_env

pytestmark = pytest.mark.slow

STEPS, EVERY = 32, 8


def _ldp(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ldp", *args], env=subprocess_env(), capture_output=True,
                          text=True, check=False, timeout=timeout)


def _session(sid: int) -> list[int]:
    """Live processes of session ``sid``: a head started by ``ldp cluster up`` leads its own
    session; its GCS, raylet and dashboard share its process group, and the Ray workers (each in
    a process group of its own) still share the session."""
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] not in "ZX":
                pids.append(int(pid))
    return pids


def _kill_head(sid: int, timeout: float = 30, check: bool = True) -> int:
    """SIGKILL every process of one head (its session, nothing else); returns how many."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while (pids := _session(sid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    assert not (check and _session(sid)), f"processes of head {sid} survived SIGKILL"
    return len(killed)


def _checkpoints(run: Path) -> list[int]:
    """Steps of the checkpoints the job saw committed (its ``checkpoint`` events)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e["step"] for e in events if e.get("event") == "checkpoint"]


@pytest.fixture
def head_ports():
    return {"--port": free_port(), "--dashboard-port": free_port(), "--client-port": free_port()}


def _up(ports: dict[str, int]) -> dict:
    args = [str(x) for kv in ports.items() for x in kv]
    up = _ldp("cluster", "up", "--num-cpus", "2", *args, "--json")
    assert up.returncode == 0, up.stderr
    return json.loads(up.stdout)


def _events(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def test_head_killed_mid_job_then_resumed(small_base, data_dir, tmp_path, in_jobs_env, head_ports):
    started = time.monotonic()
    registry, storage = tmp_path / "registry", tmp_path / "runs"
    heads = [_up(head_ports)]
    try:
        sub = _ldp(
            "submit", "--task", "sst2", "--base", str(small_base.folder), "--steps", str(STEPS),
            "--workers", "1", "--data-dir", str(data_dir), "--registry", registry.as_uri(),
            "--set", f"checkpoint_every={EVERY}", "--set", f"storage_path={storage}",
            "--set", "loop.batch_size=8", "--set", "train_limit=128", "--set", "val_limit=16",
            "--set", "eval.limit=16", "--no-wait",
        )
        assert sub.returncode == 0, sub.stderr
        job = sub.stdout.split()[0]
        run = storage / job

        deadline = time.monotonic() + 240
        while not _checkpoints(run) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _checkpoints(run), _ldp("logs", job).stdout[-3000:]
        victims = _kill_head(heads[-1]["pid"])  # the head machine dies: GCS, raylet, dashboard, workers
        killed_at = time.monotonic()
        last = max(_checkpoints(run))
        assert last < STEPS, "the job finished before the head was killed"

        # ldp status answers at once, every time, and says in one line what happened.
        line = None
        while time.monotonic() < killed_at + 90:
            st = _ldp("status", job, "--json", timeout=30)
            assert st.returncode == 0, st.stderr
            rec = json.loads(st.stdout)
            line = rec.get("error") or rec.get("interrupted")
            if line:
                break
            time.sleep(1)
        print(f"status {time.monotonic() - killed_at:.1f}s after the kill: {rec['state']}: {line}")
        assert line and "\n" not in line
        assert f"Ray head at {heads[-1]['address']} was lost" in line
        assert f"last checkpoint at step {last}" in line and f"ldp submit --resume {job}" in line
        table = _ldp("status", job, timeout=30)
        assert table.returncode == 0 and "Traceback" not in table.stdout + table.stderr
        assert f"step {last}" in table.stdout

        # Wait for the driver to end (it cannot outlive its cluster), then the head comes back.
        deadline = time.monotonic() + 120
        while json.loads(_ldp("status", job, "--json").stdout)["state"] == "RUNNING":
            assert time.monotonic() < deadline, "the job's driver outlived its head by 2 minutes"
            time.sleep(1)
        heads.append(_up(head_ports))
        resumed = _ldp("submit", "--resume", job, timeout=400)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        log = _ldp("logs", job).stdout
        assert f"resumed at step {last}/{STEPS}" in log
        starts = [e["step"] for e in _events(run) if e.get("event") == "start"]
        assert starts == [0, last], starts  # the second run began at the checkpoint, not at 0
        final = json.loads(_ldp("status", job, "--json").stdout)
        assert final["state"] == "SUCCEEDED" and final["result"]["ref"] == "adapters/sst2/lora-diffusion@1"
        versions = sorted(p.name for p in (registry / "adapters" / "sst2" / "lora-diffusion").iterdir()
                          if p.name.isdigit())
        assert versions == ["1"], versions  # published once
    finally:
        _ldp("cluster", "down", timeout=120)  # the head running now, if any, by its recorded pid
        for h in heads:
            _kill_head(h["pid"], check=False)  # whatever is left of this test's heads, by session
    ops = 1 + 1 + 2 + 1  # submit, kill, status (json + table), resume
    print(f"\nhead-kill drill: operations tried {ops}, failures injected 1 (head SIGKILLed, "
          f"{victims} processes, after checkpoint {last} of {STEPS}), resumed at step {last}, published once, data lost = 0 "
          f"({time.monotonic() - started:.0f}s)")

"""Fault drill: the disk holding a job's Ray storage fills up while a checkpoint is written.

``ldp submit --no-wait`` runs a small adapter job (embedded Ray) whose ``storage_path`` is a
small tmpfs. Once its first checkpoint is committed the test fills the tmpfs, leaving room for the
per-step metrics but not for a checkpoint, so the second checkpoint's copy into storage fails.
Then:

- the job FAILS, and ``ldp status`` says why in one line (no traceback);
- the first checkpoint is intact in storage (its trainer state says its step; its tensors load);
- with space freed, ``ldp submit --resume`` starts from that checkpoint, not from the
  half-written second one and not from 0, finishes, and publishes the adapter once.

Needs ``mount -t tmpfs``; skipped with the reason where that is not permitted. Prints the
drill's figure line.
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
from safetensors.torch import load_file

from .conftest import subprocess_env

pytestmark = pytest.mark.slow

STEPS, EVERY = 32, 8
LEAVE_FREE = 32 * 1024


def _ldp(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ldp", *args], env=subprocess_env(), capture_output=True,
                          text=True, check=False, timeout=timeout)


@pytest.fixture
def small_disk(tmpfs_mount):
    """A 64 MB tmpfs, unmounted afterwards whatever happens."""
    return tmpfs_mount("64m", "ldp-diskfull-job-")


def _events(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut short by the full disk
            pass
    return out


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _state(job: str) -> dict:
    return json.loads(_ldp("status", job, "--json").stdout)


def _stop_job(job: str) -> None:
    """Kill what is left of a job this test started: its detached driver leads a session of its
    own, and its embedded Ray (workers included) lives in that session."""
    from ldp.jobs import records

    try:
        rec = records.get_job(job)
    except Exception:  # noqa: BLE001 - never submitted
        return
    if rec.finished or not rec.pid:
        return
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == rec.pid:
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                continue


def test_disk_full_during_a_job_checkpoint(small_base, data_dir, tmp_path, in_jobs_env, small_disk, fill_disk):
    started = time.monotonic()
    registry, storage = tmp_path / "registry", small_disk / "runs"
    job = "ldp-drill-diskfull-0001"
    sub = _ldp(
        "submit", "--task", "sst2", "--base", str(small_base.folder), "--steps", str(STEPS),
        "--workers", "1", "--data-dir", str(data_dir), "--registry", registry.as_uri(),
        "--set", f"checkpoint_every={EVERY}", "--set", f"storage_path={storage}",
        "--set", "max_failures=0", "--set", "loop.batch_size=8", "--set", "train_limit=128",
        "--set", "val_limit=16", "--set", "eval.limit=16", "--no-wait", "--job-id", job,
    )
    assert sub.returncode == 0, sub.stderr
    run = storage / job
    try:
        deadline = time.monotonic() + 300
        while not any(e.get("event") == "checkpoint" for e in _events(run)):
            assert time.monotonic() < deadline, _ldp("logs", job).stdout[-3000:]
            time.sleep(0.05)
        first = run / f"step_{EVERY:06d}"
        ckpt_bytes = _size(first)
        assert ckpt_bytes > 4 * LEAVE_FREE  # so the space left cannot hold the next checkpoint
        filler = fill_disk(small_disk, LEAVE_FREE, chunk=1 << 20)

        deadline = time.monotonic() + 300
        while (rec := _state(job))["state"] in ("PENDING", "RUNNING"):
            assert time.monotonic() < deadline, _ldp("logs", job).stdout[-3000:]
            time.sleep(1)
        assert rec["state"] == "FAILED", rec
        assert "No space left on device" in rec["error"] and "\n" not in rec["error"], rec["error"]
        shown = _ldp("status", job)
        assert shown.returncode == 0 and "Traceback" not in shown.stdout + shown.stderr
        assert [x for x in shown.stdout.splitlines() if x.startswith("error: ")] == [f"error: {rec['error']}"]
        checkpoints = [e["step"] for e in _events(run) if e.get("event") == "checkpoint"]
        assert checkpoints == [EVERY], checkpoints  # the second one never committed

        # The first checkpoint is intact: its state says step 8, its tensors load.
        state = json.loads((first / "trainer_state.json").read_text())
        assert state["step"] == EVERY
        assert set(load_file(first / "rng.safetensors")) == {"generator", "torch_global"}
        assert _size(first) == ckpt_bytes

        # Space back: the resume starts from step 8 (not the half-written 16, not 0) and finishes.
        filler.unlink()
        resumed = _ldp("submit", "--resume", job, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert f"resumed at step {EVERY}/{STEPS}" in _ldp("logs", job).stdout
        starts = [e["step"] for e in _events(run) if e.get("event") == "start"]
        assert starts == [0, EVERY], starts
        final = _state(job)
        assert final["state"] == "SUCCEEDED" and final["result"]["ref"] == "adapters/sst2/lora-diffusion@1"
        versions = [p.name for p in (registry / "adapters" / "sst2" / "lora-diffusion").iterdir() if p.name.isdigit()]
        assert versions == ["1"], versions
    finally:
        _stop_job(job)  # a failed drill leaves no job running
    print(f"\ndisk-full drill (job): operations tried 4 (submit, status, checkpoint load, resume), "
          f"failures injected 1 (storage full after checkpoint {EVERY}; checkpoint {ckpt_bytes} bytes, "
          f"{LEAVE_FREE} left), resumed at step {EVERY}, published once, data lost = 0 "
          f"({time.monotonic() - started:.0f}s)")

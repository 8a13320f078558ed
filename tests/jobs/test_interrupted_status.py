"""``ldp status`` of a job whose driver or Ray head vanished: one line with what was lost and the
last committed checkpoint (read from the run's metrics events). Fast: real records, a real
listening socket for a head that answers, a closed port for one that does not; no Ray."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from ldp.cli.main import main
from ldp.jobs import records


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def _job(tmp_path, checkpoints: list[int]) -> str:
    storage = tmp_path / "runs"
    rec = records.create_job({"kind": "adapter", "task": "sst2", "storage_path": str(storage)})
    run = storage / rec.job_id
    run.mkdir(parents=True)
    lines = [{"event": "start", "step": 0}] + [
        {"event": "checkpoint", "step": s, "name": f"step_{s:06d}"} for s in checkpoints]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return rec.job_id


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_driver_gone_with_its_head(tmp_path, capsys):
    job = _job(tmp_path, [8, 16])
    address = f"127.0.0.1:{_closed_port()}"
    records.update_job(job, state="RUNNING", pid=_dead_pid(), extra={"ray_address": address})
    assert main(["status", job]) == 0
    out = capsys.readouterr().out
    errors = [x for x in out.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1, out
    line = errors[0]
    assert f"the Ray head at {address} was lost" in line
    assert "last checkpoint at step 16" in line and f"ldp submit --resume {job}" in line
    assert records.get_job(job).state == "FAILED"


def test_driver_gone_but_head_answers(tmp_path):
    job = _job(tmp_path, [])
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        pid = _dead_pid()
        records.update_job(job, state="RUNNING", pid=pid, extra={"ray_address": address})
        error = records.get_job(job).error
    assert f"the job's process (pid {pid}) exited" in error and "was lost" not in error
    assert "no checkpoint was committed" in error


def test_running_driver_whose_head_is_gone(tmp_path, capsys):
    job = _job(tmp_path, [8])
    address = f"127.0.0.1:{_closed_port()}"
    records.update_job(job, state="RUNNING", pid=os.getpid(), extra={"ray_address": address})
    assert main(["status", job, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["state"] == "RUNNING"
    assert f"the Ray head at {address} was lost" in rec["interrupted"]
    assert "last checkpoint at step 8" in rec["interrupted"]


@pytest.mark.parametrize("answers", [True, False])
def test_a_live_job_on_a_live_head_has_no_interruption(tmp_path, capsys, answers):
    job = _job(tmp_path, [8])
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}" if answers else None
        records.update_job(job, state="RUNNING", pid=os.getpid(), extra={"ray_address": address})
        assert main(["status", job, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["state"] == "RUNNING" and "interrupted" not in rec and rec["error"] is None

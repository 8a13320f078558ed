"""Job records, ``launch`` on this machine (in-process and detached), and the CLI over them.

The job kind here is ``toy_recipe:hello`` (no Ray): these tests are about the jobs plumbing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from ldp.cli.main import main
from ldp.errors import LdpError, NotFoundError, UsageError
from ldp.jobs import records
from ldp.jobs.launch import launch

from .conftest import HERE

ID_RE = re.compile(r"^ldp-sst2-\d{8}-\d{6}-[0-9a-f]{4}$")


@pytest.fixture(autouse=True)
def _recipe_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what ran before (a launched job's own output)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_record_round_trip_and_listing():
    spec = {"kind": "adapter", "task": "sst2", "size": "tiny", "steps": 3}
    rec = records.create_job(spec)
    assert ID_RE.match(rec.job_id), rec.job_id
    folder = records.job_dir(rec.job_id)
    assert {p.name for p in folder.iterdir()} >= {"spec.yaml", "status.json", "job.log"}
    assert records.read_spec(rec.job_id) == spec
    got = records.get_job(rec.job_id)
    assert (got.state, got.kind, got.label) == ("PENDING", "adapter", "sst2")

    records.update_job(rec.job_id, state="RUNNING", started_at=time.time())
    done = records.update_job(
        rec.job_id,
        state="SUCCEEDED",
        ended_at=time.time(),
        result={"ref": "adapters/sst2/lora-diffusion@1", "metrics": {"val_loss": 1.5}},
    )
    assert records.get_job(rec.job_id).as_dict() == done.as_dict()
    assert json.loads((folder / "status.json").read_text())["state"] == "SUCCEEDED"

    other = records.create_job({"kind": "adapter", "task": "agnews"})
    assert [r.job_id for r in records.list_jobs()] == [other.job_id, rec.job_id]

    with pytest.raises(UsageError, match="exists already"):
        records.create_job(spec, job_id=rec.job_id)
    with pytest.raises(ValueError, match="unknown job state"):
        records.update_job(rec.job_id, state="DONE")
    with pytest.raises(NotFoundError):
        records.get_job("ldp-nope-20200101-000000-abcd")
    with pytest.raises(UsageError, match="invalid job id"):
        records.get_job("../etc")


def test_a_dead_runner_process_turns_the_job_failed():
    rec = records.create_job({"kind": "adapter", "task": "sst2"})
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    records.update_job(rec.job_id, state="RUNNING", pid=proc.pid, pid_started=None)
    got = records.get_job(rec.job_id)
    assert got.state == "FAILED" and f"pid {proc.pid}" in got.error
    # A live process keeps it RUNNING.
    rec2 = records.create_job({"kind": "adapter", "task": "sst2"})
    records.update_job(rec2.job_id, state="RUNNING", pid=os.getpid())
    assert records.get_job(rec2.job_id).state == "RUNNING"


def test_launch_wait_runs_in_process_and_records_the_result(capsys):
    job_id = launch({"kind": "toy_recipe:hello", "message": "in-process"}, wait=True)
    rec = records.get_job(job_id)
    assert rec.state == "SUCCEEDED" and rec.result == {"ref": None, "metrics": {"answer": 42}}
    assert rec.started_at and rec.ended_at and rec.ended_at >= rec.started_at
    log = records.read_log(job_id)
    assert f"hello from {job_id}: in-process" in log  # the job's output is in job.log
    assert records.parse_result_line(log) == rec.result

    code, out, _ = _cli(capsys, "status", job_id, "--json")
    assert code == 0 and json.loads(out)["state"] == "SUCCEEDED"
    code, out, _ = _cli(capsys, "status", job_id)
    assert code == 0 and "SUCCEEDED" in out and "answer=42" in out
    code, out, _ = _cli(capsys, "logs", job_id)
    assert code == 0 and "hello from" in out
    code, out, _ = _cli(capsys, "jobs", "--json")
    assert code == 0 and [j["job_id"] for j in json.loads(out)] == [job_id]
    code, out, _ = _cli(capsys, "jobs")
    assert code == 0 and job_id in out and "SUCCEEDED" in out


def test_launch_wait_failure_is_recorded_and_raised(capsys):
    with pytest.raises(LdpError, match="RuntimeError: asked to fail: boom"):
        launch({"kind": "toy_recipe:hello", "task": "sst2", "fail": "boom"}, wait=True)
    (rec,) = records.list_jobs()
    assert rec.state == "FAILED" and rec.error == "RuntimeError: asked to fail: boom"
    code, out, _ = _cli(capsys, "status", rec.job_id, "--json")
    assert code == 0 and json.loads(out)["error"] == rec.error
    code, _, err = _cli(capsys, "status", "ldp-none-20200101-000000-0000")
    assert code == 1 and err.startswith("ldp: error: no job") and len(err.splitlines()) == 1


def test_launch_no_wait_runs_detached_and_logs_follow(capsys):
    job_id = launch({"kind": "toy_recipe:hello", "message": "detached"}, wait=False)
    rec = records.get_job(job_id)
    assert rec.pid and rec.pid != os.getpid()  # another process runs it
    try:
        code, out, _ = _cli(capsys, "logs", job_id, "--follow")  # returns when the job ends
        assert code == 0 and f"hello from {job_id}: detached" in out
        assert records.RESULT_PREFIX in out
        rec = records.get_job(job_id)
        assert rec.state == "SUCCEEDED", records.read_log(job_id)
        assert rec.result["metrics"] == {"answer": 42}
    finally:
        try:
            os.kill(rec.pid, 0)
        except ProcessLookupError:
            pass
        else:
            os.kill(rec.pid, 9)


def test_run_job_refuses_a_job_that_already_ran(capsys):
    job_id = launch({"kind": "toy_recipe:hello"}, wait=True)
    code, _, err = _cli(capsys, "_run-job", job_id)
    assert code == 1 and "not PENDING" in err
    code, _, err = _cli(capsys, "_run-job", "ldp-x-20200101-000000-0000", "--spec-json", "{bad")
    assert code == 2 and "--spec-json is not valid JSON" in err


def test_status_refuses_a_gcs_address(capsys):
    code, _, err = _cli(capsys, "jobs", "--address", "127.0.0.1:6379")
    assert code == 2 and "Jobs API" in err

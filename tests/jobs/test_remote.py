"""Jobs on a remote cluster through the Jobs API: a real ``ray start --head`` (2 CPUs, dashboard,
token auth off) on free ports, stopped by its own pid afterwards.

Jobs run ``ldp _run-job`` inside the cluster (the entrypoint ``launch`` submits): a small real
training job, and ``toy_recipe:hello`` for the failure path. The head gets its own ``LDP_HOME``,
as a real remote machine would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from ldp.cli.main import main
from ldp.errors import LdpError
from ldp.jobs import records
from ldp.jobs.launch import launch

from .conftest import free_port, subprocess_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head(jobs_env):
    root = Path(jobs_env["root"])
    (root / "rh").mkdir()
    port, dash = free_port(), free_port()
    env = subprocess_env(
        {
            "RAY_AUTH_MODE": "disabled",
            "RAY_TMPDIR": str(root / "rh"),
            "LDP_HOME": str(root / "head-ldp-home"),
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        }
    )
    log = open(root / "head.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--dashboard-port={dash}",
            # not Ray's fixed default (52365): another Ray on the machine may hold it, and a head
            # whose job agent cannot bind answers every submission "No available agent"
            f"--dashboard-agent-listen-port={free_port()}",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited: {(root / 'head.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the Ray head's dashboard did not come up in 120 s")
            time.sleep(1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever of its process group is left
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_remote_training_job_status_logs_and_list(head, in_jobs_env, capsys):
    """A real (small) training job: ``ldp _run-job`` in the cluster attaches to it as a driver
    and runs the toy recipe on 2 workers with ZeRO-2."""
    spec = {
        "kind": "toy_recipe:execute",
        "task": "sst2",
        "config": {"steps": 10},
        "workers": 2,
        "strategy": "zero2",
        "checkpoint_every": 5,
    }
    job_id = launch(spec, wait=False, address=head)
    local = records.get_job(job_id)
    assert local.address == head  # remembered here, runs there

    deadline = time.monotonic() + 240
    while True:
        code, out, err = _cli(capsys, "status", job_id, "--address", head, "--json")
        assert code == 0, err
        status = json.loads(out)
        if status["state"] in records.TERMINAL_STATES or time.monotonic() > deadline:
            break
        time.sleep(2)
    code, logs, _ = _cli(capsys, "logs", job_id, "--address", head)
    assert status["state"] == "SUCCEEDED", logs[-3000:]
    assert code == 0 and f"[ldp] {job_id}: step 10/10" in logs  # the workers' lines
    result = status["result"]  # from the job's LDP_RESULT line
    assert result["ref"] == f"toy/{job_id}" and result["metrics"]["step"] == 10
    # The head's own LDP_HOME holds the run (the cluster's machine, not this one's).
    artifact = Path(result["artifact"])
    assert artifact.parts[-3:] == ("runs", job_id, "artifact")
    assert str(artifact).startswith(str(Path(in_jobs_env["root"]) / "head-ldp-home"))
    assert (artifact / "weights.safetensors").is_file()
    assert status["kind"] == "toy_recipe:execute" and status["label"] == "sst2"  # metadata

    # Without --address the local record points at the cluster; its state is mirrored.
    code, out, _ = _cli(capsys, "status", job_id, "--json")
    assert code == 0 and json.loads(out)["state"] == "SUCCEEDED"
    assert records.get_job(job_id).state == "SUCCEEDED"
    code, out, _ = _cli(capsys, "logs", job_id)
    assert code == 0 and f"[ldp] {job_id}: step 10/10" in out

    code, out, _ = _cli(capsys, "jobs", "--address", head, "--json")
    listed = {j["job_id"]: j for j in json.loads(out)}
    assert code == 0 and listed[job_id]["state"] == "SUCCEEDED"
    code, out, _ = _cli(capsys, "jobs", "--address", head)
    assert code == 0 and job_id in out


def test_remote_job_failure_with_wait(head, in_jobs_env, capsys):
    with pytest.raises(LdpError, match=r"FAILED: RuntimeError: asked to fail: boom"):
        launch({"kind": "toy_recipe:hello", "fail": "boom"}, wait=True, address=head)
    (rec,) = [r for r in records.list_jobs() if r.state == "FAILED"]
    assert rec.error == "RuntimeError: asked to fail: boom" and rec.address == head
    code, _, err = _cli(capsys, "status", "ldp-nope-20200101-000000-0000", "--address", head)
    assert code == 1 and "no job ldp-nope" in err

"""`ldp cluster up|status|down` with a real `ray start --head` on non-default ports, and
connect() to it through the Jobs API and as a driver. Always torn down (by its own pid)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import free_port, subprocess_env

pytestmark = pytest.mark.slow


def _ldp(home: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ldp", "cluster", *args],
        env=subprocess_env(home),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Members that are only zombies do not count.
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


@pytest.fixture(scope="module")
def head(ray_home):
    ports = {"port": free_port(), "dashboard": free_port(), "client": free_port()}
    up = _ldp(
        ray_home,
        "up",
        "--num-cpus",
        "1",
        "--port",
        str(ports["port"]),
        "--dashboard-port",
        str(ports["dashboard"]),
        "--client-port",
        str(ports["client"]),
        "--json",
    )
    info = json.loads(up.stdout) if up.returncode == 0 else None
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        yield {"info": info, "ports": ports, "home": ray_home}
    finally:
        _ldp(ray_home, "down", timeout=120)
        if info and _group_alive(info["pid"]):  # last resort: only the group we started
            os.killpg(info["pid"], 9)


def test_up_reports_address_dashboard_and_auth(head):
    info, ports = head["info"], head["ports"]
    assert info["port"] == ports["port"] and info["address"].endswith(f":{ports['port']}")
    assert info["dashboard_url"] == f"http://127.0.0.1:{ports['dashboard']}"
    assert info["auth"] == "token"
    token_file = Path(head["home"]["HOME"]) / ".ray" / "auth_token"
    assert info["auth_token_path"] == str(token_file) and token_file.is_file()
    assert token_file.stat().st_mode & 0o077 == 0  # owner-only: the token lets one run code
    assert _group_alive(info["pid"])


def test_dashboard_needs_the_token(head):
    url = f"{head['info']['dashboard_url']}/api/jobs/"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=30)
    assert err.value.code == 401
    token = (Path(head["home"]["HOME"]) / ".ray" / "auth_token").read_text().strip()
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


def test_second_up_is_refused(head):
    again = _ldp(
        head["home"],
        "up",
        "--port",
        str(free_port()),
        "--dashboard-port",
        str(free_port()),
        "--client-port",
        str(free_port()),
    )
    assert again.returncode == 1
    assert again.stderr.startswith("ldp: error: a Ray head is already running")
    assert "Traceback" not in again.stderr


def test_status_json_shows_resources(head):
    st = _ldp(head["home"], "status", "--json")
    assert st.returncode == 0, st.stderr[-2000:]
    out = json.loads(st.stdout)
    assert out["running"] and out["reachable"]
    assert out["head"]["pid"] == head["info"]["pid"]
    assert out["resources"]["total"]["cpus"] == 1
    assert out["resources"]["total"]["gpus"] == 0
    assert out["resources"]["available"]["memory_bytes"] > 0
    text = _ldp(head["home"], "status")
    assert "CPUs:       1 total" in text.stdout and "head:       running" in text.stdout


def test_connect_http_is_a_jobs_api_handle(head, in_ray_home):
    from ldp.cluster import connect

    assert _ldp(head["home"], "status").returncode == 0  # a driver on this cluster, whatever ran before
    handle = connect(head["info"]["dashboard_url"])
    assert handle.kind == "jobs" and handle.uses_jobs_api and not handle.owns_driver
    # That `ldp cluster status` driver is in the job list (which the dashboard fills from the GCS
    # asynchronously, so a loaded machine may need a few polls).
    deadline = time.monotonic() + 60
    while True:
        jobs = handle.job_client.list_jobs()
        assert isinstance(jobs, list)
        if any("cluster status" in (j.entrypoint or "") for j in jobs) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert any("cluster status" in (j.entrypoint or "") for j in jobs), [j.entrypoint for j in jobs]
    assert handle.runtime_env["env_vars"]["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "1"
    with pytest.raises(Exception, match="Jobs API handle"):
        handle.resources()
    handle.shutdown()  # nothing to stop


def test_connect_host_port_attaches_and_detaches(head, in_ray_home):
    import ray
    from ldp.cluster import check_fits, connect

    handle = connect(f"127.0.0.1:{head['ports']['port']}")
    try:
        assert handle.kind == "ray" and handle.owns_driver and not handle.started_cluster
        assert handle.resources().cpus == 1
        with pytest.raises(Exception, match=r"job needs 2 CPUs \(2 workers x 1\), cluster has 1"):
            check_fits(2, 1)
    finally:
        handle.shutdown()
    assert not ray.is_initialized()
    # Detaching left the head running.
    assert _group_alive(head["info"]["pid"])


def test_down_stops_exactly_that_head(head):
    pid = head["info"]["pid"]
    down = _ldp(head["home"], "down")
    assert down.returncode == 0 and f"stopped the Ray head (pid {pid}" in down.stdout
    deadline = time.monotonic() + 30
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(pid)
    assert not (Path(head["home"]["LDP_HOME"]) / "cluster" / "head.json").exists()
    assert not (Path(head["home"]["RAY_TMPDIR"]) / "ray" / "ray_current_cluster").exists()
    again = _ldp(head["home"], "down")
    assert again.returncode == 0 and "no Ray head" in again.stdout
    st = json.loads(_ldp(head["home"], "status", "--json").stdout)
    assert st == {
        "running": False,
        "head": None,
        "address": None,
        "reachable": False,
        "resources": None,
    }


def test_agent_port_moves_off_ray_default_when_another_ray_holds_it():
    """A second Ray on the machine (an embedded job's) holds the agent port 52365: the head gets a
    free one instead, or its Jobs API would answer every submission "No available agent"."""
    import socket

    from ray._private.ray_constants import DEFAULT_DASHBOARD_AGENT_LISTEN_PORT as default

    from ldp.cluster import local
    from ldp.cluster.ports import port_free

    holder = socket.socket()
    try:
        holder.bind(("0.0.0.0", default))
        holder.listen()
    except OSError:
        pass  # already held by some other process: the same situation
    try:
        port = local._agent_port()
        assert port != default and port_free(port)
    finally:
        holder.close()

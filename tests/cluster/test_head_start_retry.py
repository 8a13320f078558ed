"""``ldp cluster up`` tries ``ray start`` once more when it gave up on a busy machine.

``ray start`` is replaced by a small script (the real one cannot be made to time out on
demand): the first call prints Ray's "timed out during startup" error and exits 1, the second
listens on the GCS and dashboard ports and reports "Ray runtime started", as Ray does."""

from __future__ import annotations

import sys
import textwrap

import pytest
from ldp.errors import LdpError

from .conftest import free_port

FAKE = textwrap.dedent('''
    import socket, sys, time
    from pathlib import Path
    args = sys.argv[1:]
    count = Path(sys.argv[0]).with_suffix(".count")
    n = int(count.read_text()) + 1 if count.exists() else 1
    count.write_text(str(n))
    if n <= FAIL:
        print("Exception: The current node timed out during startup. This could happen because "
              "some of the raylet failed to startup or the GCS has become overloaded.", flush=True)
        sys.exit(1)
    ports = [int(a.split("=")[1]) for a in args if a.startswith(("--port=", "--dashboard-port="))]
    socks = []
    for p in ports:
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", p)); s.listen(); socks.append(s)
    print("Ray runtime started.", flush=True)
    time.sleep(600)
''')


def _fake_ray(tmp_path, monkeypatch, fail: int):
    from ldp.cluster import local

    script = tmp_path / "fake_ray.py"
    script.write_text(f"FAIL = {fail}\n" + FAKE)
    monkeypatch.setattr(local, "_ray_cli", lambda: [sys.executable, str(script)])
    monkeypatch.setattr(local, "_node_ip", lambda: "127.0.0.1")
    monkeypatch.setenv("LDP_HOME", str(tmp_path / "home"))
    return local, script.with_suffix(".count")


def test_a_start_that_timed_out_is_tried_once_more(tmp_path, monkeypatch):
    local, count = _fake_ray(tmp_path, monkeypatch, fail=1)
    head = local.start_head(1, free_port(), free_port(), free_port(), auth="disabled", timeout=60)
    try:
        assert count.read_text() == "2"
        assert local.running_head() is not None
    finally:
        local._stop(head)
    assert local._process(head) is None


def test_a_second_time_out_is_reported_with_the_log(tmp_path, monkeypatch):
    local, count = _fake_ray(tmp_path, monkeypatch, fail=2)
    with pytest.raises(LdpError, match="timed out during startup"):
        local.start_head(1, free_port(), free_port(), free_port(), auth="disabled", timeout=60)
    assert count.read_text() == "2"
    assert not local.state_path().exists()

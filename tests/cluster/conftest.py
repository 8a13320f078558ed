"""Fixtures for the cluster layer: isolated Ray homes and free ports.

Ray's unix sockets live under its temp dir and must stay short (107 bytes), so these use
``/tmp/ldp-ray-XXXX`` rather than pytest's deep ``tmp_path``. HOME is swapped too: token auth
writes ``~/.ray/auth_token`` and must not touch the real home.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

# Variables that would point a test at someone else's cluster or change Ray's auth mode.
_RAY_VARS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_home(ray_session_home):
    """A HOME / RAY_TMPDIR / LDP_HOME for all Ray tests here, restored afterwards.

    One for the session, not one per module: Ray caches the auth token of the first HOME it
    reads in the process, and a Ray started later under another HOME would not find it."""
    root = Path(tempfile.mkdtemp(prefix="ldp-ray-", dir="/tmp"))
    env = {**ray_session_home, "LDP_HOME": str(root / "l")}
    Path(env["LDP_HOME"]).mkdir()
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    for key in _RAY_VARS:
        mp.delenv(key, raising=False)
    mp.setenv("RAY_DISABLE_USAGE_STATS", "1")
    try:
        yield env
    finally:
        mp.undo()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def in_ray_home(ray_home, monkeypatch):
    """Per test: put the Ray homes back (the repo's autouse fixture swaps LDP_HOME)."""
    for key, value in ray_home.items():
        monkeypatch.setenv(key, value)
    for key in _RAY_VARS:
        monkeypatch.delenv(key, raising=False)
    return ray_home


def subprocess_env(home: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _RAY_VARS}
    env.update(home)
    env["RAY_DISABLE_USAGE_STATS"] = "1"
    return env

"""Fixtures for the jobs layer: Ray homes, the test-only recipe on every path, a local Ray.

``toy_recipe`` (this folder) must be importable by Ray workers and by ``ldp _run-job``
subprocesses: this folder goes on ``PYTHONPATH`` for the whole session. Ray's sockets live under a
short ``/tmp/ldp-jobs-XXXX`` (they must stay under 107 bytes); HOME is swapped too (token auth
writes ``~/.ray/auth_token``). DeepSpeed's JIT-built op is cached in the real user's
``~/.cache/torch_extensions`` (or ``TORCH_EXTENSIONS_DIR``), resolved before HOME is swapped.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_RAY_VARS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def jobs_env(ray_session_home):
    """Session-wide environment for Ray tests here (restored afterwards)."""
    ext = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
    root = Path(tempfile.mkdtemp(prefix="ldp-jobs-", dir="/tmp"))
    env = {**ray_session_home, "LDP_HOME": str(root / "l")}
    Path(env["LDP_HOME"]).mkdir()
    pythonpath = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    env.update(
        TORCH_EXTENSIONS_DIR=ext,
        PYTHONPATH=pythonpath,
        RAY_DISABLE_USAGE_STATS="1",
        RAY_COLOR_PREFIX="0",
        OMP_NUM_THREADS="1",
    )
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    for key in _RAY_VARS:
        mp.delenv(key, raising=False)
    mp.syspath_prepend(str(HERE))
    try:
        yield {**env, "root": str(root)}
    finally:
        mp.undo()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def in_jobs_env(jobs_env, monkeypatch):
    """Per test: put the session's homes back (the repo's autouse fixture swaps LDP_HOME)."""
    for key, value in jobs_env.items():
        if key != "root":
            monkeypatch.setenv(key, value)
    for key in _RAY_VARS:
        monkeypatch.delenv(key, raising=False)
    return jobs_env


@pytest.fixture(scope="module")
def local_ray(jobs_env):
    """An embedded Ray with 2 CPUs (and the dashboard, which Train's cleanup uses)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _RAY_VARS}
    env.update(extra or {})
    return env

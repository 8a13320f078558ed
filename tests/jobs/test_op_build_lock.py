"""A DeepSpeed op-build lock left by a killed build is removed; a live build's lock is waited on."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from ldp.jobs.op_build_lock import extensions_root, stale_locks, wait_for_op_builds


def _age(folder: Path, seconds: float) -> None:
    then = time.time() - seconds
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (then, then))


def _op_folder(root: Path, name: str, age: float) -> Path:
    """``root/<name>`` (torch's layout) holding an object file and a lock, all ``age`` s old."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "shm.o").write_bytes(b"\0")
    (folder / "lock").touch()
    _age(folder, age)
    return folder


def test_only_locks_whose_folder_went_quiet_are_stale(tmp_path):
    dead = _op_folder(tmp_path, "dead_op", age=3600)
    live = _op_folder(tmp_path, "live_op", age=3600)
    (live / ".ninja_log").write_text("a build still writing\n")  # fresh write: the build is alive
    fresh = _op_folder(tmp_path, "fresh_op", age=5)
    assert stale_locks(tmp_path, stale_after=300) == [dead / "lock"]
    assert stale_locks(tmp_path, stale_after=2) == [dead / "lock", fresh / "lock"]
    assert stale_locks(tmp_path / "missing") == []


def test_a_stale_lock_is_removed_and_the_op_left_alone(tmp_path):
    dead = _op_folder(tmp_path, "deepspeed_shm_comm", age=3600)
    said: list[str] = []
    assert wait_for_op_builds(tmp_path, stale_after=300, log=said.append) == [dead / "lock"]
    assert not (dead / "lock").exists() and (dead / "shm.o").exists()
    assert len(said) == 1 and "stale DeepSpeed op-build lock" in said[0]


def test_a_live_build_is_waited_for_until_it_releases_its_lock(tmp_path):
    live = _op_folder(tmp_path, "deepspeed_shm_comm", age=0)
    threading.Timer(0.5, (live / "lock").unlink).start()  # the build ends
    said: list[str] = []
    started = time.monotonic()
    assert wait_for_op_builds(tmp_path, stale_after=300, poll=0.05, log=said.append) == []
    assert time.monotonic() - started >= 0.45
    assert len(said) == 1 and "waiting for a DeepSpeed op build" in said[0]


def test_a_build_that_dies_while_waited_on_is_given_up_when_it_goes_stale(tmp_path):
    live = _op_folder(tmp_path, "deepspeed_shm_comm", age=0)
    removed = wait_for_op_builds(tmp_path, stale_after=0.6, poll=0.05, log=lambda _: None)
    assert removed == [live / "lock"] and not (live / "lock").exists()


def test_the_root_is_where_torch_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_root() == tmp_path  # torch puts <op>/ right under it
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    default = extensions_root()  # torch's own layout: one folder per Python and device
    assert default.parent.name == "torch_extensions" and default.name.endswith("_cpu")


@pytest.mark.slow
def test_deepspeed_starts_despite_a_lock_left_by_a_killed_build(tmp_path):
    """The real failure: every later 2-rank DeepSpeed run hung at start-up on the left lock."""
    from .test_deepspeed_backend import _run_two_ranks

    built = extensions_root() / "deepspeed_shm_comm"
    folder = tmp_path / "ext" / "deepspeed_shm_comm"  # where torch looks with the variable set
    if built.is_dir():  # reuse the built op (times kept) rather than build it again
        shutil.copytree(built, folder, ignore=shutil.ignore_patterns("lock"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lock").touch()
    _age(folder, 3600)
    old = os.environ.get("TORCH_EXTENSIONS_DIR")
    os.environ["TORCH_EXTENSIONS_DIR"] = str(folder.parent)
    try:
        out = _run_two_ranks(tmp_path / "run", ("ddp",), {"grad_accum": 1, "batch_size": 4})
    finally:
        if old is None:
            os.environ.pop("TORCH_EXTENSIONS_DIR")
        else:
            os.environ["TORCH_EXTENSIONS_DIR"] = old
    assert len(out["ddp"]["full"]) == 12  # trained every step (without the fix: hung, timed out)
    assert not (folder / "lock").exists()

"""Shared test fixtures.

The data mirror is ``../shared/data`` beside the repository (or ``LDP_TEST_DATA_DIR``). Every test
gets its own ``LDP_HOME`` so registries and caches never touch the user's home.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    env = os.environ.get("LDP_TEST_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local data mirror (``<task>/<split>.jsonl``, ``corpora/<name>/<split>.txt``)."""
    path = _data_dir()
    if not path.is_dir():
        pytest.fail(f"data mirror not found at {path}; set LDP_TEST_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def kuberay_crds() -> Path:
    """The KubeRay CRDs (``ray.io_*.yaml``) beside the data mirror: ``../shared/kuberay/crds``
    (or ``LDP_TEST_KUBERAY_CRDS``). Tests only; the project ships its own minimal schemas."""
    env = os.environ.get("LDP_TEST_KUBERAY_CRDS")
    path = Path(env) if env else _data_dir().parent / "kuberay" / "crds"
    if not path.is_dir():
        pytest.fail(f"KubeRay CRDs not found at {path}; set LDP_TEST_KUBERAY_CRDS")
    return path


_RAY_TEST_DIRS = {"jobs", "cluster", "serve"}
"""Test folders whose tests start Ray (embedded clusters, ``ldp cluster up`` heads, Serve)."""


def pytest_configure(config):
    """Under pytest-xdist each worker's in-process torch gets one thread. Two workers share a
    2-core machine, and the Ray worker's trials already take one core each (Ray gives its
    workers ``OMP_NUM_THREADS=1``); torch's default of one thread per core in both workers would
    put twice as many busy threads as cores on the machine, and time-sliced collectives and
    Ray daemons suffer most from that."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``-n 2 --dist loadgroup`` in ``pyproject.toml``) every test that starts
    Ray goes to one worker and runs there one after another, while the other worker takes the
    rest. Two local Ray clusters at once on a 2-core machine starve each other's daemons (Ray
    gives a starting node 30 s), and the drills that kill a head or count a session's processes
    assume theirs is the only Ray on the machine.

    ``tryfirst``: xdist's worker turns the marker into the ``@ray`` suffix of the node id (which is
    what ``loadgroup`` schedules by) in its own ``pytest_collection_modifyitems``; the marker must
    be on the items before that runs, or the group is silently ignored."""
    tests = REPO / "tests"
    for item in items:
        path = Path(str(item.fspath))
        if path.is_relative_to(tests) and path.relative_to(tests).parts[0] in _RAY_TEST_DIRS:
            item.add_marker(pytest.mark.xdist_group("ray"))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("ldp_home")
    monkeypatch.setenv("LDP_HOME", str(home))
    monkeypatch.delenv("LDP_REGISTRY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    yield


SMALL_NATIVE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
"""A native base small enough for a test to train it in seconds (MiniLM's tokenizer)."""


@pytest.fixture(scope="session")
def small_base(tmp_path_factory, data_dir):
    """A small native base pretrained for 40 steps on wikitext, saved in a folder.

    Returns the recipe's ``PretrainResult`` (``.folder``, ``.metrics``)."""
    from ldp.training.recipes.pretrain import PretrainConfig, run_pretrain

    cfg = PretrainConfig(size="tiny", corpus="wikitext", data_dir=str(data_dir), block_len=32,
                         train_limit=512, val_blocks=16, elbo_samples=2, num_samples=2, sample_len=8,
                         model=dict(SMALL_NATIVE))
    cfg.loop.max_steps, cfg.loop.batch_size = 40, 8
    cfg.optim.lr, cfg.optim.warmup_steps = 2e-3, 5
    out = tmp_path_factory.mktemp("small_base")
    return run_pretrain(cfg, out_dir=out, publish=False, progress=False, log=lambda m: None)


@pytest.fixture(scope="session")
def ray_session_home():
    """One HOME and RAY_TMPDIR for every Ray test of the session (tests/cluster, tests/jobs).

    Ray caches the auth token of the first HOME it reads in a process; a local Ray started later
    under another HOME cannot find it and times out starting. Short /tmp paths keep Ray's
    socket paths under 107 bytes."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="ldp-ray-", dir="/tmp"))
    homes = {"HOME": str(root / "h"), "RAY_TMPDIR": str(root / "r")}
    for path in homes.values():
        Path(path).mkdir()
    yield homes
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def tmpfs_mount():
    """``mount(size, prefix) -> folder``: a fresh tmpfs of ``size`` (``2m``, ``64m``), unmounted at
    teardown whatever happens; skips the test where mounting is not permitted (the disk-full
    drills need it)."""
    import os
    import subprocess
    import tempfile

    mounted: list[Path] = []

    def mount(size: str, prefix: str) -> Path:
        folder = Path(tempfile.mkdtemp(prefix=prefix))
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            folder.rmdir()
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); "
                        "the disk-full drill needs mount permission")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)
        if os.path.ismount(folder):
            subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()


@pytest.fixture
def fill_disk():
    """``fill(folder, leave, chunk) -> filler``: write one file until ``folder``'s file system is
    full, then give back ``leave`` bytes (a job may keep writing meanwhile, so the free space is
    never read ahead and trusted)."""
    import os

    def fill(folder: Path, leave: int, chunk: int = 4096) -> Path:
        filler = folder / "filler.bin"
        block = b"\0" * chunk
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(block)
            except OSError:
                pass
        os.truncate(filler, max(0, filler.stat().st_size - leave))
        return filler

    return fill

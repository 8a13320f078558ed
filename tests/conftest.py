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


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("ldp_home")
    monkeypatch.setenv("LDP_HOME", str(home))
    monkeypatch.delenv("LDP_REGISTRY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    yield

"""The 15-task suite: task specs, loading, SFT collation, metrics; text corpora.

- :mod:`ldp.data.tasks`    ``TaskSpec`` / ``Example``, ``get_task``, ``all_tasks`` (``tasks.yaml``)
- :mod:`ldp.data.loading`  ``load_split`` / ``load_examples`` from a mirror (local, ``s3://``) or the hub
- :mod:`ldp.data.collate`  ``encode_example``, ``SFTCollator``, ``build_sft_dataset``
- :mod:`ldp.data.metrics`  ``compute_metrics`` and the individual metrics
- :mod:`ldp.data.corpora`  ``load_corpus``, ``corpus_blocks`` for pretraining

Names are imported on first use (PEP 562), so ``import ldp.data.tasks`` does not pull in torch,
``datasets`` or the metric libraries.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    # tasks
    "Example",
    "FieldSpec",
    "LabelSpec",
    "TaskSpec",
    "all_tasks",
    "get_task",
    "load_task_specs",
    "task_names",
    # loading
    "count_rows",
    "load_examples",
    "load_split",
    "mirror_file",
    # collate
    "SFTCollator",
    "build_sft_dataset",
    "encode_example",
    "encode_examples",
    "eos_token_id",
    # metrics
    "compute_metrics",
    # corpora
    "corpus_blocks",
    "load_corpus",
]

_WHERE = {
    **dict.fromkeys(
        ["Example", "FieldSpec", "LabelSpec", "TaskSpec", "all_tasks", "get_task", "load_task_specs",
         "task_names"],
        "tasks",
    ),
    **dict.fromkeys(["count_rows", "load_examples", "load_split", "mirror_file"], "loading"),
    **dict.fromkeys(
        ["SFTCollator", "build_sft_dataset", "encode_example", "encode_examples", "eos_token_id"],
        "collate",
    ),
    "compute_metrics": "metrics",
    **dict.fromkeys(["corpus_blocks", "load_corpus"], "corpora"),
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ldp.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ldp.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""The label-marginal reference: what always answering the training split's most common label scores.

A classifier that has learned nothing about its input but the label distribution (the "collapse"
a fine-tuned diffusion LM goes through first) predicts one label for every example: the most
common one in its *training* data. Scoring that constant prediction on the evaluation split, with
the task's own metrics, gives the number a method has to beat to have learned anything. It is not
the evaluation split's majority rate: where the two splits' label mixes differ (trec's local
mirror: ``human`` leads the training split, ``entity`` the validation split), a collapsed model
scores *below* the evaluation split's majority rate, and this reference says so.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["MajorityBaseline", "majority_baseline", "majority_label"]


@dataclass(frozen=True)
class MajorityBaseline:
    label: str
    """The training split's most common gold verbaliser (ties: the one listed first in the task)."""
    train_share: float
    """Its share of the training examples, in percent."""
    metrics: dict[str, float]
    """The task's metrics of answering ``label`` for every example of the evaluation split."""
    primary: str
    score: float
    """``metrics[primary]``."""
    n: int
    """Examples scored."""
    split: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def majority_label(
    task: str, data_dir: str | os.PathLike | None = None, train_limit: int | None = None
) -> tuple[str, float] | None:
    """``(label, share in percent)`` of the most common gold verbaliser among the first
    ``train_limit`` training examples (the ones an adapter job trains on); None for a task
    without verbalisers."""
    from ldp.data.loading import load_examples
    from ldp.data.tasks import get_task

    spec = get_task(task)
    if spec.label is None:
        return None
    counts = Counter(ex.references[0] for ex in load_examples(spec, "train", data_dir, train_limit))
    if not counts:
        return None
    order = {v: i for i, v in enumerate(spec.label.verbalizers)}
    label = min(counts, key=lambda v: (-counts[v], order.get(v, len(order))))
    return label, 100.0 * counts[label] / sum(counts.values())


def majority_baseline(
    task: str,
    split: str = "validation",
    data_dir: str | os.PathLike | None = None,
    *,
    train_limit: int | None = None,
    eval_limit: int | None = None,
) -> MajorityBaseline | None:
    """The task's metrics on ``split`` (its first ``eval_limit`` examples, as ``ldp eval``
    scores them) of always answering the training split's majority label; None for a task
    without verbalisers."""
    from ldp.data.loading import load_examples
    from ldp.data.metrics import compute_metrics
    from ldp.data.tasks import get_task

    found = majority_label(task, data_dir, train_limit)
    if found is None:
        return None
    label, share = found
    spec = get_task(task)
    examples = load_examples(spec, split, data_dir, eval_limit, unique_groups=spec.group_by is not None)
    if not examples:
        return None
    metrics = compute_metrics(spec, [label] * len(examples), [ex.references for ex in examples])
    return MajorityBaseline(
        label=label, train_share=round(share, 2), metrics=metrics, primary=spec.primary_metric,
        score=metrics[spec.primary_metric], n=len(examples), split=split,
    )

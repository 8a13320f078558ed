"""The label-marginal reference that ``ldp compare`` scores beside every method."""

from __future__ import annotations

from collections import Counter

from ldp.data.loading import load_examples
from ldp.evaluation.majority import majority_baseline, majority_label


def test_majority_is_the_training_splits_label_scored_on_the_evaluation_split(data_dir):
    train = Counter(ex.references[0] for ex in load_examples("trec", "train", data_dir))
    label, share = majority_label("trec", data_dir)
    assert label == train.most_common(1)[0][0]
    assert share == 100.0 * train[label] / sum(train.values())
    found = majority_baseline("trec", "validation", data_dir, eval_limit=200)
    gold = [ex.references[0] for ex in load_examples("trec", "validation", data_dir, 200)]
    assert found.n == 200 and found.label == label and found.primary == "accuracy"
    assert found.score == 100.0 * gold.count(label) / 200
    # trec's two splits lead with different labels, so the reference is not the validation
    # split's majority rate: a collapsed model scores below that rate.
    assert found.score < 100.0 * Counter(gold).most_common(1)[0][1] / 200


def test_train_limit_picks_the_label_from_the_examples_a_job_trains_on(data_dir):
    first = [ex.references[0] for ex in load_examples("sst2", "train", data_dir, 7)]
    label, share = majority_label("sst2", data_dir, train_limit=7)
    assert first.count(label) == max(first.count(v) for v in set(first))
    assert share == 100.0 * first.count(label) / 7


def test_generation_tasks_have_no_label_marginal(data_dir):
    assert majority_label("squad", data_dir) is None
    assert majority_baseline("squad", "validation", data_dir) is None

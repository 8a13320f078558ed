"""Metrics agree with sacrebleu / rouge-score computed here directly, and with hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from ldp.data.metrics import (
    cider_d,
    compute_metrics,
    final_number,
    normalize_answer,
    squad_f1,
    squad_scores,
)
from ldp.data.tasks import all_tasks
from ldp.errors import UsageError


def _pairs(data_dir, task, src, tgt, n=25):
    rows = []
    with open(data_dir / task / "validation.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            rows.append((row[src] if "." not in src else row["translation"][src.split(".")[1]],
                         row[tgt] if "." not in tgt else row["translation"][tgt.split(".")[1]]))
            if len(rows) == n:
                break
    return rows


def _degrade(text, i):
    """A deterministic imperfect 'prediction': drop a word, swap two words on odd rows."""
    words = text.split()
    words = words[:-1] if len(words) > 2 else words
    if i % 2 and len(words) > 3:
        words[1], words[2] = words[2], words[1]
    return " ".join(words)


def test_squad_normalisation_is_the_official_one():
    assert normalize_answer("The  Quick, brown fox's (AN) Banana") == "quick brown foxs banana"
    assert normalize_answer("a") == ""
    assert normalize_answer("Théâtre-du-Châtelet.") == "théâtreduchâtelet"


def test_squad_em_f1_hand_computed():
    predictions = ["The Eiffel Tower!", "in Paris, France", "an apple a day", ""]
    references = [["eiffel tower", "Tower"], ["Paris", "France"], ["apple day keeps"], ["x"]]
    # F1: 1; max(0.5, 0.5); P=2/2, R=2/3 -> 0.8; 0
    scores = squad_scores(predictions, references)
    assert scores["exact_match"] == pytest.approx(25.0, abs=1e-6)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.5 + 0.8 + 0) / 4, abs=1e-6)
    assert squad_f1("a the an", "the") == 0.0  # v1.1: both empty after normalisation -> 0
    via_task = compute_metrics("squad", predictions, references)
    assert list(via_task) == ["f1", "exact_match"]  # primary first
    assert via_task == pytest.approx({"f1": 57.5, "exact_match": 25.0}, abs=1e-6)


def test_gsm8k_final_number_exact_match():
    assert final_number("so 2*3=6 and then #### 1,234.") == 1234
    assert final_number("#### 7 because 3 + 4") == 7
    assert final_number("The answer is $-5.50") == pytest.approx(-5.5)
    assert final_number("no digits") is None
    predictions = ["so the answer is 1,234.", "#### 18.00", "The answer is 5 apples, 6", "no number"]
    references = ["a lot of steps\n#### 1234", "2*9=<<2*9=18>>18\n#### 18", "#### 5", "#### 3"]
    assert compute_metrics("gsm8k", predictions, references) == {"exact_match": 50.0}


def test_classification_accuracy_and_macro_f1_hand_computed():
    predictions = ["positive", "Negative.", "the answer is positive", "meh"]
    references = [["positive"], ["positive"], ["negative"], ["negative"]]
    # predicted 1, 0, 1, -1 vs gold 1, 1, 0, 0: class 0 F1 = 0; class 1 P = R = 1/2 -> F1 = 1/2
    out = compute_metrics("sst2", predictions, references)
    assert out == pytest.approx({"accuracy": 25.0, "macro_f1": 25.0}, abs=1e-6)
    assert compute_metrics("strategyqa", ["yes", "No"], ["yes", "yes"]) == {"accuracy": 50.0}
    with pytest.raises(UsageError, match="not a verbaliser"):
        compute_metrics("sst2", ["positive"], [["neutral"]])


def test_bleu_and_chrf_pp_match_sacrebleu(data_dir):
    pairs = _pairs(data_dir, "wmt14_en_de", "translation.en", "translation.de")
    refs = [de for _, de in pairs]
    preds = [_degrade(de, i) for i, de in enumerate(refs)]
    out = compute_metrics("wmt14_en_de", preds, [[r] for r in refs])
    assert list(out) == ["bleu", "chrf++"]
    expected_bleu = sacrebleu.corpus_bleu(preds, [refs]).score
    expected_chrf = sacrebleu.corpus_chrf(preds, [refs], word_order=2).score
    assert 10 < expected_bleu < 99
    assert out["bleu"] == pytest.approx(expected_bleu, abs=1e-6)
    assert out["chrf++"] == pytest.approx(expected_chrf, abs=1e-6)
    # chrF++ is not plain chrF: word bigrams change the score
    assert out["chrf++"] != pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score, abs=1e-3)


def test_bleu_with_a_variable_number_of_references(data_dir):
    groups: dict[int, list[str]] = {}
    with open(data_dir / "commongen" / "validation.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            groups.setdefault(row["concept_set_idx"], []).append(row["target"])
    refs = list(groups.values())[:20]
    assert len({len(r) for r in refs}) > 1
    preds = [_degrade(r[0], i) for i, r in enumerate(refs)]
    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
    expected = sacrebleu.corpus_bleu(preds, streams).score
    out = compute_metrics("commongen", preds, refs)
    assert out["bleu"] == pytest.approx(expected, abs=1e-6)
    assert out["cider"] > 0


def test_rouge_l_matches_rouge_score_with_stemming(data_dir):
    rows = []
    with open(data_dir / "xsum" / "validation.jsonl", encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line)["summary"])
            if len(rows) == 15:
                break
    preds = [_degrade(s, i) for i, s in enumerate(rows)]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = 100 * sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, rows)) / len(rows)
    out = compute_metrics("xsum", preds, [[r] for r in rows])
    assert out == pytest.approx({"rougeL": expected}, abs=1e-6)
    # stemming: 'cats running' matches 'cat runs' exactly
    assert compute_metrics("cnndm", ["cats running"], [["cat runs"]])["rougeL"] == pytest.approx(100.0)
    # best reference counts (wikibio also reports BLEU)
    wb = compute_metrics("wikibio", ["john smith is a painter"], [["unrelated words", "john smith is a painter"]])
    assert wb["rougeL"] == pytest.approx(100.0) and list(wb) == ["bleu", "rougeL"]


def test_cider_d_hand_computed():
    refs = [["a man rides a red horse"], ["two dogs play in the snow"]]
    # predictions equal to their only reference, no n-gram shared across items: every n-gram has
    # idf log(2), cosine 1 for n = 1..4, no length penalty -> 10 * mean(1, 1, 1, 1) = 10
    assert cider_d([r[0] for r in refs], refs) == pytest.approx(10.0, abs=1e-9)
    # the second prediction shares nothing with its reference -> (10 + 0) / 2
    assert cider_d([refs[0][0], "a cat sleeps"], refs) == pytest.approx(5.0, abs=1e-9)
    # an n-gram that occurs in every item's references carries no weight (idf 0)
    refs2 = [["sun shines today"], ["sun sets tomorrow"]]
    assert cider_d(["sun", "sun"], refs2) == 0.0
    # one extra word: the Gaussian length penalty exp(-1/72) and a lower cosine
    longer = cider_d(["a man rides a red horse fast", refs[1][0]], refs)
    assert 5.0 < longer < 10.0 * (1 + math.exp(-1 / 72)) / 2


def test_every_task_metric_set_is_computable():
    for spec in all_tasks():
        if spec.label is not None:
            refs = [[spec.label.verbalizers[0]], [spec.label.verbalizers[1]]]
            preds = [spec.label.verbalizers[0], spec.label.verbalizers[0]]
        elif spec.family == "math":
            refs, preds = [["#### 3"], ["#### 4"]], ["3", "5"]
        else:
            refs, preds = [["the cat sat on the mat"], ["dogs bark"]], ["the cat sat on the mat", "cats"]
        out = compute_metrics(spec, preds, refs)
        assert list(out) == list(spec.metrics_ordered)
        assert all(0.0 <= v <= 100.0 for v in out.values())


def test_mismatched_lengths_and_empty_input_are_usage_errors():
    with pytest.raises(UsageError, match="2 predictions but 1 references"):
        compute_metrics("xsum", ["a", "b"], [["a"]])
    with pytest.raises(UsageError, match="no predictions"):
        compute_metrics("xsum", [], [])

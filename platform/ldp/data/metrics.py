"""Task metrics (paper Table 6), from the reference libraries where one exists.

Every score is on a 0-100 scale (sacrebleu's convention), except CIDEr-D, which is reported on
coco-caption's own scale (a mean of cosine similarities x 10, typically 0-10).

- ``accuracy``, ``macro_f1``: predictions are mapped to label ids by the task's verbalisers
  (:meth:`~ldp.data.tasks.TaskSpec.parse_label`); an unmatched prediction is wrong. Macro-F1 is
  scikit-learn's over the task's labels (an invalid prediction is a miss for its gold class).
- ``exact_match``, ``f1`` (qa): the official SQuAD v1.1 evaluation — answers normalised by
  lowercasing, removing punctuation, the articles a/an/the and extra whitespace; token-level F1;
  the maximum over the references of each question.
- ``exact_match`` (math, GSM8K): the final number of the prediction (the number after its last
  ``####`` if any, else its last number) equals the number after ``####`` in the reference,
  commas and ``$`` removed, compared as decimals (``18`` == ``18.00``).
- ``rougeL``: ``rouge_score``'s ROUGE-L F-measure with the Porter stemmer (``use_stemmer=True``,
  as in the summarisation literature), maximum over references, averaged over examples.
- ``bleu``, ``chrf++``: sacrebleu's corpus BLEU (default 13a tokenisation) and chrF++
  (``CHRF(word_order=2)``); references may differ in number per example.
- ``cider``: CIDEr-D (Vedantam et al. 2015 as in coco-caption): n-grams 1-4, TF-IDF vectors with
  document frequencies over the evaluated set's references, candidate counts clipped by the
  reference's, Gaussian length penalty (sigma 6), x10, averaged over references and examples.
  Tokenisation: lowercase words and numbers (no PTB tokenizer). Not comparable across corpora
  of different sizes (IDF depends on the set), as for the original.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from ldp.data.tasks import METRICS, TaskSpec, get_task
from ldp.errors import UsageError

__all__ = [
    "METRICS",
    "accuracy",
    "bleu",
    "chrf_pp",
    "cider_d",
    "compute_metrics",
    "final_number",
    "gsm8k_exact_match",
    "macro_f1",
    "normalize_answer",
    "rouge_l",
    "squad_exact_match",
    "squad_f1",
    "squad_scores",
]


# -- classification ------------------------------------------------------------------------------


def accuracy(predicted: Sequence[int], gold: Sequence[int]) -> float:
    """Percentage of ``predicted`` label ids equal to ``gold`` (-1 never matches)."""
    _same_length(predicted, gold)
    if not gold:
        return 0.0
    return 100.0 * sum(int(p == g and g >= 0) for p, g in zip(predicted, gold)) / len(gold)


def macro_f1(predicted: Sequence[int], gold: Sequence[int], num_labels: int) -> float:
    """Macro-averaged F1 (scikit-learn) over labels ``0..num_labels-1``, in percent."""
    from sklearn.metrics import f1_score

    _same_length(predicted, gold)
    if not gold:
        return 0.0
    score = f1_score(
        list(gold), list(predicted), labels=list(range(num_labels)), average="macro", zero_division=0
    )
    return 100.0 * float(score)


# -- SQuAD (official v1.1 evaluation) ------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation, drop a/an/the, squeeze spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def squad_f1(prediction: str, reference: str) -> float:
    """Token-level F1 of the normalised strings (0.0 when nothing is shared)."""
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    shared = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(pred_tokens)
    recall = shared / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """``{"exact_match", "f1"}`` in percent: per question the best over its references, then the mean.

    A question without references scores 0 (the official script skips nothing either).
    """
    _same_length(predictions, references)
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for pred, refs in zip(predictions, references):
        em += max((squad_exact_match(pred, r) for r in refs), default=0.0)
        f1 += max((squad_f1(pred, r) for r in refs), default=0.0)
    n = len(predictions)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


# -- GSM8K ---------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


def final_number(text: str) -> Decimal | None:
    """The final answer of a solution: the first number after the last ``####`` if there is
    one, else the last number in the text; commas and ``$`` dropped. None when there is none."""
    _, sep, tail = text.rpartition("####")
    if sep:
        found = _NUMBER.findall(tail)
        if found:
            return _to_decimal(found[0])
    found = _NUMBER.findall(text)
    return _to_decimal(found[-1]) if found else None


def _to_decimal(token: str) -> Decimal | None:
    try:
        return Decimal(token.replace(",", "").replace("$", "")).normalize()
    except InvalidOperation:
        return None


def gsm8k_exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Percentage of predictions whose final number equals the reference's ``#### N``."""
    _same_length(predictions, references)
    if not predictions:
        return 0.0
    hits = 0
    for pred, refs in zip(predictions, references):
        got = final_number(pred)
        gold = {final_number(r) for r in refs} - {None}
        hits += int(got is not None and got in gold)
    return 100.0 * hits / len(predictions)


# -- generation metrics --------------------------------------------------------------------------


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F-measure (stemmed), best reference per example, in percent."""
    from rouge_score import rouge_scorer

    _same_length(predictions, references)
    if not predictions:
        return 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    total = 0.0
    for pred, refs in zip(predictions, references):
        total += max((scorer.score(r, pred)["rougeL"].fmeasure for r in refs), default=0.0)
    return 100.0 * total / len(predictions)


def _ref_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-example reference lists -> sacrebleu's reference streams (None where fewer refs)."""
    width = max((len(r) for r in references), default=0)
    if width == 0:
        raise UsageError("every example has no references")
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus BLEU."""
    import sacrebleu

    _same_length(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), _ref_streams(references)).score)


def chrf_pp(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus chrF++ (character n-grams 6, word n-grams 2)."""
    from sacrebleu.metrics import CHRF

    _same_length(predictions, references)
    return float(CHRF(word_order=2).corpus_score(list(predictions), _ref_streams(references)).score)


_CIDER_N = 4
_CIDER_SIGMA = 6.0
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _ngram_counts(text: str) -> tuple[Counter, int]:
    words = _WORD.findall(text.lower())
    counts: Counter = Counter()
    for n in range(1, _CIDER_N + 1):
        for i in range(len(words) - n + 1):
            counts[tuple(words[i : i + n])] += 1
    return counts, len(words)


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """CIDEr-D over the set (see the module docstring)."""
    _same_length(predictions, references)
    if not predictions:
        return 0.0
    refs_counts = [[_ngram_counts(r) for r in refs] for refs in references]
    doc_freq: Counter = Counter()
    for refs in refs_counts:
        doc_freq.update({g for counts, _ in refs for g in counts})
    log_items = math.log(float(len(predictions)))

    def vector(counts: Counter) -> tuple[list[dict], list[float]]:
        vec: list[dict] = [{} for _ in range(_CIDER_N)]
        norm = [0.0] * _CIDER_N
        for gram, tf in counts.items():
            weight = tf * (log_items - math.log(max(1.0, doc_freq[gram])))
            vec[len(gram) - 1][gram] = weight
            norm[len(gram) - 1] += weight * weight
        return vec, [math.sqrt(v) for v in norm]

    total = 0.0
    for pred, refs in zip(predictions, refs_counts):
        if not refs:
            continue
        p_counts, p_len = _ngram_counts(pred)
        p_vec, p_norm = vector(p_counts)
        score = 0.0
        for r_counts, r_len in refs:
            r_vec, r_norm = vector(r_counts)
            penalty = math.exp(-((p_len - r_len) ** 2) / (2 * _CIDER_SIGMA**2))
            for n in range(_CIDER_N):
                dot = sum(min(w, r_vec[n].get(g, 0.0)) * r_vec[n].get(g, 0.0) for g, w in p_vec[n].items())
                if p_norm[n] and r_norm[n]:
                    score += dot / (p_norm[n] * r_norm[n]) * penalty / _CIDER_N
        total += 10.0 * score / len(refs)
    return total / len(predictions)


# -- per task ------------------------------------------------------------------------------------


def compute_metrics(
    task_spec: str | TaskSpec,
    predictions: Sequence[str],
    references: Sequence[Sequence[str] | str],
) -> dict[str, float]:
    """Every metric of the task, primary first: ``{name: score}``.

    ``references[i]`` is example i's list of references (``Example.references``; a bare string
    is one reference). For classification-style tasks the (first) reference is the gold
    verbaliser, and predictions are mapped to labels by the verbalisers.
    """
    spec = get_task(task_spec)
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    preds = list(predictions)
    if len(preds) != len(refs):
        raise UsageError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise UsageError(f"no predictions to score for task {spec.name}")
    out: dict[str, float] = {}
    wanted = spec.metrics_ordered
    if spec.label is not None and ("accuracy" in wanted or "macro_f1" in wanted):
        gold = []
        for i, r in enumerate(refs):
            label = spec.parse_label(r[0]) if r else -1
            if label < 0:
                raise UsageError(f"reference {i} ({r[:1]!r}) is not a verbaliser of task {spec.name}")
            gold.append(label)
        predicted = [spec.parse_label(p) for p in preds]
    squad = squad_scores(preds, refs) if spec.family == "qa" and {"exact_match", "f1"} & set(wanted) else None
    for name in wanted:
        if name == "accuracy":
            out[name] = accuracy(predicted, gold)
        elif name == "macro_f1":
            out[name] = macro_f1(predicted, gold, spec.num_labels or 0)
        elif name == "exact_match":
            out[name] = gsm8k_exact_match(preds, refs) if spec.family == "math" else squad["exact_match"]
        elif name == "f1":
            out[name] = squad["f1"]
        elif name == "rougeL":
            out[name] = rouge_l(preds, refs)
        elif name == "bleu":
            out[name] = bleu(preds, refs)
        elif name == "chrf++":
            out[name] = chrf_pp(preds, refs)
        elif name == "cider":
            out[name] = cider_d(preds, refs)
        else:  # pragma: no cover - TaskSpec validation rejects unknown names
            raise UsageError(f"unknown metric {name!r}")
    return out


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise UsageError(f"{len(a)} predictions but {len(b)} references")

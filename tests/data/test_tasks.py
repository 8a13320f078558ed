"""Task specs: the shipped YAML validates, bad specs are refused, rows format as documented."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ldp.data.tasks import (
    FAMILIES,
    METRICS,
    Example,
    TaskSpec,
    all_tasks,
    get_task,
    load_task_specs,
    resolve_path,
    task_names,
)
from ldp.errors import UsageError

SUITE = [
    "sst2", "agnews", "trec", "squad", "triviaqa", "nq", "gsm8k", "strategyqa", "cnndm", "xsum",
    "wmt14_en_de", "wmt14_en_fr", "flores", "commongen", "wikibio",
]
LOCAL_TASKS = [name for name in SUITE if name != "triviaqa"]


def first_row(data_dir, task, split="validation", n=0):
    with open(data_dir / task / f"{split}.jsonl", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i == n:
                return json.loads(line)
    raise AssertionError("row not found")


def test_suite_is_the_fifteen_tasks_in_order():
    assert list(task_names()) == SUITE
    assert [t.name for t in all_tasks()] == SUITE


@pytest.mark.parametrize("name", SUITE)
def test_every_spec_is_valid_and_complete(name):
    spec = get_task(name)
    assert isinstance(spec, TaskSpec)
    assert spec.family in FAMILIES
    assert set(spec.splits) == {"train", "validation", "test"}
    assert spec.metrics_ordered[0] == spec.primary_metric
    assert set(spec.metrics) <= set(METRICS)
    assert spec.instruction.startswith("In this task, you are given")
    assert "{instruction}" in spec.prompt
    assert spec.max_new_tokens > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"
    with pytest.raises(TypeError):
        spec.splits["train"] = "x"  # read-only mapping
    json.dumps(spec.as_dict())  # JSON-safe


def test_table6_metrics_and_verbalisers():
    metrics = {t.name: set(t.metrics) for t in all_tasks()}
    for name in ("sst2", "agnews", "trec"):
        assert metrics[name] == {"accuracy", "macro_f1"}
    for name in ("squad", "triviaqa", "nq"):
        assert metrics[name] == {"exact_match", "f1"}
    assert metrics["gsm8k"] == {"exact_match"} and metrics["strategyqa"] == {"accuracy"}
    assert metrics["cnndm"] == metrics["xsum"] == {"rougeL"}
    for name in ("wmt14_en_de", "wmt14_en_fr", "flores"):
        assert metrics[name] == {"bleu", "chrf++"}
    assert "bleu" in metrics["commongen"] and metrics["wikibio"] == {"bleu", "rougeL"}
    assert get_task("sst2").label.verbalizers == ("negative", "positive")
    assert get_task("agnews").label.verbalizers == ("World", "Sports", "Business", "Sci/Tech")
    assert len(get_task("trec").label.verbalizers) == 6
    assert get_task("strategyqa").label.verbalizers == ("no", "yes")
    assert get_task("wikibio").hub_split("validation") == "val"
    assert get_task("flores").fields["translation"].path == "sentence_deu_Latn"


def test_unknown_task_and_split_are_usage_errors():
    with pytest.raises(UsageError, match="unknown task 'sst3'; known tasks: sst2"):
        get_task("sst3")
    with pytest.raises(UsageError, match="unknown split 'dev'"):
        get_task("sst2").hub_split("dev")


GOOD = {
    "family": "classification",
    "dataset": "x/y",
    "config": None,
    "splits": {"train": "train", "validation": "validation", "test": "test"},
    "fields": {"sentence": "sentence"},
    "label": {"field": "label", "verbalizers": ["bad", "good"]},
    "instruction": "In this task, you are given a sentence.",
    "prompt": "Definition: {instruction}\n\nSentence: {sentence}\nAnswer:",
    "target": "{label}",
    "max_new_tokens": 4,
    "metrics": ["accuracy"],
    "primary_metric": "accuracy",
}


def _write(tmp_path, **changes):
    import yaml

    entry = {**GOOD, **changes}
    entry = {k: v for k, v in entry.items() if v is not ...}
    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump({"toy": entry}))
    return path


def test_a_good_custom_spec_loads(tmp_path):
    spec = load_task_specs(_write(tmp_path))["toy"]
    ex = spec.to_example({"sentence": " fine ", "label": 1}, 3)
    assert ex == Example(
        prompt="Definition: In this task, you are given a sentence.\n\nSentence: fine\nAnswer:",
        target="good",
        references=["good"],
        label=1,
        id="toy-3",
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"metrics": ["accuracy", "meteor"]}, "unknown metric 'meteor'"),
        ({"primary_metric": "macro_f1"}, "primary_metric 'macro_f1' is not in metrics"),
        ({"prompt": "{instruction} {sentense}"}, r"unknown variable \{sentense\}"),
        ({"prompt": "Sentence: {sentence}"}, r"prompt must contain \{instruction\}"),
        ({"splits": {"train": "train", "validation": "validation"}}, "splits must map exactly"),
        ({"splits": {"train": "train", "validation": "val id", "test": "test"}}, "not a hub split"),
        ({"label": ...}, "classification task needs a label"),
        ({"label": {"field": "label", "verbalizers": ["Good", "good"]}}, "not distinct"),
        ({"family": "poetry"}, "expected one of"),
        ({"family": "summarization", "label": ..., "target": "{sentence}", "metrics": ["f1"],
          "primary_metric": "f1"}, "metric f1 is for qa/math tasks"),
        ({"max_new_tokens": 0}, "must be > 0"),
        ({"fields": {"sentence": {"path": "sentence", "remove": "(["}}}, "bad regular expression"),
        ({"colour": "red"}, "unknown config key"),
    ],
)
def test_bad_specs_are_refused_with_one_line(tmp_path, changes, message):
    with pytest.raises(UsageError, match=message) as info:
        load_task_specs(_write(tmp_path, **changes))
    assert "\n" not in str(info.value)
    assert "toy" in str(info.value)


def test_resolve_path_handles_nesting_indexing_and_lists_of_records():
    row = {"a": {"b": [{"c": 1}, {"c": 2}]}, "t": {"x": ["p", "q"]}}
    assert resolve_path(row, "t.x.1") == "q"
    assert resolve_path(row, "a.b.c") == [1, 2]
    with pytest.raises(UsageError, match=r"row has no field 't.y' \(has: x\)"):
        resolve_path(row, "t.y")


@pytest.mark.parametrize("name", LOCAL_TASKS)
def test_every_local_row_formats(data_dir, name):
    spec = get_task(name)
    with open(data_dir / name / "validation.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    assert rows
    for i, row in enumerate(rows):
        ex = spec.to_example(row, i)
        assert ex.prompt.startswith("Definition: In this task") and ex.target
        assert ex.references and all(r.strip() for r in ex.references)
        assert "{" not in spec.prompt.format_map({k: "" for k in [*spec.fields, "instruction"]})
        if spec.label is not None:
            assert ex.target == spec.label.verbalizers[ex.label] == ex.references[0]
        else:
            assert ex.label is None


def test_formatting_details_per_task(data_dir):
    sst2 = get_task("sst2").to_example(first_row(data_dir, "sst2"))
    assert sst2.prompt.endswith(
        "Sentence: although laced with humor and a few fanciful touches , the film is a "
        "refreshingly serious look at young women .\nSentiment:"
    )
    assert (sst2.target, sst2.label, sst2.id) == ("positive", 1, "5")

    squad_row = first_row(data_dir, "squad")
    squad = get_task("squad").to_example(squad_row)
    assert squad.target == squad_row["answers"]["text"][0]
    assert squad.references == squad_row["answers"]["text"]
    assert squad.prompt.index("Question:") < squad.prompt.index("Context:")

    nq = get_task("nq").to_example({"question": "q", "answer": ["eight", "8"]})
    assert (nq.target, nq.references) == ("eight", ["eight", "8"])

    trivia = get_task("triviaqa").to_example(
        {"question": "q", "question_id": "tq1", "answer": {"value": "Paris", "aliases": ["Paris", "Paree"],
                                                             "normalized_aliases": ["paris"]}}
    )
    assert (trivia.target, trivia.references, trivia.id) == ("Paris", ["Paris", "Paree"], "tq1")

    gsm = get_task("gsm8k").to_example(first_row(data_dir, "gsm8k"))
    assert "<<" not in gsm.target and gsm.target.endswith("#### 16")
    assert "<<2*3=6>>" in gsm.references[0]  # references keep the raw solution

    sqa = get_task("strategyqa").to_example(first_row(data_dir, "strategyqa"))
    assert (sqa.target, sqa.label) == ("no", 0)  # answer: false

    trec = get_task("trec").to_example({"text": "When did CNN begin broadcasting ?", "coarse_label": 5})
    assert trec.target == "number"

    de = get_task("wmt14_en_de").to_example(first_row(data_dir, "wmt14_en_de"))
    assert de.prompt.endswith("English: Indeed, Republican lawyers identified only 300 cases of "
                              "electoral fraud in the United States in a decade.\nGerman:")
    assert de.target.startswith("Die Rechtsanwälte")

    flores_row = first_row(data_dir, "flores")
    flores = get_task("flores").to_example(flores_row)
    assert flores.target == flores_row["sentence_deu_Latn"] and flores.id == str(flores_row["id"])

    cg = get_task("commongen").to_example(first_row(data_dir, "commongen"))
    assert "Concepts: phone, talk, wear\nSentence:" in cg.prompt

    wb = get_task("wikibio").to_example(first_row(data_dir, "wikibio"))
    assert "Infobox: type: pope | name: michael iii of alexandria | title: 56th" in wb.prompt
    assert "birth place: egypt" in wb.prompt
    assert not wb.target.endswith("\n")


def test_unlabelled_rows_have_no_target():
    ex = get_task("sst2").to_example({"idx": 0, "sentence": "x", "label": -1})
    assert (ex.target, ex.references, ex.label) == ("", [], None)
    with pytest.raises(UsageError, match="label 7"):
        get_task("sst2").to_example({"idx": 0, "sentence": "x", "label": 7})


@pytest.mark.parametrize(
    "task, text, label",
    [
        ("sst2", "positive", 1),
        ("sst2", " Negative. ", 0),
        ("sst2", "Answer: positive, not negative", 1),
        ("sst2", "neutral", -1),
        ("sst2", "positively", -1),
        ("agnews", "sci/tech", 3),
        ("agnews", "It is about Sports and Business", 1),
        ("strategyqa", "no", 0),
        ("strategyqa", "I do not know", -1),  # 'no' is not a word of 'not' / 'know'
        ("trec", "human", 3),
    ],
)
def test_parse_label_uses_the_first_matching_verbaliser(task, text, label):
    assert get_task(task).parse_label(text) == label

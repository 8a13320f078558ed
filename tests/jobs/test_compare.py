"""``ldp compare``: every method on every task under one budget (Table 7 analogue)."""

from __future__ import annotations

import json

import pytest

from ldp.cli.main import main
from ldp.jobs.compare import CompareSpec, cell_steps, format_markdown, summarise
from ldp.jobs.spec import steps_for


def test_summary_averages_and_percent_of_full():
    rows = [
        {"task": "a", "method": "full", "score": 80.0},
        {"task": "b", "method": "full", "score": 60.0},
        {"task": "a", "method": "lora-diffusion", "score": 76.0},
        {"task": "b", "method": "lora-diffusion", "score": 63.0},
        {"task": "a", "method": "bitfit", "score": 50.0},
        {"task": "b", "method": "bitfit", "error": "boom"},
    ]
    out = summarise(rows, ["a", "b"], ["full", "lora-diffusion", "bitfit"])
    assert out["full"]["average"] == 70.0 and out["full"]["pct_of_full"] == 100.0
    assert out["lora-diffusion"]["average"] == 69.5
    assert out["lora-diffusion"]["pct_of_full"] == round(100 * 69.5 / 70.0, 1)
    assert out["lora-diffusion"]["pct_of_full_by_task"] == {"a": 95.0, "b": 105.0}
    assert out["bitfit"]["average"] is None  # a failed cell leaves no average
    table = format_markdown({"tasks": ["a", "b"], "methods": ["full", "lora-diffusion", "bitfit"],
                             "split": "validation", "base": "bases/x@1",
                             "rows": rows, "summary": out})
    assert "| bitfit | 50.0 | FAILED |" in table and "- FAILED b/bitfit: boom" in table
    assert "label marginal" not in table  # no reference given, no row


def test_label_marginal_row_and_points_above_it():
    rows = [
        {"task": "a", "method": "full", "score": 80.0},
        {"task": "b", "method": "full", "score": 60.0},
        {"task": "a", "method": "bitfit", "score": 50.0},
        {"task": "b", "method": "bitfit", "score": 17.0},
    ]
    majority = {
        "a": {"label": "positive", "train_share": 54.75, "score": 50.0},
        "b": {"label": "human", "train_share": 23.25, "score": 19.0},
    }
    out = summarise(rows, ["a", "b"], ["full", "bitfit"], majority)
    assert out["full"]["above_majority_by_task"] == {"a": 30.0, "b": 41.0}
    assert out["bitfit"]["above_majority_by_task"] == {"a": 0.0, "b": -2.0}
    table = format_markdown({"tasks": ["a", "b"], "methods": ["full", "bitfit"],
                             "split": "validation", "base": "bases/x@1", "rows": rows,
                             "summary": out, "majority": majority})
    # average 34.5 = 49.3% of full's 70.0; no trainable parameters, no training
    assert "| label marginal † | 50.0 | 19.0 | 34.5 | 49.3 | 0 | — | — |" in table
    assert "a: positive (54.8% of train), b: human (23.2% of train)" in table


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--methods", "lora"], "unknown method"),
        (["--tasks", "sst2,nope"], "unknown task"),
        (["--steps", "0"], "steps"),
        (["--split", "dev"], "split"),
        (["--set", "loop.batch_size=0"], "batch_size"),
        (["--json", "/no/such/folder/x.json"], "--json"),
        (["--max-parallel", "0"], "max_parallel"),
        (["--task-steps", "trec=ten"], "--task-steps expects task=steps"),
        (["--tasks", "sst2,trec", "--task-steps", "squad=10"], "squad is not one of the tasks"),
        (["--task-steps", "trec=0"], "task_steps.trec must be a whole number >= 1"),
        (["--methods", "full", "--method-steps", "weight-lora=900"], "weight-lora is not one of the methods (full)"),
        (["--method-steps", "lora=900"], "unknown method 'lora'"),
        (["--method-steps", "full=0"], "method_steps.full must be a whole number >= 1, got 0"),
        (["--method-steps", "full"], "--method-steps expects method=steps[,method=steps...], got 'full'"),
        (["--method-steps", "full=ten"], "--method-steps expects method=steps"),
        (["--method-steps", "full=-3"], "--method-steps expects method=steps"),
        (["--method-steps", "full=1,full=2"], "--method-steps gives full twice"),
        (["--method-steps", "weight_lora=1,weight-lora=2"],
         "method_steps.weight-lora: weight-lora is given twice"),
    ],
)
def test_bad_input_exits_2_before_any_ray_work(args, needle, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    code = main(["compare", *args])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_compare_trains_each_cell_reports_failures_and_reuses(small_base, data_dir, tmp_path, capsys, in_jobs_env,
                                                            monkeypatch):
    registry = (tmp_path / "registry").as_uri()
    args = [
        "--tasks", "sst2,triviaqa", "--methods", "lora-diffusion,bitfit", "--steps", "6",
        "--base", str(small_base.folder), "--data-dir", str(data_dir), "--registry", registry,
        "--eval-limit", "12", "--set", "loop.batch_size=8", "--set", "train_limit=64",
        "--set", "val_limit=8", "--json", str(tmp_path / "t.json"), "--markdown", str(tmp_path / "t.md"),
    ]
    assert main(["compare", *args]) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "t.json").read_text())
    cells = {(r["task"], r["method"]): r for r in result["rows"]}
    for method in ("lora-diffusion", "bitfit"):
        ok = cells[("sst2", method)]
        assert ok["ref"] == f"adapters/sst2/{method}@1" and ok["n"] == 12 and ok["reused"] is False
        assert 0.0 <= ok["score"] <= 100.0 and ok["trainable"] > 0
    assert ("triviaqa", "bitfit") not in cells and "triviaqa" in result["skipped"]  # no local data
    marginal = result["majority"]["sst2"]  # from the 64 training examples the cells saw
    assert marginal["n"] == 12 and marginal["label"] in ("positive", "negative")
    assert result["summary"]["bitfit"]["above_majority_by_task"]["sst2"] == round(
        cells[("sst2", "bitfit")]["score"] - marginal["score"], 1)
    table = (tmp_path / "t.md").read_text()
    assert "| lora-diffusion |" in table and "- skipped triviaqa:" in table
    assert "| label marginal † |" in table

    capsys.readouterr()
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started for cells that are all published"))
    assert main(["compare", *args]) == 0  # the same specs again: nothing is retrained, no Ray
    again = json.loads((tmp_path / "t.json").read_text())
    reused = {(r["task"], r["method"]): r.get("reused") for r in again["rows"]}
    assert reused == {("sst2", "lora-diffusion"): True, ("sst2", "bitfit"): True}


@pytest.mark.parametrize(
    "task_steps, method_steps, want",
    [
        ({}, {}, 300),  # neither: the shared --steps
        ({"trec": 60}, {}, 60),  # the task's own
        ({}, {"weight-lora": 900}, 900),  # the method's own
        ({"trec": 60}, {"weight-lora": 900}, 900),  # both: the larger
        ({"trec": 1000}, {"weight-lora": 900}, 1000),  # both: the larger, the other way round
        ({"sst2": 5}, {"full": 7}, 300),  # other cells' budgets leave this one alone
    ],
)
def test_cell_steps_resolution(task_steps, method_steps, want):
    assert steps_for("trec", 300, task_steps, "weight-lora", method_steps) == want
    spec = CompareSpec(tasks=["sst2", "trec"], methods=["full", "weight-lora"], steps=300,
                       task_steps=task_steps, method_steps=method_steps)
    assert cell_steps(spec, "trec", "weight-lora") == want


def test_cell_steps_without_shared_steps_and_method_spelling():
    spec = CompareSpec(tasks=["sst2"], methods=["full", "weight-lora"], method_steps={"weight_lora": 900})
    assert spec.method_steps == {"weight-lora": 900}  # spelled as in methods
    assert cell_steps(spec, "sst2", "weight-lora") == 900
    assert cell_steps(spec, "sst2", "full") is None  # the recipe's default
    assert steps_for("sst2", None, None) is None and steps_for("sst2", 40, None, "full", None) == 40


def test_method_steps_every_method_by_default():
    spec = CompareSpec(method_steps={"weight-lora": 900})  # methods: all
    assert spec.method_steps == {"weight-lora": 900}


def _fake_compare(monkeypatch, hashes: dict):
    """``execute`` with every cell already published (so no Ray, no training): the spec hash each
    cell looked up is recorded in ``hashes``."""
    from ldp import store
    from ldp.config import build
    from ldp.jobs import adapter_job, compare, train_all
    from ldp.jobs import spec as spec_mod
    from ldp.jobs.spec import JobSpec

    def found(reg, task, method, want):
        hashes[(task, method)] = want
        return f"adapters/{task}/{method}@1"

    monkeypatch.setattr(spec_mod, "validate_spec", lambda data, **kw: build(JobSpec, data))
    monkeypatch.setattr(compare, "skipped_tasks", lambda spec: {})
    monkeypatch.setattr(compare, "majority_rows", lambda spec, tasks, log=print: {})
    monkeypatch.setattr(compare, "_cell_from_registry",
                        lambda reg, ref: {"ref": ref, "primary": "accuracy", "score": 50.0})
    monkeypatch.setattr(adapter_job, "ensure_base", lambda spec, log=print: "bases/tiny@1")
    monkeypatch.setattr(train_all, "find_published_adapter", found)
    monkeypatch.setattr(store, "Registry", lambda url=None: object())


def test_rows_carry_each_cells_steps_and_the_reuse_key_includes_them(monkeypatch):
    import ray

    from ldp.jobs.compare import execute

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    first, second = {}, {}
    _fake_compare(monkeypatch, first)
    data = {"tasks": ["sst2", "trec"], "methods": ["full", "weight-lora"], "steps": 300,
            "task_steps": {"trec": 600}, "method_steps": {"weight-lora": 900}}
    result = execute(data, "job-1", log=lambda *_: None)
    steps = {(r["task"], r["method"]): r["steps"] for r in result["rows"]}
    assert steps == {("sst2", "full"): 300, ("sst2", "weight-lora"): 900,
                     ("trec", "full"): 600, ("trec", "weight-lora"): 900}
    assert json.loads(json.dumps(result))["rows"][1]["steps"] == 900
    assert result["spec"]["method_steps"] == {"weight-lora": 900}

    _fake_compare(monkeypatch, second)
    execute({**data, "method_steps": {"weight-lora": 500}}, "job-2", log=lambda *_: None)
    # a cell with another budget is another spec (not reused); the cells whose steps stayed are the same
    assert first[("sst2", "weight-lora")] != second[("sst2", "weight-lora")]
    assert first[("trec", "weight-lora")] != second[("trec", "weight-lora")]
    assert first[("sst2", "full")] == second[("sst2", "full")]
    assert first[("trec", "full")] == second[("trec", "full")]

    _fake_compare(monkeypatch, second)  # no budget of its own: the recipe's default steps
    defaults = execute({"tasks": ["sst2"], "methods": ["full"]}, "job-3", log=lambda *_: None)
    assert isinstance(defaults["rows"][0]["steps"], int) and defaults["rows"][0]["steps"] >= 1


def _table(rows):
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    return format_markdown({"tasks": tasks, "methods": methods, "split": "validation", "base": "bases/x@1",
                            "rows": rows, "summary": summarise(rows, tasks, methods)})


def test_table_says_the_steps_of_each_cell():
    same = [{"task": t, "method": m, "score": 60.0, "steps": 300} for t in ("a", "b") for m in ("full", "bitfit")]
    table = _table(same)
    assert "base: bases/x@1; 300 steps per cell; primary metric" in table
    assert "‡" not in table

    mixed = [
        {"task": "a", "method": "full", "score": 80.0, "steps": 300},
        {"task": "b", "method": "full", "score": 60.0, "steps": 600},
        {"task": "a", "method": "weight-lora", "score": 70.0, "steps": 900},
        {"task": "b", "method": "weight-lora", "error": "boom", "steps": 900},
    ]
    table = _table(mixed)
    assert "steps differ between cells (‡); primary metric" in table
    assert "steps per cell;" not in table
    assert "‡ Optimiser steps of each cell" in table and "trains for the larger" in table
    assert "| method | a | b |" in table
    assert "| full | 300 | 600 |" in table and "| weight-lora | 900 | 900 |" in table

    old = [{"task": "a", "method": "full", "score": 80.0}]  # a result from before rows carried steps
    assert "steps" not in _table(old)

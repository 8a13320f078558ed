"""``ldp compare``: every method on every task under one budget (Table 7 analogue)."""

from __future__ import annotations

import json

import pytest

from ldp.cli.main import main
from ldp.jobs.compare import format_markdown, summarise


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

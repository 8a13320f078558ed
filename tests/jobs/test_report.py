"""``ldp report``: the pure parts (sections from a results dict, the claim logic, PCA, the spec)
fast and without Ray; one end-to-end run of ``configs/report-smoke.yaml`` (slow)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from ldp.errors import UsageError
from ldp.jobs import report_claims as claims
from ldp.jobs.report_markdown import render
from ldp.jobs.report_measure import pca_2d, separation
from ldp.jobs.report_sections import build_section
from ldp.jobs.report_spec import SECTIONS, parse_sections

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(task, method, score=None, error=None, **extra):
    row = {"task": task, "method": method, "primary": "accuracy", "n": 20, "split": "validation",
           "trainable": 1000, "trainable_pct": 0.5, "train_seconds": 10.0, "ref": f"adapters/{task}/{method}@1"}
    row.update(extra)
    if error:
        row = {"task": task, "method": method, "error": error}
    else:
        row["score"] = score
    return row


def _results() -> dict:
    from ldp.jobs.compare import summarise

    rows = [_row("sst2", "lora-diffusion", 70.0), _row("sst2", "weight-lora", 60.0),
            _row("trec", "lora-diffusion", 40.0), _row("trec", "weight-lora", error="out of memory\nsecond line")]
    methods = ["lora-diffusion", "weight-lora"]
    return {
        "meta": {"title": "t", "split": "validation", "budget": "4 steps", "base": "b"},
        "sections": {
            "methods": {"status": "ok", "compare": {"tasks": ["sst2", "trec"], "methods": methods, "split": "validation",
                                                    "rows": rows, "summary": summarise(rows, ["sst2", "trec"], methods)}},
            "forgetting": {"status": "ok", "task": "sst2", "corpora": ["wikitext"], "split": "validation",
                           "block_len": 32, "blocks": {"wikitext": 8}, "elbo_samples": 1, "rows": [
                               {"model": "base", "ppl": {"wikitext": 10.0}},
                               {"model": "lora-diffusion", "ppl": {"wikitext": 10.5}, "change": {"wikitext": 5.0}},
                               {"model": "weight-lora", "ppl": {"wikitext": 12.0}, "change": {"wikitext": 20.0}}]},
            "effective_rank": {"status": "ok", "rows": [
                {"task": "sst2", "ranks": {"early": 9.0, "middle": 5.0, "late": 2.0},
                 "configured": {"early": 64, "middle": 32, "late": 8}}], "figures": ["effective_rank.png"]},
            "composition": {"status": "empty", "why": "no `composition` settings in the config (no router, no bundle)"},
        },
    }


def test_sections_parse_numbers_keys_and_refuse_unknown():
    assert parse_sections("1,2,5") == ["methods", "efficiency", "effective_rank"]
    assert parse_sections(["loss_curves", "1"]) == ["methods", "loss_curves"]
    assert parse_sections("all") == list(SECTIONS)
    for bad in ("1,12", "methodz", ""):
        with pytest.raises(UsageError):
            parse_sections(bad)


def test_methods_section_shows_scores_n_failures_and_paper_numbers():
    section = build_section("methods", _results())
    body = section.body
    assert "sst2 (accuracy, n=20)" in body and "**validation**" in body
    # our number, then the paper's (Table 8) beside it
    assert "| LoRA-Diffusion | 70.0 [paper 94.2] | 40.0 [paper 95.8] |" in body
    assert "failed: out of memory [paper 93.7]" in body and "second line" not in body
    assert section.claims[0].holds is None  # weight-lora has a failed cell: no average


def test_claims_are_computed_from_the_numbers():
    assert claims.methods_average({"lora-diffusion": 70.0, "weight-lora": 60.0}).holds is True
    no = claims.methods_average({"lora-diffusion": 50.0, "weight-lora": 60.0})
    assert no.holds is False and "50.0" in no.sentence and "does not hold" in no.sentence
    assert claims.efficiency({"step_vs_weight_lora": 0.8, "bytes_vs_weight_lora": 1.2}).holds is False
    assert claims.forgetting({"lora-diffusion": 1.0, "weight-lora": 2.0}).holds is True
    assert claims.effective_rank_order({"early": 9.0, "middle": 5.0, "late": 2.0}).holds is True
    assert claims.effective_rank_order({"early": 2.0, "middle": 5.0, "late": 1.0}).holds is False
    assert claims.adaptive_rank({"score": 70.0, "trainable": 10}, {"score": 70.5, "trainable": 30}).holds is True
    assert claims.adaptive_rank({"score": 60.0, "trainable": 10}, {"score": 70.5, "trainable": 30}).holds is False
    assert claims.modules_per_phase({1: 50.0}).holds is None
    assert claims.composition({"auto": 0.6, "uniform": 0.5}).holds is True
    assert claims.trajectories(1.0, 2.0).holds is True and claims.trajectories(None, 2.0).holds is None
    # 90% of the best: lora-diffusion needs 30%, weight LoRA 100%
    curves = {"sst2": {"lora-diffusion": {0.1: 50.0, 0.3: 80.0, 1.0: 85.0},
                       "weight-lora": {0.1: 40.0, 0.3: 60.0, 1.0: 85.0}}}
    assert claims.fraction_to_reach(curves["sst2"]["lora-diffusion"]) == 0.3
    assert claims.data_efficiency(curves).holds is True
    falling = {"loss": [5.0] * 10 + [1.0] * 10}
    rising = {"loss": [1.0] * 10 + [5.0] * 10}
    assert claims.loss_decreases([falling]).holds is True
    assert claims.loss_decreases([falling, rising]).holds is False


def test_render_has_every_section_empty_ones_say_why_and_the_closing_note():
    text, found = render(_results())
    for number, title in enumerate(SECTIONS.values(), 1):
        assert f"## {number}. {title}" in text
    assert "_Empty: no `composition` settings in the config (no router, no bundle)_" in text
    assert "_Empty: Not run in this report" in text  # efficiency: not in the results
    assert "![effective_rank.png](effective_rank.png)" in text
    verdicts = {c["key"]: c["holds"] for c in found}
    assert verdicts == {"methods": None, "forgetting": True, "effective_rank": True}
    assert "Held here: 2; did not hold: 0; not measured: 1." in text


def test_pca_and_separation():
    gen = torch.Generator().manual_seed(0)
    line = torch.linspace(-1, 1, 20, dtype=torch.float64)[:, None] * torch.tensor([[3.0, 4.0, 0.0]], dtype=torch.float64)
    xy = pca_2d(line)
    assert xy.shape == (20, 2) and xy[:, 1].abs().max() < 1e-9  # one direction holds everything
    assert torch.allclose(xy[:, 0].abs(), (line - line.mean(0)).norm(dim=1))
    a = torch.randn(10, 4, generator=gen)
    far = torch.cat([a, a + 20.0])
    near = torch.cat([a, a + 0.1])
    labels = ["x"] * 10 + ["y"] * 10
    assert separation(far, labels) > 10 * separation(near, labels)


def test_figures_are_png(tmp_path):
    import matplotlib.image

    from ldp.jobs.report_figures import draw_figures

    results = _results()
    results["sections"]["data_efficiency"] = {"status": "ok", "points": [
        {"task": "sst2", "method": "lora-diffusion", "fraction": f, "train_limit": 10, "score": s, "n": 20}
        for f, s in ((0.5, 40.0), (1.0, 60.0))]}
    results["sections"]["loss_curves"] = {"status": "ok", "runs": [
        {"task": "sst2", "label": "lora-diffusion", "steps": [1, 2, 3], "loss": [3.0, 2.0, 1.5]}]}
    draw_figures(results, tmp_path)
    names = [n for s in results["sections"].values() for n in s.get("figures") or []]
    assert sorted(names) == ["data_efficiency.png", "effective_rank.png", "loss_sst2.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
        assert matplotlib.image.imread(tmp_path / name).ndim == 3


def test_spec_plans_variants_and_shares_the_default_run(data_dir):
    from ldp.config import read_mapping
    from ldp.jobs.report_runs import planned_variants
    from ldp.jobs.report_spec import shared_train, validate_report

    data = {**read_mapping(REPO / "configs" / "report-full.yaml"), "data_dir": str(data_dir)}
    spec = validate_report(data)
    variants = planned_variants(spec)
    main = variants[0]
    assert (main.section, len(main.tasks), len(main.methods)) == ("methods", 6, 6)
    labels = [v.label for v in variants if v.section == "ablations"]
    assert "uniform r=8" in labels and "step-adaptive 64/32/8 (default)" in labels
    # the default variants train exactly the main run's recipe config, so they reuse its adapters
    defaults = [v for v in variants if "default" in v.label or v.params.get("fraction") == 1.0]
    assert defaults and all(v.train == shared_train(spec) for v in defaults)
    tenth = next(v for v in variants if v.params.get("fraction") == 0.1)
    assert tenth.train["train_limit"] == 100  # 10% of the budget's 1000
    with pytest.raises(UsageError, match="fractions"):
        validate_report({**data, "data_efficiency": {"fractions": [0.0, 1.0]}})


def test_composition_pipeline_reuses_the_main_adapters(data_dir, base_folder):
    """The train-all job of the composition section resolves each adapter job to the spec of the
    main run's lora-diffusion cell: same hash, so it is reused and only the router trains."""
    from ldp.config import build, read_mapping
    from ldp.jobs.compare import CompareSpec, cell_spec
    from ldp.jobs.report import composition_pipeline
    from ldp.jobs.report_runs import planned_variants
    from ldp.jobs.report_spec import validate_report
    from ldp.jobs.train_all_spec import child_spec, spec_hash, validate_pipeline

    base = str(base_folder)
    data = {**read_mapping(REPO / "configs" / "report-smoke.yaml"), "data_dir": str(data_dir), "base": base,
            "composition": {"router_steps": 3}, "task_steps": {"trec": 7}}
    spec = validate_report(data)
    main = planned_variants(spec)[0]
    pipeline = validate_pipeline(composition_pipeline(spec, base, ["sst2", "trec"]))
    compare_spec = build(CompareSpec, main.compare_dict(), where="compare.")
    for task in ("sst2", "trec"):
        assert spec_hash(child_spec(pipeline, task, base)) == spec_hash(cell_spec(compare_spec, task, "lora-diffusion", base))
    # a task's own step budget reaches its cells in the main run and in the composition pipeline
    assert child_spec(pipeline, "trec", base)["steps"] == cell_spec(compare_spec, "trec", "full", base)["steps"] == 7
    assert child_spec(pipeline, "sst2", base)["steps"] == spec.steps != 7
    with pytest.raises(UsageError, match="task_steps.squad"):
        validate_report({**data, "task_steps": {"squad": 0}})
    changed = validate_report({**data, "seed": 1})  # a different budget must not match
    other = validate_pipeline(composition_pipeline(changed, base, ["sst2", "trec"]))
    assert spec_hash(child_spec(other, "sst2", base)) != spec_hash(cell_spec(compare_spec, "sst2", "lora-diffusion", base))


@pytest.fixture
def base_folder(tmp_path):
    """A folder standing for a base (job specs only check that it exists)."""
    folder = tmp_path / "base"
    folder.mkdir()
    return folder


@pytest.mark.slow
def test_report_smoke_end_to_end(small_base, data_dir, tmp_path, capsys, in_jobs_env):
    import matplotlib.image

    from ldp.cli.main import main

    out = tmp_path / "report"
    args = ["report", "--config", str(REPO / "configs" / "report-smoke.yaml"), "--base", str(small_base.folder),
            "--data-dir", str(data_dir), "--registry", str(tmp_path / "registry"), "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    text = (out / "REPORT.md").read_text()
    for number, title in enumerate(SECTIONS.values(), 1):
        assert f"## {number}. {title}" in text
    assert "_Empty: no `composition` settings in the config" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"effective_rank.png", "data_efficiency.png", "trajectories.png", "loss_sst2.png"} <= set(links)
    for name in links:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert matplotlib.image.imread(out / name).shape[0] > 10
    results = json.loads((out / "results.json").read_text())
    rows = results["sections"]["methods"]["compare"]["rows"]
    assert {(r["task"], r["method"]) for r in rows} == {(t, m) for t in ("sst2", "trec")
                                                        for m in ("lora-diffusion", "weight-lora")}
    # the Markdown shows the numbers results.json holds
    for r in rows:
        assert r["n"] == 6 and r["split"] == "validation"
        assert f"{r['score']:.1f}" in text
    ld = next(r for r in rows if r["task"] == "sst2" and r["method"] == "lora-diffusion")
    assert re.search(rf"\| LoRA-Diffusion \| {ld['score']:.1f} \[paper 94\.2\]", text)
    ranks = results["sections"]["effective_rank"]["rows"][0]["ranks"]
    assert f"{ranks['early']:.2f} (of 64)" in text
    base_ppl = results["sections"]["forgetting"]["rows"][0]["ppl"]["wikitext"]
    assert f"{base_ppl:.2f}" in text
    assert len(results["claims"]) >= 6 and all(c["sentence"] in text for c in results["claims"])
    # the default ablation and the 100% data point reused the main run's adapters
    ablation = next(v for v in results["runs"] if "default" in v["label"])
    assert ablation["rows"][0]["ref"] == ld["ref"]

    capsys.readouterr()
    assert main(args + ["--sections", "1", "--published-only"]) == 0  # nothing trained again
    again = json.loads((out / "results.json").read_text())
    assert {r["ref"] for r in again["sections"]["methods"]["compare"]["rows"]} == {r["ref"] for r in rows}
    assert "_Empty: Not run in this report" in (out / "REPORT.md").read_text()

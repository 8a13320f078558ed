"""``ldp sweep``: grid validation (exit 2 before any Ray work), the shipped sweep configs, the CPU
budget that keeps trials from waiting on each other forever, the results table and plot."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ldp.cli.main import main
from ldp.errors import LdpError, UsageError

REPO = Path(__file__).resolve().parents[2]


def _grid(tmp_path: Path, base: str, **extra) -> dict:
    data = {
        "name": "t",
        "task": "sst2",
        "base": base,
        "steps": 4,
        "search": {"optim.lr": {"grid": [1e-3, 1e-2]}, "method_config.lambda_rank": {"grid": [0.0, 0.01]}},
    }
    data.update(extra)
    return data


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text("# ldp sweep grid.yaml\n" + yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"search": {"optim.lrr": {"grid": [1e-3]}}}, "search.optim.lrr"),
        ({"search": {"method_config.lambda_rankk": {"grid": [0.1]}}}, "search.method_config.lambda_rankk"),
        ({"search": {"optim": {"lr": {"grid": []}}}}, "search.optim.lr: grid needs a non-empty list"),
        ({"search": {"optim.lr": {"normal": [0, 1]}}}, "search.optim.lr: unknown distribution 'normal'"),
        ({"search": {"optim.lr": {"loguniform": [0, 1e-2]}}}, "search.optim.lr: loguniform needs low > 0"),
        ({"search": {"optim.lr": [1e-3, 1e-2]}}, "search.optim.lr: expected one distribution"),
        ({"search": {"method_config.lambda_rank": {"uniform": [-1, 1]}}}, "search.method_config.lambda_rank=-1"),
        ({"search": {}}, "search is empty"),
        ({"scheduler": {"type": "asha", "metric": "accuracy"}}, "scheduler.metric"),
        ({"scheduler": "hyperband"}, "scheduler"),
        ({"metric": "bleu"}, "metric 'bleu'"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"resources_per_trial": {"workers": 0}}, "workers"),
        ({"name": "Bad Name"}, "invalid sweep name"),
        ({"taks": "sst2"}, "unknown config key 'taks'"),
    ],
)
def test_bad_grid_exits_2_naming_the_key_before_ray(change, needle, tmp_path, small_base, data_dir,
                                                    capsys, no_ray):
    path = _write(tmp_path, {**_grid(tmp_path, str(small_base.folder)), **change})
    code = main(["sweep", str(path), "--data-dir", str(data_dir)])
    out = capsys.readouterr()
    assert code == 2, out.err
    assert needle in out.err and "Traceback" not in out.err
    assert out.err.count("\n") == 1  # one line
    assert out.out == ""  # no job id for a sweep that never existed


def test_set_overrides_the_base_job_and_is_validated(tmp_path, small_base, data_dir, capsys, no_ray):
    path = _write(tmp_path, _grid(tmp_path, str(small_base.folder)))
    code = main(["sweep", str(path), "--data-dir", str(data_dir), "--set", "loop.batch_size=0"])
    assert code == 2 and "batch_size" in capsys.readouterr().err
    from ldp.jobs.sweep_grid import load_grid

    plan = load_grid(path, sets=["steps=7", "loop.batch_size=4"], explicit={"data_dir": str(data_dir)})
    assert plan.job["steps"] == 7 and plan.job["train"]["loop"]["batch_size"] == 4
    assert plan.max_steps == 7 and plan.trials == 4


def test_resume_without_an_interrupted_run_exits_2(tmp_path, small_base, data_dir, capsys, no_ray):
    path = _write(tmp_path, _grid(tmp_path, str(small_base.folder)))
    code = main(["sweep", str(path), "--data-dir", str(data_dir), "--resume"])
    assert code == 2 and "no unfinished run of sweep 't'" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("sweep-*.yaml")), ids=lambda p: p.name)
def test_shipped_sweep_configs_validate(path, data_dir):
    from ldp.jobs.sweep_grid import load_grid

    assert path.read_text().startswith(f"# ldp sweep configs/{path.name}\n")
    plan = load_grid(path, explicit={"data_dir": str(data_dir)})
    assert plan.trials >= 2 and plan.search
    assert plan.metric == "accuracy" and plan.mode == "max"


def test_plan_expands_grids_and_maps_keys(tmp_path, small_base, data_dir):
    from ldp.jobs.sweep_grid import grid_points, load_grid
    from ldp.jobs.sweep_trial import trial_spec

    data = _grid(tmp_path, str(small_base.folder), num_samples=2, report_every=2,
                 search={"optim": {"lr": {"grid": [1e-3, 1e-2]}}, "steps": {"grid": [4, 6]},
                         "method_config.lambda_orth": {"loguniform": [1e-4, 1e-2]}})
    plan = load_grid(_write(tmp_path, data), explicit={"data_dir": str(data_dir)})
    assert set(plan.search) == {"train.optim.lr", "steps", "train.method_config.lambda_orth"}
    assert plan.trials == 2 * 2 * 2 and plan.max_steps == 6
    points = grid_points(plan.search)
    assert len(points) == 4 and {"train.optim.lr": 1e-2, "steps": 6} in points
    spec = trial_spec(plan.as_dict(), {"train.optim.lr": 1e-2, "steps": 6})
    assert spec["train"]["optim"]["lr"] == 1e-2 and spec["steps"] == 6
    assert spec["checkpoint_every"] == 2 and spec["train"]["loop"]["eval_every"] == 2


def test_cpu_budget_never_oversubscribes():
    from ldp.jobs.sweep import plan_resources

    def plan(workers=1, per_worker=1.0, driver=0.25, max_concurrent=None, trials=4):
        return {"trials": trials, "config": {"max_concurrent": max_concurrent, "resources_per_trial": {
            "workers": workers, "cpus_per_worker": per_worker, "trial_cpus": driver}}}

    assert plan_resources(plan(), 2) == (1, 1.25)  # 2 x 1.25 > 2: one trial at a time
    assert plan_resources(plan(), 8)[0] == 4  # 6 fit, but there are only 4 trials
    assert plan_resources(plan(trials=10), 8)[0] == 6
    assert plan_resources(plan(driver=0.5, max_concurrent=2), 3)[0] == 2
    with pytest.raises(UsageError, match="max_concurrent 2 needs 2.5 CPUs"):
        plan_resources(plan(max_concurrent=2), 2)
    with pytest.raises(LdpError, match=r"a trial needs 2.25 CPUs .* the cluster has 2 CPUs"):
        plan_resources(plan(workers=2), 2)


def test_table_best_and_plot(tmp_path):
    from ldp.jobs.sweep_results import TrialRow, best_row, format_table, plot, write_table

    plan = {"name": "t", "metric": "accuracy", "mode": "max",
            "config": {"search": {"optim.lr": {"grid": [1e-3, 1e-2, 1e-1]}}}}
    rows = [
        TrialRow("a_00000", {"optim.lr": 1e-3}, "finished", 0.6, 2.0, 8, 10.0, 6.0),
        TrialRow("a_00001", {"optim.lr": 1e-2}, "finished", 0.7, 1.9, 8, 11.0, 6.0),
        TrialRow("a_00002", {"optim.lr": 1e-1}, "stopped early", None, 3.0, 2, 4.0, 1.0),
    ]
    best = best_row(rows, "max")
    assert best.trial == "a_00001" and best_row(rows, "min").trial == "a_00000"
    text = format_table(rows, plan, best)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["trial", "optim.lr", "accuracy"]
    assert lines[2].startswith("*") and "yes" in lines[3]
    write_table(rows, plan, tmp_path)
    assert (tmp_path / "results.csv").read_text().splitlines()[3].startswith("a_00002,0.1,,3.0,2,yes")
    plot(rows, plan, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

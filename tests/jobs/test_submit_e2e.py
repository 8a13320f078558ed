"""``ldp submit`` end to end: real embedded Ray, real DeepSpeed, the real adapter recipe, the
registry, evaluation; and spec errors that must stop before any Ray work."""

from __future__ import annotations

import json
import re

import pytest
from safetensors.torch import load_file

from ldp.cli.main import main


def _submit(args, capsys):
    code = main(["submit", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--task", "nope"], "unknown task"),
        (["--task", "sst2", "--method", "lora"], "unknown method"),
        (["--task", "sst2", "--strategy", "zero9"], "strategy"),
        (["--task", "sst2", "--workers", "0"], "workers"),
        (["--task", "sst2", "--size", "7b"], "ldp pretrain --size 7b"),
        (["--task", "sst2", "--set", "loop.max_steps=0"], "max_steps"),
        (["--task", "sst2", "--set", "method_config.ranks=[1,2]"], "ranks"),
    ],
)
def test_invalid_specs_exit_2_before_any_ray_work(args, needle, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    code, out, err = _submit(args, capsys)
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert out == ""  # no job id printed for a job that never existed


def test_time_line_splits_the_wall_time():
    from ldp.cli.submit import time_line

    timing = {"job_seconds": 50.0, "loop_seconds": 20.0, "eval_seconds": 10.0}
    assert time_line(timing, wall=60.0) == (
        "time: 60.0 s = training loop 20.0 s + evaluation 10.0 s + everything else 30.0 s")
    assert time_line(timing).startswith("time: 50.0 s =") and time_line(timing).endswith("else 20.0 s")
    # A job that had to build its base first says so, and the rest shrinks by the build.
    built = {**timing, "base_build_seconds": 25.0}
    assert time_line(built, wall=60.0) == (
        "time: 60.0 s = building the base 25.0 s + training loop 20.0 s + evaluation 10.0 s"
        " + everything else 5.0 s")
    assert time_line({"job_seconds": 5.0}) is None  # a result from before timing existed


@pytest.mark.slow
def test_submit_trains_evaluates_and_publishes(small_base, data_dir, tmp_path, capsys, in_jobs_env):
    registry = (tmp_path / "registry").as_uri()
    code, out, err = _submit([
        "--task", "sst2", "--base", str(small_base.folder), "--steps", "8", "--workers", "1",
        "--data-dir", str(data_dir), "--registry", registry,
        "--set", "checkpoint_every=4", "--set", "loop.batch_size=8", "--set", "train_limit=128",
        "--set", "val_limit=16", "--set", "eval.limit=16",
    ], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    job_id = lines[0]
    assert job_id.startswith("ldp-sst2-")
    assert "adapter: adapters/sst2/lora-diffusion@1" in out
    assert "validation accuracy:" in out
    # Where the time went: the loop and the evaluation, measured where they ran, and the rest.
    number = r"-?[\d.]+ s"
    assert re.search(
        rf"time: {number} = training loop {number} \+ evaluation {number} \+ everything else {number}", out
    )

    from ldp.store import Registry

    reg = Registry(registry)
    folder = reg.pull("adapters/sst2/lora-diffusion@latest")
    weights = load_file(folder / "adapter_model.safetensors")
    assert weights and all(t.numel() > 0 for t in weights.values())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["evaluation"]["n"] == 16 and metrics["train"]["step"] == 8
    assert 0 < metrics["loop_seconds"] < metrics["train_seconds"] and metrics["eval_seconds"] > 0
    assert (folder / "job_spec.yaml").is_file()

    assert main(["status", job_id, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "SUCCEEDED"
    assert main(["logs", job_id]) == 0
    assert job_id in capsys.readouterr().out


def test_relative_local_paths_become_absolute(tmp_path, monkeypatch):
    from ldp.jobs.spec import JobSpec

    monkeypatch.chdir(tmp_path)
    spec = JobSpec(task="sst2", data_dir="data", registry="reg", base="base", storage_path="runs")
    assert spec.data_dir == str(tmp_path / "data") and spec.registry == str(tmp_path / "reg")
    assert spec.base == str(tmp_path / "base") and spec.storage_path == str(tmp_path / "runs")
    remote = JobSpec(task="sst2", data_dir="s3://bucket/data", base="bases/tiny@2")
    assert remote.data_dir == "s3://bucket/data" and remote.base == "bases/tiny@2"

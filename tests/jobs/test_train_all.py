"""``ldp train-all`` end to end on a real local Ray: adapters as Ray tasks, the router, the bundle;
a pipeline killed after its second adapter resumes by reusing both. Bad input exits 2 before Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ldp.cli.main import main

from .conftest import subprocess_env

TASKS = ["sst2", "agnews", "trec"]


def _args(small_base, data_dir, registry):
    return [
        "train-all", "--tasks", ",".join(TASKS), "--base", str(small_base.folder), "--steps", "2",
        "--router-steps", "6", "--max-parallel", "1", "--name", "t3", "--data-dir", str(data_dir),
        "--registry", registry,
        "--set", "checkpoint_every=2", "--set", "loop.batch_size=8", "--set", "train_limit=32",
        "--set", "val_limit=8", "--set", "eval.limit=8", "--set", "eval.elbo_samples=1",
        "--set", "router.train_limit=16", "--set", "router.val_limit=4", "--set", "router.hidden=32",
        "--set", "router.loop.batch_size=8", "--set", "compare=false",
    ]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--tasks", "nope"], "unknown task"),
        (["--tasks", "sst2", "--method", "weight-lora"], "cannot be routed"),
        (["--tasks", "sst2", "--steps", "0"], "steps"),
        (["--tasks", "sst2", "--max-parallel", "0"], "max_parallel"),
        (["--tasks", "sst2", "--set", "router.hidden=0"], "router"),
        (["--tasks", "sst2", "--set", "router.nope=1"], "router settings"),
        (["--tasks", "sst2", "--name", "Bad/Name"], "bundle name"),
        (["--tasks", "sst2,sst2"], "duplicates"),
        (["--tasks", "sst2", "--size", "7b"], "ldp pretrain --size 7b"),
    ],
)
def test_invalid_pipelines_exit_2_before_any_ray_work(args, needle, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    code = main(["train-all", *args])
    out = capsys.readouterr()
    assert code == 2, out.err
    assert needle in out.err and "Traceback" not in out.err
    assert out.out == ""


def test_spec_hash_ignores_where_and_how_often_but_not_what():
    from ldp.jobs.train_all_spec import spec_hash

    a = {"task": "sst2", "steps": 5, "storage_path": "/a", "checkpoint_every": 2, "train": {"x": 1}}
    assert spec_hash(a) == spec_hash({**a, "storage_path": "/b", "checkpoint_every": 9})
    assert spec_hash(a) != spec_hash({**a, "steps": 6})
    assert spec_hash(a) != spec_hash({**a, "train": {"x": 2}})


def test_spec_hash_of_an_adapter_job_sees_defaults_written_out_as_the_same_run():
    """``ldp compare`` writes the evaluation defaults into each cell's spec, ``ldp submit`` and
    ``train-all`` leave them implicit: the same run must hash the same, or nothing is reused."""
    from ldp.jobs.train_all_spec import spec_hash

    implicit = {"kind": "adapter", "task": "sst2", "method": "lora-diffusion", "base": "bases/tiny@1",
                "steps": 300, "train": {}}
    explicit = {**implicit, "train": {"eval": {"split": "validation", "limit": 200}, "loop": {"max_steps": 300}}}
    assert spec_hash(implicit) == spec_hash(explicit)
    assert spec_hash(implicit) != spec_hash({**implicit, "train": {"eval": {"limit": 100}}})
    assert spec_hash(implicit) != spec_hash({**implicit, "train": {"optim": {"lr": 1e-4}}})
    assert spec_hash(implicit) != spec_hash({**implicit, "method": "weight-lora"})


def test_the_readme_submit_and_a_compare_cell_on_the_base_it_ran_on_hash_alike():
    """The README's ``ldp submit`` leaves base and steps unset (``@latest``, the recipe's default);
    a ``compare`` cell pins the base that ``@latest`` resolved to and writes the steps out.
    Published on that base, the first is the second's run and must be reused, not retrained."""
    from ldp.jobs.train_all_spec import spec_hash
    from ldp.training.recipes.adapter import DEFAULT_STEPS

    readme = {"kind": "adapter", "task": "sst2", "size": "tiny", "method": "lora-diffusion",
              "base": None, "steps": None, "auto_base": True, "train": {}}
    cell = {**readme, "base": "bases/tiny@1", "steps": DEFAULT_STEPS,
            "train": {"eval": {"split": "validation", "limit": 200}}}
    assert spec_hash(readme, ran_on="bases/tiny@1") == spec_hash(cell)
    assert spec_hash(readme, ran_on="bases/tiny@2") != spec_hash(cell)
    assert spec_hash(readme) != spec_hash(cell)  # where it ran is unknown: no match
    assert spec_hash({**readme, "steps": 200}, ran_on="bases/tiny@1") != spec_hash(cell)
    # A pinned base is what the job asked for; where it ran does not rename it.
    assert spec_hash({**cell, "base": "bases/tiny@2"}, ran_on="bases/tiny@1") != spec_hash(cell)


def test_a_published_run_is_matched_by_what_it_ran_not_by_todays_defaults(tmp_path):
    """An adapter published by the README's ``ldp submit`` (steps and method config implicit)
    ran the defaults of its day: 300 steps and the final-state Enc(c), mean-pooled. Once the
    defaults are 900 steps, ``context: blocks`` and ``pooling: attention``, the same implicit spec
    describes another run and must not reuse it; a spec that asks for what it ran (300 steps,
    ``context: final``, ``pooling: mean``) must."""
    import json

    import yaml
    from ldp.jobs import train_all
    from ldp.jobs.train_all import find_published_adapter
    from ldp.jobs.train_all_spec import _resolved_train, spec_hash
    from ldp.store import Registry

    reg = Registry(f"file://{tmp_path / 'reg'}")
    base = reg.publish("bases/tiny", {"config.json": b"{}"})
    readme = {"kind": "adapter", "task": "sst2", "size": "tiny", "method": "lora-diffusion",
              "base": None, "steps": None, "auto_base": True, "train": {}}
    ran = _resolved_train({**readme, "base": str(base), "steps": 300})
    ran["method_config"] = {"num_steps": 100}  # as job_config.json recorded it then
    saved = {"ldp_method": "lora-diffusion", "ldp_config": {"num_steps": 100, "ranks": [64, 32, 8]}}
    ref = reg.publish("adapters/sst2/lora-diffusion", {
        "job_spec.yaml": yaml.safe_dump(readme).encode(), "job_config.json": json.dumps(ran).encode(),
        "adapter_config.json": json.dumps(saved).encode(),
    }, base=base, metadata={"accuracy": 68.5})
    train_all._HASHES.clear()
    today = spec_hash({**readme, "base": str(base)})
    assert find_published_adapter(reg, "sst2", "lora-diffusion", today) is None
    # It ran with the final-state Enc(c), pooled by the mean (it predates both options).
    asked = {**readme, "base": str(base), "steps": 300,
             "train": {"method_config": {"context": "final", "pooling": "mean"}}}
    assert find_published_adapter(reg, "sst2", "lora-diffusion", spec_hash(asked)) == str(ref)
    # Writing a method default out describes the same run as leaving it implicit.
    explicit = {**readme, "train": {"method_config": {"context": "blocks"}}}
    assert spec_hash(explicit, ran_on="bases/tiny@1") == spec_hash(readme, ran_on="bases/tiny@1")


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the pipeline and every process it started (its embedded Ray included)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    os.killpg(proc.pid, signal.SIGKILL)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


@pytest.mark.slow
def test_pipeline_killed_after_two_adapters_resumes_and_publishes_a_bundle(
    small_base, data_dir, tmp_path, capsys, in_jobs_env
):
    from ldp.store import Registry

    registry = (tmp_path / "registry").as_uri()
    reg = Registry(registry)
    args = _args(small_base, data_dir, registry)
    log = open(tmp_path / "first.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "ldp", *args], stdout=log, stderr=subprocess.STDOUT,
                            env=subprocess_env(), start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            published = {v.ref.name.split("/")[0] for v in reg.ls("adapters")} if (tmp_path / "registry").exists() else set()
            if len(published) >= 2 or proc.poll() is not None:
                break
            time.sleep(1.0)
    finally:
        _kill_tree(proc)
        log.close()
    first_log = (tmp_path / "first.log").read_text(errors="replace")
    assert published == {"sst2", "agnews"}, first_log[-3000:]
    assert not reg.ls("bundles")

    code = main([*args[:1], *args[1:]])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "sst2: reusing adapters/sst2/lora-diffusion@1" in out
    assert "agnews: reusing adapters/agnews/lora-diffusion@1" in out
    assert "bundle: bundles/t3@1" in out
    # Exactly one version of each adapter: the first two reused, only trec trained now.
    assert sorted(str(v.ref) for v in reg.ls("adapters")) == [
        "adapters/agnews/lora-diffusion@1", "adapters/sst2/lora-diffusion@1", "adapters/trec/lora-diffusion@1"]
    assert [str(v.ref) for v in reg.ls("routers")] == ["routers/t3@1"]
    bundle = json.loads(reg.read_bytes("bundles/t3@1", "bundle.json"))
    assert bundle["tasks"] == TASKS and bundle["router"] == "routers/t3@1"
    assert bundle["adapters"]["trec"] == "adapters/trec/lora-diffusion@1"
    assert bundle["base"]["ref"] == str(small_base.folder)
    assert set(bundle["metrics"]) == set(TASKS) and bundle["pipeline"]["steps"] == 2
    assert bundle["comparison"] is None  # compare=false here; the table is tested in tests/training

    job_id = out.strip().splitlines()[0]
    assert job_id.startswith("ldp-train-all-")
    assert main(["status", job_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "SUCCEEDED"
    assert main(["status", f"{job_id}-trec", "--json"]) == 0
    child = json.loads(capsys.readouterr().out)
    assert child["state"] == "SUCCEEDED" and child["result"]["ref"] == "adapters/trec/lora-diffusion@1"
    assert main(["logs", f"{job_id}-router"]) == 0
    assert "published routers/t3@1" in capsys.readouterr().out


def test_tasks_without_local_data_are_skipped_with_a_reason(data_dir):
    from ldp.jobs.train_all import _has_data

    assert _has_data("sst2", str(data_dir)) is None
    why = _has_data("triviaqa", str(data_dir))
    assert why is not None and "no train/validation split" in why and str(data_dir) in why
    assert _has_data("triviaqa", "hub") is None  # the hub: the child job says whether it is reachable


def _interrupted(job_id: str, spec: dict, *, state: str = "FAILED", checkpoint_step: int | None = 100) -> None:
    """A child job record as a killed pipeline leaves it: ended without a result, and (when
    ``checkpoint_step``) a run folder whose metrics log records a committed checkpoint."""
    from ldp.jobs import records
    from ldp.jobs.runner import default_storage_path

    records.create_job(spec, job_id=job_id, label=spec["task"])
    records.update_job(job_id, state=state, error="interrupted")
    if checkpoint_step is not None:
        run = default_storage_path() / job_id
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({"event": "checkpoint", "step": checkpoint_step}) + "\n")


def test_a_rerun_resumes_an_interrupted_child_with_the_same_spec_from_its_checkpoint():
    from ldp.errors import UsageError
    from ldp.jobs import records
    from ldp.jobs.train_all import find_interrupted_child
    from ldp.jobs.train_all_spec import spec_hash

    spec = {"kind": "adapter", "task": "gsm8k", "steps": 300, "train": {"eval_limit": 40}}
    want = spec_hash(spec)
    assert find_interrupted_child("gsm8k", want) is None
    _interrupted("p1-gsm8k", spec, checkpoint_step=250)
    _interrupted("p1-squad", {**spec, "task": "squad"}, checkpoint_step=300)
    _interrupted("p0-gsm8k", {**spec, "steps": 200}, checkpoint_step=150)  # another spec
    _interrupted("p2-gsm8k", spec, checkpoint_step=None)  # died before its first checkpoint
    _interrupted("p3-gsm8k", spec, state="SUCCEEDED")  # finished: its adapter is published
    assert find_interrupted_child("gsm8k", want) == "p1-gsm8k"
    assert find_interrupted_child("squad", spec_hash({**spec, "task": "squad"})) == "p1-squad"
    assert find_interrupted_child("gsm8k", spec_hash({**spec, "steps": 301})) is None

    record = records.reopen_job("p1-gsm8k")
    assert record.state == "PENDING" and record.pid is None and record.error is None
    assert record.extra["attempts"] == 2 and record.extra["resumed_after"] == "interrupted"
    assert records.get_job("p1-gsm8k").state == "PENDING"
    assert find_interrupted_child("gsm8k", want) is None  # a pending job is not picked twice
    with pytest.raises(UsageError, match="only a FAILED or STOPPED job"):
        records.reopen_job("p1-gsm8k")


def test_the_composition_comparison_scores_as_the_adapter_jobs_did():
    """Table 11's ``oracle`` column is each task's adapter alone: it must be scored with the
    adapter jobs' own evaluation settings, not the evaluator's defaults, or it disagrees with
    the metric each job published (and a generation task costs 100 sampling steps a token budget)."""
    from ldp.jobs.train_all_spec import comparison_eval_settings, validate_pipeline
    from ldp.training.recipes.adapter import AdapterConfig

    spec = validate_pipeline({"size": "tiny", "tasks": ["sst2", "gsm8k"], "train": {
        "eval": {"steps": 24, "elbo_samples": 8, "batch_size": 4}, "max_prompt_len": 96}})
    kw = comparison_eval_settings(spec, "bases/tiny@1")
    assert (kw["steps"], kw["elbo_samples"], kw["batch_size"], kw["max_prompt_len"]) == (24, 8, 4, 96)
    assert kw["diffusion"] == AdapterConfig().diffusion  # task training's process, not the ELBO-weighted one

    plain = comparison_eval_settings(validate_pipeline({"size": "tiny", "tasks": ["sst2"]}), "bases/tiny@1")
    ev = AdapterConfig().eval
    assert (plain["mode"], plain["steps"], plain["elbo_samples"]) == (ev.mode, ev.steps, ev.elbo_samples)

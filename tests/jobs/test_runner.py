"""The Ray Train runner end to end: real local Ray (2 CPUs), real DeepSpeed on CPU, 2 workers.

Three runs of the toy recipe (20 steps, checkpoint every 5), shared by the tests:

- ``ddp``, submitted through ``launch(..., wait=True)`` (records + job kind + runner);
- ``zero2`` through ``run_training``;
- ``zero3`` with ``stage3_param_persistence_threshold=0`` whose rank 1 SIGKILLs itself at step 8
  the first time: Ray replaces the worker group and the run resumes from ``step_000005``.

Sharding does not change the maths, and resume is exact, so all three must follow the same loss
curve; the exported artifacts must hold whole (never empty) tensors of the model's shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ldp.cli.main import main
from ldp.errors import LdpError
from ldp.jobs import records
from ldp.jobs.launch import launch
from ldp.jobs.runner import read_metrics, run_training
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

CONFIG = {"steps": 20}
EVERY = 5
KILL_STEP = 8
SHAPES = {
    "out_weight": [4, 32],
    "adapter.0.weight": [16, 32],
    "adapter.0.bias": [16],
    "adapter.2.weight": [32, 16],
    "adapter.2.bias": [32],
}
DRIVER_REGISTRY = "memory://driver-only-registry"
ZERO3_ALL_SHARDED = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}


@pytest.fixture(scope="module")
def storage(jobs_env) -> Path:
    path = Path(jobs_env["root"]) / "storage"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def ddp_run(local_ray, jobs_env, storage):
    spec = {
        "kind": "toy_recipe:execute",
        "task": "toy",
        "config": CONFIG,
        "workers": 2,
        "strategy": "ddp",
        "checkpoint_every": EVERY,
        "storage_path": str(storage),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LDP_HOME", jobs_env["LDP_HOME"])
        mp.setenv("LDP_REGISTRY", DRIVER_REGISTRY)  # set after the cluster started: only the driver has it
        job_id = launch(spec, wait=True)
        record = records.get_job(job_id)
        log = records.read_log(job_id)
    return {"job_id": job_id, "record": record, "log": log}


@pytest.fixture(scope="module")
def zero2_run(local_ray, storage):
    return run_training(
        "toy_recipe",
        CONFIG,
        job_id="toy-zero2",
        num_workers=2,
        strategy="zero2",
        storage_path=str(storage),
        checkpoint_every=EVERY,
    )


@pytest.fixture(scope="module")
def zero3_killed_run(local_ray, storage, jobs_env):
    marker = Path(jobs_env["root"]) / "killed-once"
    config = {**CONFIG, "kill": {"rank": 1, "step": KILL_STEP, "marker": str(marker)}}
    outcome = run_training(
        "toy_recipe",
        config,
        job_id="toy-zero3-killed",
        num_workers=2,
        strategy="zero3",
        storage_path=str(storage),
        checkpoint_every=EVERY,
        max_failures=2,
        deepspeed=ZERO3_ALL_SHARDED,
    )
    return outcome, marker


def _check_artifact(folder: Path) -> dict[str, torch.Tensor]:
    weights = load_file(folder / "weights.safetensors")
    assert {n: list(t.shape) for n, t in weights.items()} == SHAPES
    assert all(t.numel() > 0 and torch.isfinite(t).all() for t in weights.values())
    assert json.loads((folder / "shapes.json").read_text()) == SHAPES
    return weights


def _steps(records_: list[dict]) -> list[dict]:
    return [r for r in records_ if "event" not in r]


def test_ddp_job_through_launch(ddp_run, storage, in_jobs_env, capsys):
    job_id, rec = ddp_run["job_id"], ddp_run["record"]
    assert rec.state == "SUCCEEDED", rec.error
    assert rec.result["ref"] == f"toy/{job_id}"
    metrics = rec.result["metrics"]
    assert metrics["step"] == 20 and metrics["val_loss"] > 0 and metrics["train_loss"] > 0
    artifact = Path(rec.result["artifact"])
    assert artifact == storage / job_id / "artifact"  # Result.checkpoint is the artifact
    _check_artifact(artifact)
    # The workers resolve their defaults from the driver's environment, not the cluster's.
    seen = json.loads((artifact / "worker_env.json").read_text())
    assert seen == {"LDP_HOME": in_jobs_env["LDP_HOME"], "LDP_REGISTRY": DRIVER_REGISTRY}

    # Per-step metrics beside the checkpoints: every step once, checkpoints every 5.
    log = read_metrics(str(storage), job_id)
    assert [r["step"] for r in _steps(log)] == list(range(1, 21))
    events = [(r["event"], r["step"]) for r in log if "event" in r]
    assert events == [("start", 0)] + [("checkpoint", s) for s in (5, 10, 15, 20)] + [("end", 20)]
    assert _steps(log)[-1]["loss"] == pytest.approx(metrics["loss"])
    # Ray kept the last two reports: the final trainer checkpoint and the artifact.
    kept = sorted(
        p.name for p in (storage / job_id).iterdir() if p.is_dir() and p.name != "metrics"
    )
    assert kept == ["artifact", "step_000020"]
    ckpt = storage / job_id / "step_000020"
    assert (ckpt / "trainer_state.json").is_file() and (
        ckpt / "rank_1" / "trainer_state.json"
    ).is_file()
    assert (ckpt / "deepspeed" / "state").is_dir()

    # The workers' progress lines reached the job log (through the in-process driver).
    assert f"[ldp] {job_id}: step 10/20" in ddp_run["log"]
    assert records.parse_result_line(ddp_run["log"])["ref"] == f"toy/{job_id}"

    assert main(["status", job_id, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "SUCCEEDED" and status["result"]["metrics"]["step"] == 20
    assert main(["jobs", "--json"]) == 0
    assert job_id in [j["job_id"] for j in json.loads(capsys.readouterr().out)]


def test_zero2_follows_the_ddp_run(ddp_run, zero2_run, storage):
    ddp_log = _steps(read_metrics(str(storage), ddp_run["job_id"]))
    assert [r["step"] for r in zero2_run.history] == list(range(1, 21))
    ddp_losses = [r["loss"] for r in ddp_log]
    assert [r["loss"] for r in zero2_run.history] == pytest.approx(ddp_losses, abs=1e-4)
    assert zero2_run.metrics["loss"] == pytest.approx(
        ddp_run["record"].result["metrics"]["loss"], abs=1e-4
    )
    ddp_w = _check_artifact(Path(ddp_run["record"].result["artifact"]))
    z2_w = _check_artifact(zero2_run.artifact_dir)
    for name in SHAPES:
        torch.testing.assert_close(z2_w[name], ddp_w[name], atol=1e-5, rtol=1e-4)


def test_zero3_killed_worker_is_replaced_and_resumes_from_the_last_checkpoint(
    ddp_run, zero3_killed_run, storage
):
    outcome, marker = zero3_killed_run
    assert marker.is_file(), "rank 1 never killed itself"
    log = read_metrics(str(storage), "toy-zero3-killed")
    starts = [i for i, r in enumerate(log) if r.get("event") == "start"]
    assert len(starts) == 2, log  # the first attempt and the restarted worker group
    first, second = log[starts[0] : starts[1]], log[starts[1] :]
    ran_before = [r["step"] for r in _steps(first)]
    assert ran_before == list(range(1, KILL_STEP))  # died during step 8
    last_ckpt = max(r["step"] for r in first if r.get("event") == "checkpoint")
    assert last_ckpt == 5 and log[starts[1]]["step"] == last_ckpt
    ran_after = [r["step"] for r in _steps(second)]
    assert ran_after == list(range(last_ckpt + 1, 21))  # starts at last checkpoint + 1
    assert max(ran_before) - last_ckpt <= EVERY  # at most one interval redone

    # Exact resume across a real worker kill: the curve is the uninterrupted ddp run's.
    ddp_losses = [r["loss"] for r in _steps(read_metrics(str(storage), ddp_run["job_id"]))]
    assert [r["loss"] for r in outcome.history] == pytest.approx(ddp_losses, abs=1e-4)
    assert outcome.metrics["step"] == 20
    z3_w = _check_artifact(outcome.artifact_dir)
    ddp_w = _check_artifact(Path(ddp_run["record"].result["artifact"]))
    for name in SHAPES:
        torch.testing.assert_close(z3_w[name], ddp_w[name], atol=1e-5, rtol=1e-4)


def test_a_worker_error_becomes_one_ldp_error_line(local_ray, storage):
    with pytest.raises(LdpError) as info:
        run_training(
            "toy_recipe",
            {**CONFIG, "nan_at_step": 3},
            job_id="toy-nan",
            num_workers=2,
            strategy="ddp",
            storage_path=str(storage),
            checkpoint_every=EVERY,
            max_failures=0,
        )
    message = str(info.value)
    assert message.startswith("training job toy-nan failed: rank 0: loss became nan at step 3")
    assert "\n" not in message


@pytest.mark.parametrize("cpus, threads", [(None, 2), (1, 1)])
def test_a_lone_worker_computes_on_every_core_unless_told(local_ray, storage, jobs_env, cpus, threads):
    # The embedded cluster has 2 CPUs: by default one worker holds both, and so two threads.
    out = Path(jobs_env["root"]) / f"threads-{cpus}"
    run_training("toy_recipe", {**CONFIG, "steps": 2, "threads_file": str(out)}, job_id=f"toy-threads-{cpus}",
                 num_workers=1, strategy="ddp", storage_path=str(storage), checkpoint_every=EVERY,
                 cpus_per_worker=cpus)
    assert int(out.read_text()) == threads

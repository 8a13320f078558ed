"""One sweep trial: the function Ray Tune runs for each point of the search space.

Ray 2.60 cannot tune a ``TorchTrainer`` directly; each trial is a small driver function that
builds and fits one (the same :func:`ldp.jobs.runner.run_training` path as ``ldp submit``), with
Ray Train's ``TuneReportCallback`` so that rank 0's reports — the validation loss every
``report_every`` steps, with a checkpoint — reach Tune while training runs. That is what ASHA
compares. When training ends, the driver scores the exported adapter on the task (the job's
``train.eval`` split and limit, the same evaluation ``ldp submit`` runs) and reports the task
metric once more to Tune, flagged ``ldp_done``.

The Train run is named ``<experiment>-<trial id>`` in the sweep's storage, so a resumed sweep that
restarts an interrupted trial resumes its training from the last checkpoint (Ray Train V2 resumes
a run of the same name silently), and a trial whose training had finished goes straight to its
evaluation.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["run_trial", "trial_spec"]

DONE_KEY = "ldp_done"
"""Set in a trial's last report once it has been trained and evaluated (not stopped early)."""


def trial_spec(plan: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """The job spec of one trial: the base job, the trial's values, the sweep's report cadence."""
    from ldp.config import apply_overrides
    from ldp.jobs.sweep_grid import apply_point

    spec = apply_point(plan["job"], point)
    every = int(plan["report_every"])
    workers = int(plan["config"]["resources_per_trial"]["workers"])
    return apply_overrides(spec, {
        "checkpoint_every": every, "train.loop.eval_every": every, "workers": workers,
    })


def run_trial(config: dict[str, Any], *, plan: dict[str, Any], experiment: str, base: str) -> None:
    """Tune's trainable (wrapped with ``tune.with_parameters`` and ``tune.with_resources``)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ldp.jobs.runner import default_storage_path, read_metrics, run_training
    from ldp.jobs.spec import train_config, validate_spec
    from ldp.training.recipes.adapter import validate

    trial_id = ray.tune.get_context().get_trial_id()
    spec = validate_spec(trial_spec(plan, config))
    recipe_config = train_config(spec, base)
    cfg = validate(recipe_config)
    storage = spec.storage_path or str(default_storage_path())
    run_name = f"{experiment}-{trial_id}"
    values = " ".join(f"{k}={v}" for k, v in config.items())
    print(f"[ldp] trial {trial_id}: {values}: training {cfg.loop.max_steps} steps "
          f"(Train run {run_name})", flush=True)

    started = time.perf_counter()
    outcome = run_training(
        "ldp.training.recipes.adapter",
        recipe_config,
        job_id=run_name,
        num_workers=spec.workers,
        strategy=spec.strategy,
        storage_path=storage,
        checkpoint_every=spec.checkpoint_every,
        max_failures=spec.max_failures,
        use_gpu=spec.use_gpu,
        cpus_per_worker=float(plan["config"]["resources_per_trial"]["cpus_per_worker"]),
        deepspeed=spec.deepspeed or None,
        callbacks=[TuneReportCallback()],
    )
    fit_seconds = time.perf_counter() - started
    loop_seconds = _loop_seconds(read_metrics(storage, run_name))

    eval_started = time.perf_counter()
    evaluation = _evaluate(spec, cfg, base, outcome.artifact_dir)
    eval_seconds = time.perf_counter() - eval_started
    final = {k: v for k, v in outcome.metrics.items() if isinstance(v, (int, float)) and k != "step"}
    primary = evaluation["primary"]
    report = {
        **final,
        **{k: float(v) for k, v in evaluation["metrics"].items()},
        "step": int(outcome.metrics.get("step", cfg.loop.max_steps)),
        "fit_seconds": round(fit_seconds, 3),
        "train_loop_seconds": round(loop_seconds, 3) if loop_seconds is not None else None,
        "eval_seconds": round(eval_seconds, 3),
        "eval_n": evaluation["n"],
        "primary": primary,
        "artifact_path": outcome.checkpoint_path,
        "train_run": run_name,
        DONE_KEY: True,
    }
    print(f"[ldp] trial {trial_id}: {evaluation['split']} {primary}="
          f"{evaluation['metrics'][primary]:.4f} val_loss={final.get('val_loss', float('nan')):.4f} "
          f"(train {fit_seconds:.1f}s, eval {eval_seconds:.1f}s)", flush=True)
    ray.tune.report(report)


def _loop_seconds(records: list[dict[str, Any]]) -> float | None:
    """Seconds the training loop itself ran (sum over attempts: from each start to its last step)."""
    total, start, last = 0.0, None, None
    for r in records:
        if r.get("event") == "start":
            if start is not None and last is not None:
                total += last - start
            start, last = r.get("time"), None
        elif "event" not in r and "time" in r:
            last = r["time"]
    if start is not None and last is not None:
        total += last - start
    return total if records else None


def _evaluate(spec, cfg, base: str, artifact_dir) -> dict[str, Any]:
    """Score the trained adapter as ``ldp submit`` does: the task's metrics on ``cfg.eval``."""
    from ldp.bases import load_adapted
    from ldp.evaluation import evaluate_task
    from ldp.training.recipes.adapter import scoring_settings

    model, tokenizer, _ = load_adapted(str(artifact_dir), spec.registry, base)
    result = evaluate_task(
        model, tokenizer, spec.task, split=cfg.eval.split, data_dir=spec.data_dir,
        limit=cfg.eval.limit, progress=False, **scoring_settings(cfg),
    )
    return result.to_dict(base=base)

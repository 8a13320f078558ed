"""Job kind ``sweep``: a Ray Tune search over an adapter job's config, best trial published.

The job spec (what ``ldp sweep`` records and :func:`execute` runs) is
``{"kind": "sweep", "task": ..., "plan": SweepPlan.as_dict(), "resume": bool}``.

1. Resolve the base once (building the default ``tiny`` base on first use), so every trial
   trains on the same concrete version.
2. Budget the cluster's CPUs: a trial holds ``trial_cpus`` for its driver *and* its Train workers'
   CPUs in a placement group of their own, so ``max_concurrent x (trial_cpus + workers x
   cpus_per_worker)`` must fit or trials wait for each other forever. ``max_concurrent``
   defaults to what fits; a trial that can never be placed fails at once, saying what it needs.
3. Run Tune (:func:`ldp.jobs.sweep_trial.run_trial` per trial; ASHA on the periodic validation
   loss when asked) in an experiment folder named after the job id in the storage path
   (``~/.ldp/runs`` unless the job says otherwise). ``ldp_sweep.json`` in that folder names the
   sweep; ``--resume`` finds the newest unfinished experiment of the same sweep name and
   continues it with ``Tuner.restore``: finished trials are kept, unfinished ones resume.
4. Print the results table, save it beside the experiment, publish the best adapter and the
   sweep record (:mod:`ldp.jobs.sweep_results`), then mark the experiment finished.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ldp.errors import LdpError, UsageError

__all__ = ["MARKER", "execute", "find_resumable", "plan_resources", "sweep_spec"]

MARKER = "ldp_sweep.json"
"""In an experiment folder: the sweep's name, job id and plan (written when it starts)."""
DONE_MARKER = "ldp_sweep_done.json"
"""In an experiment folder: written once the sweep published its results."""


def sweep_spec(plan: Any, *, resume: bool = False) -> dict[str, Any]:
    """The job spec ``ldp sweep`` records for ``plan`` (a :class:`SweepPlan` or its dict)."""
    data = plan if isinstance(plan, dict) else plan.as_dict()
    return {"kind": "sweep", "task": data["job"]["task"], "name": data["name"], "plan": data,
            "resume": bool(resume)}


def _storage(plan: dict[str, Any]) -> str:
    from ldp.jobs.runner import default_storage_path

    return str(plan["job"].get("storage_path") or default_storage_path())


def _fs(storage: str):
    import pyarrow.fs

    if "://" in storage and not storage.startswith("file://"):
        return pyarrow.fs.FileSystem.from_uri(storage)
    path = os.path.abspath(os.path.expanduser(storage.removeprefix("file://")))
    return pyarrow.fs.LocalFileSystem(), path


def _read_json(fs, path: str) -> dict[str, Any] | None:
    import pyarrow.fs

    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        try:
            return json.loads(f.read().decode())
        except ValueError:
            return None


def _write_json(fs, path: str, data: dict[str, Any]) -> None:
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(data, indent=2, default=str).encode())


def find_resumable(storage: str, name: str) -> tuple[str, dict[str, Any]] | None:
    """The newest unfinished experiment of sweep ``name`` in ``storage``: ``(experiment, marker)``."""
    import pyarrow.fs

    fs, root = _fs(storage)
    found = []
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True)):
        if info.type != pyarrow.fs.FileType.Directory:
            continue
        marker = _read_json(fs, f"{info.path}/{MARKER}")
        if not marker or marker.get("name") != name:
            continue
        if fs.get_file_info(f"{info.path}/{DONE_MARKER}").type == pyarrow.fs.FileType.File:
            continue
        found.append((float(marker.get("created", 0)), info.base_name, marker))
    if not found:
        return None
    _, experiment, marker = max(found)
    return experiment, marker


def plan_resources(plan: dict[str, Any], cluster_cpus: float) -> tuple[int, float]:
    """``(max_concurrent, cpus per trial)`` for a cluster with ``cluster_cpus`` CPUs.

    Raises :class:`LdpError` when one trial can never be placed, :class:`UsageError` when the
    grid's ``max_concurrent`` asks for more trials at once than the CPUs hold."""
    res = plan["config"]["resources_per_trial"]
    workers, per_worker, driver = int(res["workers"]), float(res["cpus_per_worker"]), float(res["trial_cpus"])
    per_trial = driver + workers * per_worker
    need = (f"{per_trial:g} CPUs per trial ({driver:g} for the trial's driver + {workers} "
            f"worker(s) x {per_worker:g})")
    fits = math.floor(cluster_cpus / per_trial + 1e-9)
    if fits < 1:
        raise LdpError(f"a trial needs {need}; the cluster has {cluster_cpus:g} CPUs: lower "
                       f"resources_per_trial or use a bigger cluster (--address)")
    wanted = plan["config"].get("max_concurrent")
    if wanted is not None and wanted > fits:
        raise UsageError(
            f"max_concurrent {wanted} needs {wanted * per_trial:g} CPUs ({need}); the cluster has "
            f"{cluster_cpus:g}, enough for {fits} at once (trials would wait on each other forever)"
        )
    return int(wanted or min(fits, plan["trials"])), per_trial


def _param_space(plan: dict[str, Any]) -> dict[str, Any]:
    from ray import tune

    make = {
        "grid": tune.grid_search, "choice": tune.choice,
        "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
        "randint": lambda v: tune.randint(*v),
    }
    return {key: make[kind](values) for key, dist in plan["search"].items()
            for kind, values in dist.items()}


def _ensure_base(plan: dict[str, Any], log) -> str:
    from ldp.config import build
    from ldp.jobs.adapter_job import ensure_base
    from ldp.jobs.spec import JobSpec

    return ensure_base(build(JobSpec, plan["job"]), log=log)


def execute(spec: dict[str, Any], job_id: str, *, log=print) -> dict[str, Any]:
    """Run the sweep ``spec`` describes (see the module docstring) and return the job result."""
    from ldp.jobs.sweep_grid import SweepPlan

    if not isinstance(spec.get("plan"), dict):
        raise UsageError("a sweep job spec needs its plan (made by `ldp sweep`)")
    plan = SweepPlan.from_dict(spec["plan"]).as_dict()
    storage = _storage(plan)
    experiment = job_id
    if spec.get("resume"):
        found = find_resumable(storage, plan["name"])
        if found is None:
            raise UsageError(f"no unfinished run of sweep {plan['name']!r} in {storage} to resume")
        experiment, marker = found
        plan = SweepPlan.from_dict(marker["plan"]).as_dict()  # the grid it started with
        log(f"[ldp] resuming sweep {plan['name']} (experiment {experiment}, started by "
            f"{marker.get('job_id')})")
    started = time.perf_counter()
    base = _ensure_base(plan, log)

    from ldp.cluster import check_fits, cluster_resources, connect

    handle = connect()
    try:
        res = plan["config"]["resources_per_trial"]
        check_fits(int(res["workers"]), float(res["cpus_per_worker"]))  # one node holds a worker
        concurrent, per_trial = plan_resources(plan, cluster_resources().cpus)
        log(f"[ldp] sweep {plan['name']}: {plan['trials']} trial(s), {concurrent} at a time "
            f"({per_trial:g} CPUs each), metric {plan['metric']} ({plan['mode']}), scheduler "
            f"{plan['config']['scheduler']['type']}; Tune experiment {storage}/{experiment}")
        results = _run_tune(plan, experiment, storage, base, concurrent, spec.get("resume"),
                            job_id)
        done, listed = _trial_states(storage, experiment)
        if done < listed or listed < plan["trials"]:
            # Ctrl-C: Tune saved its state and stopped the trials; the saved state still lists
            # them as running or pending, which is what --resume continues.
            log(f"[ldp] sweep {plan['name']} interrupted with {done} of {plan['trials']} "
                f"trial(s) done; continue it with: ldp sweep GRID.yaml --resume "
                f"--name {plan['name']}")
            raise KeyboardInterrupt
    finally:
        handle.shutdown()
    wall = time.perf_counter() - started
    return _finish(plan, results, job_id, experiment, storage, base, wall, log)


def _experiment_uri(storage: str, experiment: str) -> str:
    if "://" in storage and not storage.startswith("file://"):
        return f"{storage.rstrip('/')}/{experiment}"
    _, root = _fs(storage)
    return f"{root.rstrip('/')}/{experiment}"


def _trial_states(storage: str, experiment: str) -> tuple[int, int]:
    """``(finished or failed, listed)`` trials in Tune's saved experiment state."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(_experiment_uri(storage, experiment))
    done = sum(t.status in ("TERMINATED", "ERROR") for t in analysis.trials)
    return done, len(analysis.trials)


def _run_tune(plan, experiment: str, storage: str, base: str, concurrent: int, resume: bool,
              job_id: str):
    from ray import tune

    from ldp.jobs.sweep_progress import SweepProgress
    from ldp.jobs.sweep_trial import run_trial

    # Save Tune's experiment state every few seconds (default: 10 s or more), so a killed driver
    # loses at most the last moments: a finished trial is then never run again on --resume.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, plan=plan, experiment=experiment, base=base),
        {"cpu": float(plan["config"]["resources_per_trial"]["trial_cpus"])},
    )
    fs, root = _fs(storage)
    exp_path = f"{root.rstrip('/')}/{experiment}"
    if resume:
        uri = _experiment_uri(storage, experiment)
        if not tune.Tuner.can_restore(uri):
            raise LdpError(f"experiment {uri} has no Tune state to resume from")
        tuner = tune.Tuner.restore(
            uri, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        _write_json(fs, f"{exp_path}/{MARKER}", {
            "name": plan["name"], "job_id": job_id, "created": time.time(), "plan": plan,
        })
        sched = plan["config"]["scheduler"]
        scheduler = None
        if sched["type"] == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(
                # max_t past the last step: ASHA stops a trial that reaches max_t, which would
                # cut it off before its evaluation report.
                time_attr="step", metric=sched["metric"], mode=sched["mode"],
                max_t=int(plan["max_steps"]) + 1,
                grace_period=int(sched["grace_period"] or plan["report_every"]),
                reduction_factor=float(sched["reduction_factor"]),
            )
        from ray.tune.search.basic_variant import BasicVariantGenerator

        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(plan),
            tune_config=tune.TuneConfig(
                num_samples=int(plan["config"]["num_samples"]),
                scheduler=scheduler,
                # The generator's own limit: Tune ignores max_concurrent_trials with a generator.
                search_alg=BasicVariantGenerator(
                    max_concurrent=concurrent, random_state=int(plan["config"]["seed"])
                ),
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=experiment,
                storage_path=storage,
                verbose=0,
                callbacks=[SweepProgress(int(plan["trials"]))],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    return tuner.fit()


def _values(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def _finish(plan, results, job_id, experiment, storage, base, wall, log) -> dict[str, Any]:
    from ldp.jobs import sweep_results as sr

    rows = sr.collect(results, plan)
    best = sr.best_row(rows, plan["mode"])
    table = sr.format_table(rows, plan, best)
    log(f"\nsweep {plan['name']}: {len(rows)} trial(s) in {wall:.1f}s "
        f"(* best by {plan['metric']}, {plan['mode']})\n{table}")
    fs, root = _fs(storage)
    exp_path = f"{root.rstrip('/')}/{experiment}"
    if "://" not in storage or storage.startswith("file://"):
        sr.write_table(rows, plan, Path(exp_path))
        log(f"table saved in {exp_path}/results.csv and results.json")
    if best is None:
        errors = [r.error for r in rows if r.error]
        raise LdpError(f"sweep {plan['name']}: no trial finished"
                       + (f"; first error: {errors[0]}" if errors else ""))
    adapter_ref, sweep_ref = sr.publish(
        rows, best, plan, job_id=job_id, experiment=experiment, base=base, storage_path=storage,
        wall_seconds=wall,
    )
    _write_json(fs, f"{exp_path}/{DONE_MARKER}", {"job_id": job_id, "sweep": sweep_ref,
                                                 "best": adapter_ref, "ended": time.time()})
    over = sr.overhead(rows, wall)
    log(f"best: trial {best.trial} ({_values(best.params)}) {plan['metric']}={best.metric:.4f}")
    log(f"published {adapter_ref} and {sweep_ref}")
    log(f"wall {wall:.1f}s; training loops {over['train_loop_seconds']}s; overhead per trial "
        f"beyond its training loop {over['per_trial_seconds']}s "
        f"({over['per_trial_excluding_eval_seconds']}s without its evaluation)")
    return {
        "ref": sweep_ref,
        "best": adapter_ref,
        "metrics": {plan["metric"]: best.metric, "trials": len(rows),
                    "finished": sum(r.status == "finished" for r in rows),
                    "stopped_early": sum(r.stopped_early for r in rows),
                    "wall_seconds": round(wall, 1)},
        "best_params": best.params,
        "trials": [{"trial": r.trial, "params": r.params, "status": r.status,
                    "metric": r.metric, "val_loss": r.val_loss, "steps": r.steps,
                    "seconds": r.seconds} for r in rows],
        "overhead": over,
        "experiment": f"{storage}/{experiment}",
    }

"""Job kind ``report``: the paper's tables and figures at small scale, from this project's own runs.

1. Validate the spec and every training it implies (:mod:`ldp.jobs.report_spec`).
2. Resolve the base once (building the default ``tiny`` base on first use), start one Ray.
3. Run or reuse every training (:mod:`ldp.jobs.report_runs`, through ``ldp.jobs.compare``).
4. Measure what each chosen section needs (:mod:`ldp.jobs.report_measure`; composition through
   the ``train-all`` job, which reuses the main run's adapters and trains only the router).
5. Write ``REPORT.md``, ``results.json`` and the figures (:mod:`ldp.jobs.report_markdown`).

A section that fails, or whose inputs are missing, is written with the reason; the others go on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ldp.config import apply_overrides, to_dict
from ldp.errors import LdpError, first_line

__all__ = ["composition_pipeline", "execute"]


def _empty(why: str) -> dict[str, Any]:
    return {"status": "empty", "why": why}


def _main_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    main = next((r for r in runs if r["section"] == "methods"), None)
    return main["rows"] if main else []


def _refs(rows: list[dict[str, Any]], method: str) -> dict[str, str]:
    return {r["task"]: r["ref"] for r in rows if r["method"] == method and r.get("ref") and not r.get("error")}


def _budget(spec) -> str:
    from ldp.jobs.report_spec import shared_train
    from ldp.training.recipes.adapter import validate

    data = apply_overrides(shared_train(spec), {"task": spec.tasks[0]})
    if spec.steps is not None:
        data = apply_overrides(data, {"loop.max_steps": spec.steps})
    cfg = validate(data)
    limit = f"at most {cfg.train_limit} training examples" if cfg.train_limit else "the whole training split"
    own = "".join(f", {n} on {t}" for t, n in spec.task_steps.items())
    return (f"{cfg.loop.max_steps} steps{own} of batch {cfg.loop.batch_size}, {limit}, seed {cfg.loop.seed}, "
            f"each method's default learning rate unless set, {spec.eval_limit or 'all'} evaluation examples per run")


# -- section data ---------------------------------------------------------------------------------
def _methods(spec, runs, ctx) -> dict[str, Any]:
    from ldp.jobs.compare import summarise

    rows = [r for r in _main_rows(runs) if r["task"] in spec.tasks]
    if not rows:
        return _empty("the main methods x tasks run has no cells")
    tasks = [t for t in spec.tasks if any(r["task"] == t for r in rows)]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    skipped = {t: "no data in the mirror" for t in spec.tasks if t not in tasks}
    return {"status": "ok", "compare": {"tasks": tasks, "methods": methods, "split": spec.split, "rows": rows,
                                        "summary": summarise(rows, tasks, methods), "skipped": skipped}}


def _efficiency(spec, runs, ctx) -> dict[str, Any]:
    from ldp.jobs.report_measure import efficiency
    from ldp.jobs.report_runs import main_cells

    if spec.efficiency is None:
        return _empty("no `efficiency` settings in the config")
    methods = main_cells(spec)[1] or ["lora-diffusion", "weight-lora"]
    return {"status": "ok", "bench": efficiency(methods, spec.efficiency, ctx["base"], spec.registry, log=ctx["log"])}


def _forgetting(spec, runs, ctx) -> dict[str, Any]:
    from ldp.jobs.report_measure import forgetting

    if spec.forgetting is None:
        return _empty("no `forgetting` settings in the config")
    task = spec.forgetting.task or spec.tasks[0]
    rows = [r for r in _main_rows(runs) if r["task"] == task]
    if not rows:
        return _empty(f"no run on {task}")
    adapters = {r["method"]: (r["ref"] if r.get("ref") and not r.get("error") else {"error": r.get("error", "no adapter")})
                for r in rows}
    out = forgetting(spec.forgetting, ctx["base"], adapters, spec.registry, spec.data_dir, seed=spec.seed, log=ctx["log"])
    return {"status": "ok", "task": task, **out}


def _ablations(spec, runs, ctx) -> dict[str, Any]:
    if spec.ablations is None:
        return _empty("no `ablations` settings in the config")
    variants = [r for r in runs if r["section"] == "ablations"]
    if not variants:
        return _empty("no ablation variant was planned (lora-diffusion only)")
    return {"status": "ok", "variants": variants}


def _effective_rank(spec, runs, ctx) -> dict[str, Any]:
    from ldp.jobs.report_measure import effective_ranks

    adapters = _refs(_main_rows(runs), "lora-diffusion")
    if not adapters:
        return _empty("no lora-diffusion adapter in the main run (method not chosen, or its runs failed)")
    return {"status": "ok", "rows": effective_ranks(adapters, spec.registry, log=ctx["log"])}


def composition_pipeline(spec, base: str, tasks: list[str]) -> dict[str, Any]:
    """The ``train-all`` spec of the composition section. Its adapter jobs resolve to the same
    job specs as the main run's lora-diffusion cells (same base, steps, recipe overrides and
    evaluation settings), so the pipeline reuses those adapters and trains only the router."""
    from ldp.jobs.report_spec import shared_train

    cfg = spec.composition
    pipeline = {
        "kind": "train-all", "size": spec.size, "tasks": tasks, "method": "lora-diffusion",
        "name": f"report-{spec.size}", "base": base, "steps": spec.steps, "router_steps": cfg.router_steps,
        "task_steps": spec.task_steps_within(tasks),
        "registry": spec.registry, "data_dir": spec.data_dir, "storage_path": spec.storage_path,
        "train": apply_overrides(shared_train(spec), {"eval.split": spec.split, "eval.limit": spec.eval_limit}),
        "router": dict(cfg.router), "compare": True, "eval_limit": cfg.eval_limit,
    }
    return {k: v for k, v in pipeline.items() if v is not None}


def _composition(spec, runs, ctx) -> dict[str, Any]:
    if spec.composition is None:
        return _empty("no `composition` settings in the config (no router, no bundle)")
    adapters = _refs(_main_rows(runs), "lora-diffusion")
    tasks = [t for t in spec.tasks if t in adapters]
    if len(tasks) < 2:
        return _empty("composition needs lora-diffusion adapters for at least two tasks")
    pipeline = composition_pipeline(spec, ctx["base"], tasks)
    if spec.published_only:
        return _published_composition(spec, pipeline, adapters, tasks, ctx)
    from ldp.jobs import records
    from ldp.jobs.launch import run_job

    job_id = f"{ctx['job_id']}-composition"
    records.create_job(pipeline, job_id=job_id, label="composition")
    out = run_job(job_id, spec=pipeline)
    if not out.get("comparison"):
        return _empty("the composition pipeline returned no comparison")
    return {"status": "ok", "bundle": out["ref"], "router": out["router"], "comparison": out["comparison"]}


def _published_composition(spec, pipeline, adapters, tasks, ctx) -> dict[str, Any]:
    from ldp.jobs.router_job import find_published
    from ldp.jobs.train_all import _compare
    from ldp.jobs.train_all_spec import router_job_spec, validate_pipeline
    from ldp.store import Registry

    pspec = validate_pipeline(pipeline)
    chosen = {t: adapters[t] for t in tasks}
    router = find_published(Registry(spec.registry), router_job_spec(pspec, ctx["base"], chosen))
    if router is None:
        return _empty("no router published for these adapters (the report was made from published runs only)")
    comparison = _compare(pspec, chosen, ctx["base"], router, ctx["log"])
    return {"status": "ok", "bundle": "(adapters and router from the registry)", "router": router,
            "comparison": comparison}


def _data_efficiency(spec, runs, ctx) -> dict[str, Any]:
    if spec.data_efficiency is None:
        return _empty("no `data_efficiency` settings in the config")
    points = []
    for v in runs:
        if v["section"] != "data_efficiency":
            continue
        for r in v["rows"]:
            points.append({"task": r["task"], "method": r["method"], "fraction": v["params"]["fraction"],
                           "train_limit": v["params"]["train_limit"], "score": r.get("score"), "n": r.get("n"),
                           "ref": r.get("ref"), **({"error": r["error"]} if r.get("error") else {})})
    if not points:
        return _empty("no data-efficiency run was planned")
    return {"status": "ok", "points": points}


def _trajectories(spec, runs, ctx) -> dict[str, Any]:
    from ldp.jobs.report_measure import trajectories
    from ldp.jobs.report_runs import trajectory_tasks

    if spec.trajectories is None:
        return _empty("no `trajectories` settings in the config")
    adapters = _refs(_main_rows(runs), "lora-diffusion")
    tasks = [t for t in trajectory_tasks(spec) if t in adapters]
    if len(tasks) < 2:
        return _empty("trajectories need lora-diffusion adapters for at least two tasks")
    out = trajectories(spec.trajectories, tasks, adapters, ctx["base"], spec.registry, spec.data_dir,
                       spec.split, log=ctx["log"])
    return {"status": "ok", **out}


def _loss_curves(spec, runs, ctx) -> dict[str, Any]:
    from ldp.jobs.report_runs import loss_history
    from ldp.store import Registry

    reg = Registry(spec.registry)
    seen, curves = set(), []
    for v in runs:
        for r in v["rows"]:
            key = r.get("ref") or f"{v['key']}/{r['task']}/{r['method']}"
            if key in seen:
                continue
            seen.add(key)
            label = r["method"] if v["section"] == "methods" else f"{r['method']} {v['label']}"
            if r.get("error"):
                curves.append({"task": r["task"], "label": label, "error": r["error"]})
                continue
            curves.append({"task": r["task"], "label": label, "ref": r.get("ref"),
                           **loss_history(reg, r, spec.storage_path)})
    if not curves:
        return _empty("no training run in this report")
    return {"status": "ok", "runs": curves}


SECTION_DATA = {
    "methods": _methods, "efficiency": _efficiency, "forgetting": _forgetting, "ablations": _ablations,
    "effective_rank": _effective_rank, "composition": _composition, "data_efficiency": _data_efficiency,
    "trajectories": _trajectories, "loss_curves": _loss_curves,
}


def _resolve_base(spec, log) -> str:
    from ldp.bases import is_registry_ref
    from ldp.jobs.adapter_job import ensure_base
    from ldp.jobs.spec import JobSpec
    from ldp.store import Registry

    job = JobSpec(size=spec.size, base=spec.base, registry=spec.registry, data_dir=spec.data_dir)
    if spec.published_only and is_registry_ref(job.base_ref):
        return str(Registry(spec.registry).resolve(job.base_ref))  # never builds one
    return ensure_base(job, log=log)


def execute(spec_dict: dict[str, Any], job_id: str, *, log=print) -> dict[str, Any]:
    from ldp.cluster import connect
    from ldp.jobs.report_markdown import write_report
    from ldp.jobs.report_runs import planned_variants, run_variants
    from ldp.jobs.report_spec import validate_report

    spec = validate_report(spec_dict)
    started = time.perf_counter()
    base = _resolve_base(spec, log)
    log(f"[ldp] report: sections {', '.join(spec.sections)} on {base} -> {spec.out}")
    ctx = {"base": base, "log": log, "job_id": job_id}
    sections: dict[str, Any] = {}
    handle = None if spec.published_only else connect()  # nothing trained: no Ray needed
    try:
        runs = run_variants(spec, planned_variants(spec), job_id, base, log=log)
        for key in spec.sections:
            log(f"[ldp] report: section {key}")
            try:
                sections[key] = SECTION_DATA[key](spec, runs, ctx)
            except Exception as exc:  # noqa: BLE001 - a failed section is written with its reason
                sections[key] = {"status": "failed", "why": f"failed: {first_line(exc)}"}
                log(f"[ldp] report: section {key} failed: {first_line(exc)}")
    finally:
        if handle is not None:
            handle.shutdown()
    results = {
        "meta": {
            "title": spec.title, "base": base, "size": spec.size, "split": spec.split,
            "eval_limit": spec.eval_limit, "steps": spec.steps, "seed": spec.seed, "budget": _budget(spec),
            "sections": spec.sections, "job_id": job_id, "command": "ldp report" + (f" --config {spec.source}" if spec.source else ""),
            "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": round(time.perf_counter() - started, 1),
        },
        "sections": sections,
        "runs": runs,
        "spec": to_dict(spec),
    }
    if all(s.get("status") != "ok" for s in sections.values()):
        why = next(iter(sections.values())).get("why", "no results")
        write_report(results, Path(spec.out))
        raise LdpError(f"no section has results ({why}); see {spec.out}/REPORT.md")
    path = write_report(results, Path(spec.out))
    log(f"[ldp] report written: {path}")
    held = [c for c in results["claims"] if c["holds"] is True]
    return {"ref": None, "report": str(path), "seconds": results["meta"]["seconds"],
            "metrics": {"claims_held": len(held), "claims_checked": sum(c["holds"] is not None for c in results["claims"])}}

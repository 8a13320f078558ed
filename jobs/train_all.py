"""Job kind ``train-all``: every task adapter, then the router, then a bundle.

1. Resolve the base once to a concrete version (building the default ``tiny`` base on first use),
   so every child trains on the same one.
2. Skip tasks without local data (one line each, when a local mirror is in use).
3. For each task: reuse an adapter already published for the same resolved job spec
   (:func:`ldp.jobs.train_all_spec.spec_hash`), else run its adapter job as a Ray task. Each
   child is an ordinary job with its own record (``ldp status``/``ldp logs`` work on it, and the
   Ray dashboard lists it as ``adapter:<task>``). Ray places the tasks; the number in flight is
   capped by ``max_parallel`` and by how many adapter worker groups the cluster's CPUs hold at
   once (a Train worker group that cannot be placed waits and then fails its start, so the
   pipeline never hands Ray more than it can place). A failed task is reported with its error;
   the others go on.
4. Train the router over the adapters that exist (a ``router`` child job, reused when one was
   published for the same adapters and settings). With ``router.train_adapters`` the router job
   also publishes the adapters it fine-tuned as new versions; the bundle names those.
5. Optionally evaluate the composition per task (router / uniform / oracle / base; Table 11).
6. Publish ``bundles/<name>@N``: the base ref and digest, each adapter ref, the router ref, the
   per-task metrics and the pipeline spec. No router, no bundle.

A killed pipeline rerun with the same spec reuses every adapter it had published, and resumes
each child that had committed a checkpoint from that checkpoint (the child keeps its job id).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from ldp.config import to_dict
from ldp.errors import LdpError

__all__ = ["execute", "find_interrupted_child", "find_published_adapter", "publish_bundle"]


def find_published_adapter(reg, task: str, method: str, want: str) -> str | None:
    """The newest ``adapters/<task>/<method>@N`` published for a job spec that hashes to
    ``want``: by the ``spec_hash`` in its registry metadata, else recomputed from the
    ``job_spec.yaml`` it was published with (so adapters published before a change to how the
    hash is computed still count). An adapter the router job fine-tuned (metadata hash
    ``tuned-...``) is never the plain adapter of any spec."""
    from ldp.errors import NotFoundError

    try:
        versions = reg.ls(f"adapters/{task}/{method}")
    except NotFoundError:
        return None
    for info in sorted(versions, key=lambda v: -int(v.ref.version)):
        manifest = reg.open_manifest(info.ref)
        stored = (manifest.metadata or {}).get("spec_hash")
        if stored == want:
            return str(info.ref)
        if str(stored or "").startswith("tuned-") or "job_spec.yaml" not in manifest.files:
            continue
        ran = _published_hash(reg, str(info.ref), (manifest.base or {}).get("ref"), manifest.files)
        if ran == want:
            return str(info.ref)
    return None


_HASHES: dict[tuple[str, str], str | None] = {}
"""Spec hashes recomputed from published ``job_spec.yaml`` files, by (registry, ref): a published
version never changes, and a grid looks every version up once per cell."""


def _published_hash(reg, ref: str, ran_on: str | None, files) -> str | None:
    """The spec hash of the ``job_spec.yaml`` published with ``ref``, which trained on the base
    ``ran_on`` (its manifest's base ref), with the recipe config it ran (``job_config.json``, and
    the method config its ``adapter_config.json`` saved) where they were published: not what
    its spec would resolve to under today's defaults."""
    import yaml

    from ldp.jobs.train_all_spec import spec_hash
    from ldp.methods import get_method

    key = (reg.url, ref)
    if key not in _HASHES:
        try:
            spec = yaml.safe_load(reg.read_bytes(ref, "job_spec.yaml")) or {}
            ran_with = None
            if "job_config.json" in files and "adapter_config.json" in files:
                ran_with = json.loads(reg.read_bytes(ref, "job_config.json"))
                meta = json.loads(reg.read_bytes(ref, "adapter_config.json"))
                ran_with["method_config"] = get_method(meta["ldp_method"]).saved_config(meta)
            _HASHES[key] = spec_hash(spec, ran_on=ran_on, ran_with=ran_with)
        except Exception:  # noqa: BLE001 - an unreadable old spec just does not match
            _HASHES[key] = None
    return _HASHES[key]


def find_interrupted_child(task: str, want: str) -> str | None:
    """The newest local adapter job for ``task`` whose resolved spec hashes to ``want`` and that
    ended without a result (FAILED or STOPPED: a killed pipeline's children become FAILED once their
    process is gone) after committing a checkpoint. Rerunning it under its own id resumes training
    from that checkpoint instead of step 0."""
    from ldp.jobs import records
    from ldp.jobs.train_all_spec import spec_hash

    for record in records.list_jobs():  # newest first
        if record.label != task or record.kind != "adapter" or record.address is not None:
            continue
        if record.state not in ("FAILED", "STOPPED"):
            continue
        try:
            same = spec_hash(records.read_spec(record.job_id)) == want
        except Exception:  # noqa: BLE001 - an unreadable old record just does not match
            same = False
        if same and records.last_checkpoint_step(record.job_id) is not None:
            return record.job_id
    return None


def _has_data(task: str, data_dir: str | None) -> str | None:
    """None when ``task`` has train and validation data, else why not (one line)."""
    from ldp.data.loading import mirror_file, resolve_data_dir

    location = resolve_data_dir(data_dir)
    if location is None:
        return None  # the hub: reachable or not, the child job reports it
    missing = [s for s in ("train", "validation") if mirror_file(task, s, location) is None]
    if missing:
        return f"no {'/'.join(missing)} split in the data mirror {location}"
    return None


class _Progress:
    """The task -> state -> metric table, printed whenever something changes."""

    def __init__(self, tasks: list[str], log) -> None:
        self.rows = {t: {"state": "pending", "metric": "", "ref": "", "job": ""} for t in tasks}
        self.log = log

    def set(self, task: str, **changes: Any) -> None:
        self.rows.setdefault(task, {"state": "", "metric": "", "ref": "", "job": ""}).update(changes)
        self.show()

    def show(self) -> None:
        width = max(len(t) for t in self.rows)
        lines = ["[ldp] train-all progress:"]
        for task, r in self.rows.items():
            detail = "  ".join(x for x in (r["metric"], r["ref"], r["job"]) if x)
            lines.append(f"  {task:<{width}}  {r['state']:<9} {detail}")
        self.log("\n".join(lines))


def _metric_text(result: dict[str, Any]) -> str:
    ev = result.get("evaluation") or {}
    primary = ev.get("primary")
    if primary and primary in (ev.get("metrics") or {}):
        return f"{primary}={ev['metrics'][primary]:.3f}"
    return ""


def _run_adapter_jobs(spec, todo: dict[str, dict], parent: str, progress: _Progress, log) -> tuple[dict, dict]:
    """Run the child adapter jobs side by side as Ray tasks; ``({task: result}, {task: error})``."""
    from ldp.jobs import records
    from ldp.jobs.children import run_children, worker_group_slots
    from ldp.jobs.train_all_spec import spec_hash

    def open_job(task, child: dict[str, Any]) -> str:
        job_id = find_interrupted_child(task, spec_hash(child))
        if job_id:
            step = records.last_checkpoint_step(job_id)
            log(f"[ldp] {task}: resuming interrupted job {job_id} from its step-{step} checkpoint")
            records.reopen_job(job_id)
        else:
            job_id = f"{parent}-{task}"
            records.create_job(child, job_id=job_id, label=task)
        return job_id

    def on_done(task, job_id: str, result: dict | None, error: str | None) -> None:
        if error is not None:
            progress.set(task, state="FAILED", metric=error[:80])
        else:
            progress.set(task, state="trained", metric=_metric_text(result), ref=result.get("ref", ""))

    limit = min(spec.max_parallel or 10**6, worker_group_slots(spec.workers))
    log(f"[ldp] {len(todo)} adapter job(s), at most {limit} at once")
    return run_children(
        list(todo.items()), limit=limit, workers=spec.workers, open_job=open_job,
        ray_name=lambda task: f"adapter:{task}",
        on_start=lambda task, job_id: progress.set(task, state="running", job=job_id), on_done=on_done,
    )


def execute(spec_dict: dict[str, Any], job_id: str, *, log=print) -> dict[str, Any]:
    from ldp.cluster import connect
    from ldp.jobs.adapter_job import ensure_base
    from ldp.jobs.spec import JobSpec
    from ldp.jobs.train_all_spec import child_spec, spec_hash, validate_pipeline
    from ldp.store import Registry

    spec = validate_pipeline(spec_dict)
    started = time.perf_counter()
    reg = Registry(spec.registry)
    progress = _Progress(spec.tasks, log)

    tasks = []
    for task in spec.tasks:
        why = _has_data(task, spec.data_dir)
        if why:
            log(f"[ldp] skipping {task}: {why}")
            progress.rows.pop(task, None)
        else:
            tasks.append(task)
    if not tasks:
        raise LdpError("no task has data to train on")

    base = ensure_base(JobSpec(**{k: v for k, v in child_spec(spec, tasks[0]).items() if k != "kind"}), log=log)
    log(f"[ldp] base: {base}")
    adapters: dict[str, str] = {}
    metrics: dict[str, dict[str, Any]] = {}
    todo: dict[str, dict] = {}
    for task in tasks:
        child = child_spec(spec, task, base)
        found = find_published_adapter(reg, task, spec.method, spec_hash(child))
        if found:
            adapters[task] = found
            ev = (reg.read_json(found, "metrics.json") or {}).get("evaluation") or {}
            metrics[task] = {"adapter": ev}
            progress.rows[task].update(state="reused", ref=found, metric=_metric_text({"evaluation": ev}))
            log(f"[ldp] {task}: reusing {found} (published for the same job spec)")
        else:
            todo[task] = child
    progress.show()

    handle = connect()
    try:
        done, failed = _run_adapter_jobs(spec, todo, job_id, progress, log) if todo else ({}, {})
        for task, result in done.items():
            adapters[task] = result["ref"]
            metrics[task] = {"adapter": result.get("evaluation") or {}}
        ordered = {t: adapters[t] for t in tasks if t in adapters}
        if not ordered:
            raise LdpError("no adapter trained: " + "; ".join(f"{t}: {e}" for t, e in failed.items()))
        router_ref, routed = _router(spec, base, ordered, job_id, reg, progress, log)
    finally:
        handle.shutdown()
    if routed != ordered:  # router.train_adapters: the bundle names the fine-tuned versions
        for task, ref in routed.items():
            metrics.setdefault(task, {})["tuned_from"] = ordered[task]
        ordered = {t: routed[t] for t in ordered}

    comparison = None
    if spec.compare:
        comparison = _compare(spec, ordered, base, router_ref, log)
    bundle_ref = publish_bundle(spec, reg, base, ordered, router_ref, metrics, failed, comparison, job_id)
    missing = [t for t in spec.tasks if t not in ordered]
    seconds = round(time.perf_counter() - started, 1)
    log(f"[ldp] published {bundle_ref} ({len(ordered)} adapters, router {router_ref}) in {seconds}s"
        + (f"; missing: {', '.join(missing)}" if missing else ""))
    if comparison:
        from ldp.evaluation.composition import format_comparison

        log(format_comparison(comparison))
    return {
        "ref": bundle_ref, "router": router_ref, "adapters": ordered, "failed": failed,
        "missing": missing, "seconds": seconds, "comparison": comparison,
        "metrics": _headline(comparison),
    }


def _router(spec, base: str, adapters: dict[str, str], parent: str, reg, progress: _Progress,
            log) -> tuple[str, dict[str, str]]:
    """``(router ref, {task: adapter ref the router goes with})``: the adapters given, or their
    fine-tuned new versions when ``router.train_adapters`` is set."""
    from ldp.jobs import records
    from ldp.jobs.launch import run_job
    from ldp.jobs.router_job import find_published, routed_adapters
    from ldp.jobs.train_all_spec import router_job_spec

    rspec = router_job_spec(spec, base, adapters)
    found = find_published(reg, rspec)
    if found:
        progress.set("(router)", state="reused", ref=found)
        log(f"[ldp] router: reusing {found} (published for the same adapters and settings)")
        return found, {**adapters, **routed_adapters(reg, found)}
    job_id = f"{parent}-router"
    records.create_job(rspec, job_id=job_id, label="router")
    progress.set("(router)", state="running", job=job_id)
    try:
        result = run_job(job_id)
    except Exception as exc:
        progress.set("(router)", state="FAILED", metric=str(exc).splitlines()[0][:80])
        raise LdpError(f"the router job {job_id} failed, no bundle published: {str(exc).splitlines()[0]}") from exc
    progress.set("(router)", state="trained", ref=result["ref"])
    return result["ref"], {**adapters, **(result.get("adapters") or {})}


def _compare(spec, adapters: dict[str, str], base: str, router: str, log) -> dict[str, Any] | None:
    from ldp.evaluation.composition import compare, load_bundle
    from ldp.jobs.train_all_spec import comparison_eval_settings

    with tempfile.TemporaryDirectory(prefix="ldp-bundle-") as tmp:
        folder = Path(tmp)
        (folder / "bundle.json").write_text(json.dumps({"base": {"ref": base}, "adapters": adapters, "router": router}))
        bundle = load_bundle(str(folder), spec.registry)
    log(f"[ldp] evaluating the composition on {len(adapters)} task(s) (router, uniform, oracle, base)")
    return compare(bundle, list(adapters), data_dir=spec.data_dir, limit=spec.eval_limit,
                   log=lambda m: log(f"[ldp]   {m}"), **comparison_eval_settings(spec, base))


def _headline(comparison: dict[str, Any] | None) -> dict[str, float]:
    if not comparison:
        return {}
    out = {}
    if "router_accuracy" in comparison:
        out["router_accuracy"] = comparison["router_accuracy"]["overall"]
    for col in ("auto", "uniform", "oracle", "base"):
        vals = [r[col] for r in comparison["rows"] if col in r]
        if vals:
            out[f"mean_{col}"] = sum(vals) / len(vals)
    return out


def publish_bundle(spec, reg, base, adapters, router, metrics, failed, comparison, job_id) -> str:
    """Publish ``bundles/<name>@N``. ``bundle.json`` holds what Serve reads
    (:func:`ldp.serve.bundle.parse_bundle`: ``base``, ``adapters`` {task: ref}, ``router``) plus the
    metrics, the comparison, the failed tasks and the pipeline spec."""
    digest = reg.digest(base) if base.startswith("bases/") else None
    doc = {
        "base": {"ref": base, "digest": digest},
        "tasks": list(adapters),
        "adapters": adapters,
        "router": router,
        "metrics": metrics,
        "comparison": comparison,
        "failed": failed,
        "pipeline": to_dict(spec),
    }
    with tempfile.TemporaryDirectory(prefix=f"ldp-{job_id}-") as tmp:
        folder = Path(tmp)
        (folder / "bundle.json").write_text(json.dumps(doc, indent=2))
        (folder / "metrics.json").write_text(json.dumps({"tasks": metrics, "comparison": comparison}, indent=2))
        ref = reg.publish(
            f"bundles/{spec.bundle_name}", folder, job=job_id,
            base=base if base.startswith("bases/") else None,
            metadata={"tasks": list(adapters), "router": router, "failed": sorted(failed)},
        )
    return str(ref)

"""Job kind ``router``: train the router over published adapters on Ray, publish it.

Spec: ``{"kind": "router", "name": NAME, "config": <router recipe config>, "workers",
"strategy", "registry", "storage_path", "checkpoint_every", "max_failures"}``. The router recipe
(:mod:`ldp.training.recipes.router`) runs through the same Ray Train + DeepSpeed runner as the
adapter jobs; the exported folder is published as ``routers/<name>@N`` with the spec's hash in
its metadata (``train-all`` reuses a router published for the same adapters and settings).

With ``train_adapters`` the recipe also exports the jointly fine-tuned adapters; each is published
as the next version of its own adapter name (``adapters/<task>/<method>@N+1``, never over the
version it started from), before the router, whose config then names those new versions. The
result's ``adapters`` maps each task to the adapter the router goes with.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["execute", "find_published", "publish_router", "routed_adapters"]


def _hash(spec: dict[str, Any]) -> str:
    from ldp.jobs.train_all_spec import spec_hash

    keep = {k: spec.get(k) for k in ("name", "config", "workers", "strategy")}
    return spec_hash(keep)


def find_published(reg, spec: dict[str, Any]) -> str | None:
    """A ``routers/<name>@N`` published from the same spec, newest first, or None."""
    from ldp.errors import NotFoundError

    want = _hash(spec)
    try:
        versions = reg.ls(f"routers/{spec['name']}")
    except NotFoundError:
        return None
    for info in sorted(versions, key=lambda v: -int(v.ref.version)):
        if (reg.open_manifest(info.ref).metadata or {}).get("spec_hash") == want:
            return str(info.ref)
    return None


def routed_adapters(reg, router_ref: str) -> dict[str, str]:
    """Task -> the adapter a published router goes with: the fine-tuned versions it published
    (``train_adapters``), else the adapters it was trained over."""
    meta = reg.open_manifest(router_ref).metadata or {}
    return dict(meta.get("tuned_adapters") or meta.get("adapters") or {})


def _tuned_name(task: str, ref: str, folder: Path) -> str:
    """``adapters/<task>/<method>``: the name the fine-tuned copy of ``ref`` is published under."""
    if ref.startswith("adapters/"):
        from ldp.store.refs import parse_ref

        return f"adapters/{parse_ref(ref).name}"
    from ldp.methods.base import read_adapter_config

    return f"adapters/{task}/{read_adapter_config(folder)['ldp_method']}"


def _publish_tuned(reg, folder: Path, adapters: dict[str, str], job_id: str, base: str | None,
                   router_hash: str, log) -> dict[str, str]:
    """Publish each fine-tuned adapter in ``folder`` as a new version; ``{task: new ref}``."""
    out = {}
    for task, ref in adapters.items():
        src = folder / task
        name = _tuned_name(task, ref, src)
        (src / "metrics.json").write_text(json.dumps({"tuned_from": ref, "tuned_by": job_id}, indent=2))
        # A spec hash of its own: train-all never mistakes it for the adapter it started from.
        new = reg.publish(name, src, job=job_id, base=base,
                          metadata={"spec_hash": f"tuned-{router_hash}-{task}", "tuned_from": ref})
        log(f"published {new} (fine-tuned with the router from {ref})")
        out[task] = str(new)
    return out


def execute(spec: dict[str, Any], job_id: str, *, log=print) -> dict[str, Any]:
    from ldp.jobs.runner import default_storage_path, run_training
    from ldp.store import Registry
    from ldp.store.refs import check_name
    from ldp.training.recipes.router import validate

    check_name(str(spec.get("name") or ""), what="router name")  # before any training
    config = spec["config"]
    cfg = validate(config)
    started = time.perf_counter()
    log(f"job {job_id}: router over {', '.join(cfg.tasks)} on {cfg.base}, "
        f"{cfg.loop.max_steps} steps{' (per phase)' if cfg.per_phase else ''}")
    outcome = run_training(
        "ldp.training.recipes.router",
        config,
        job_id=job_id,
        num_workers=int(spec.get("workers") or 1),
        strategy=str(spec.get("strategy") or "auto"),
        storage_path=spec.get("storage_path") or str(default_storage_path()),
        checkpoint_every=int(spec.get("checkpoint_every") or 50),
        max_failures=int(spec.get("max_failures") or 0),
    )
    train = {k: v for k, v in outcome.metrics.items() if isinstance(v, (int, float))}
    last = outcome.history[-1] if outcome.history else {}
    metrics = {
        "train": train,
        "task_acc_last_step": last.get("task_acc"),
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    reg = Registry(spec.get("registry"))
    published = publish_router(reg, spec, outcome.artifact_dir, metrics, job_id, log=log)
    return {**published, "metrics": {k: v for k, v in train.items() if k in ("step", "loss", "val_loss")}}


def publish_router(reg, spec: dict[str, Any], artifact_dir: str | Path, metrics: dict[str, Any],
                   job_id: str, *, log=print) -> dict[str, Any]:
    """Publish a router recipe's exported folder: first the fine-tuned adapters (when
    ``train_adapters``), as new versions, then ``routers/<name>@N`` naming them.

    Returns ``{"ref": router ref, "adapters": {task: adapter ref the router goes with}}``."""
    from ldp.errors import LdpError
    from ldp.methods.router import ROUTER_CONFIG_NAME
    from ldp.training.recipes.router import TUNED_ADAPTERS_DIR, validate

    cfg = validate(spec["config"])
    with tempfile.TemporaryDirectory(prefix=f"ldp-{job_id}-") as tmp:
        folder = Path(tmp) / "router"
        shutil.copytree(artifact_dir, folder, ignore=shutil.ignore_patterns("ldp_artifact.json"))
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        base = cfg.base if cfg.base.startswith("bases/") else None
        meta = {"spec_hash": _hash(spec), "tasks": cfg.tasks, "adapters": cfg.adapters,
                "per_phase": cfg.per_phase}
        tuned_dir = folder / TUNED_ADAPTERS_DIR
        if cfg.train_adapters:
            if not tuned_dir.is_dir():
                raise LdpError(f"router job {job_id}: train_adapters is set but no fine-tuned adapters were exported")
            concrete = _concrete_refs(reg, cfg.adapters)
            tuned = _publish_tuned(reg, tuned_dir, concrete, job_id, base, _hash(spec), log)
            shutil.rmtree(tuned_dir)  # published on their own; the router folder only names them
            config_path = folder / ROUTER_CONFIG_NAME
            rcfg = json.loads(config_path.read_text())
            rcfg.update(adapters=tuned, tuned_from=concrete)
            config_path.write_text(json.dumps(rcfg, indent=2, sort_keys=True) + "\n")
            meta.update(tuned_adapters=tuned, tuned_from=concrete)
        ref = reg.publish(f"routers/{spec['name']}", folder, job=job_id, base=base, metadata=meta)
    log(f"published {ref}")
    return {"ref": str(ref), "adapters": meta.get("tuned_adapters") or dict(cfg.adapters)}


def _concrete_refs(reg, adapters: dict[str, str]) -> dict[str, str]:
    """Registry references pinned to their version (``@latest`` resolved); folders as given."""
    return {t: str(reg.resolve(r)) if r.startswith("adapters/") else r for t, r in adapters.items()}

"""Job kind ``router``: train the router over published adapters on Ray, publish it.

Spec: ``{"kind": "router", "name": NAME, "config": <router recipe config>, "workers",
"strategy", "registry", "storage_path", "checkpoint_every", "max_failures"}``. The router recipe
(:mod:`ldp.training.recipes.router`) runs through the same Ray Train + DeepSpeed runner as the
adapter jobs; the exported folder is published as ``routers/<name>@N`` with the spec's hash in
its metadata (``train-all`` reuses a router published for the same adapters and settings).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["execute", "find_published"]


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


def execute(spec: dict[str, Any], job_id: str, *, log=print) -> dict[str, Any]:
    from ldp.jobs.runner import default_storage_path, run_training
    from ldp.store import Registry
    from ldp.store.refs import check_name
    from ldp.training.recipes.router import validate

    name = check_name(str(spec.get("name") or ""), what="router name")
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
    with tempfile.TemporaryDirectory(prefix=f"ldp-{job_id}-") as tmp:
        folder = Path(tmp) / "router"
        shutil.copytree(outcome.artifact_dir, folder, ignore=shutil.ignore_patterns("ldp_artifact.json"))
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        base = cfg.base if cfg.base.startswith("bases/") else None
        ref = reg.publish(
            f"routers/{name}", folder, job=job_id, base=base,
            metadata={"spec_hash": _hash(spec), "tasks": cfg.tasks, "adapters": cfg.adapters,
                      "per_phase": cfg.per_phase},
        )
    log(f"published {ref}")
    return {"ref": str(ref), "metrics": {k: v for k, v in train.items() if k in ("step", "loss", "val_loss")}}

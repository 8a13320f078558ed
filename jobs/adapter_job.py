"""Job kind ``adapter``: train one task adapter on Ray, evaluate it, publish it.

1. Resolve the base to a concrete registry version (building the default ``tiny`` base, a MiniLM
   warm start, on first use);
2. train the adapter recipe with Ray Train + DeepSpeed (``ldp.jobs.runner``);
3. evaluate the exported adapter on the validation split in this process;
4. publish adapter + ``metrics.json`` + the resolved job spec to ``adapters/<task>/<method>``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ldp.config import dump_yaml, to_dict

__all__ = ["execute", "ensure_base"]


def ensure_base(spec, log=print, timing: dict[str, float] | None = None) -> str:
    """A concrete base reference (``bases/tiny@3``) or folder for ``spec``. When the tiny base
    has to be built first, ``timing["base_build_seconds"]`` (if given) says how long that took."""
    from ldp.bases import is_registry_ref
    from ldp.errors import NotFoundError
    from ldp.store import Registry

    ref = spec.base_ref
    if not is_registry_ref(ref):
        return ref
    reg = Registry(spec.registry)
    try:
        return str(reg.resolve(ref))
    except NotFoundError:
        if not (spec.size == "tiny" and spec.auto_base and spec.base is None):
            raise
    from ldp.training.recipes.pretrain import PretrainConfig, run_pretrain

    log(f"no {ref} in the registry: building it (MiniLM warm start, {spec.base_steps} steps)")
    started = time.perf_counter()
    cfg = PretrainConfig(size="tiny", init="minilm", corpus="wikitext", data_dir=spec.data_dir)
    cfg.loop.max_steps = spec.base_steps
    cfg.val_blocks = 32
    result = run_pretrain(cfg, registry=spec.registry, job=None, progress=True, log=log)
    if timing is not None:
        timing["base_build_seconds"] = round(time.perf_counter() - started, 2)
    return str(result.ref)


def _train(spec, config: dict[str, Any], job_id: str):
    """The adapter recipe as a Ray Train + DeepSpeed run (:func:`ldp.jobs.runner.run_training`)."""
    from ldp.jobs.runner import default_storage_path, run_training

    return run_training(
        "ldp.training.recipes.adapter",
        config,
        job_id=job_id,
        num_workers=spec.workers,
        strategy=spec.strategy,
        storage_path=spec.storage_path or str(default_storage_path()),
        checkpoint_every=spec.checkpoint_every,
        max_failures=spec.max_failures,
        use_gpu=spec.use_gpu,
        cpus_per_worker=spec.cpus_per_worker,
        deepspeed=spec.deepspeed or None,
    )


def execute(spec_dict: dict[str, Any], job_id: str, *, log=print) -> dict[str, Any]:
    from ldp.bases import load_adapted, load_base_from
    from ldp.evaluation import evaluate_task
    from ldp.jobs.spec import train_config, validate_spec
    from ldp.store import Registry
    from ldp.training.recipes.adapter import scoring_settings, validate

    spec = validate_spec(spec_dict)
    started = time.perf_counter()
    built: dict[str, float] = {}
    base = ensure_base(spec, log=log, timing=built)
    config = train_config(spec, base)
    cfg = validate(config)
    log(f"job {job_id}: {spec.method} adapter for {spec.task} on {base}, "
        f"{cfg.loop.max_steps} steps x {spec.workers} worker(s), strategy {spec.strategy}")
    train_started = time.perf_counter()
    # While Ray starts the workers (one process start at a time) and they train, this process
    # only waits: it loads the evaluation's base meanwhile (measured: ~1.5 s off a job).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ldp-eval-base") as pool:
        base_loading = pool.submit(load_base_from, base, spec.registry)
        outcome = _train(spec, config, job_id)
        train_seconds = time.perf_counter() - train_started
        loaded = base_loading.result()

    model, tokenizer, info = load_adapted(str(outcome.artifact_dir), spec.registry, base, loaded=loaded)
    result = evaluate_task(
        model, tokenizer, spec.task, split=cfg.eval.split, data_dir=spec.data_dir,
        limit=cfg.eval.limit, progress=False, **scoring_settings(cfg),
    )
    evaluation = result.to_dict(base=base)
    timing = {
        "job_seconds": round(time.perf_counter() - started, 2),
        "train_seconds": round(train_seconds, 2),
        "loop_seconds": outcome.metrics.get("loop_seconds"),
        "eval_seconds": round(result.seconds, 2),
        **built,
    }
    metrics = {
        "evaluation": evaluation,
        "train": {k: v for k, v in outcome.metrics.items() if isinstance(v, (int, float))},
        **timing,
        "trainable": model.parameter_counts(),
    }
    with tempfile.TemporaryDirectory(prefix=f"ldp-{job_id}-") as tmp:
        folder = Path(tmp) / "adapter"
        shutil.copytree(outcome.artifact_dir, folder, ignore=shutil.ignore_patterns("ldp_artifact.json"))
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (folder / "job_spec.yaml").write_text(dump_yaml(spec))
        reg = Registry(spec.registry)
        ref = reg.publish(
            f"adapters/{spec.task}/{spec.method}", folder, job=job_id,
            base=base if base.startswith("bases/") else None,
            metadata={"task": spec.task, "method": spec.method, "primary": result.primary,
                      result.primary: result.metrics[result.primary]},
        )
    primary = result.metrics[result.primary]
    log(f"published {ref}: {result.split} {result.primary} = {primary:.2f} (n={result.n})")
    return {"ref": str(ref), "metrics": {result.primary: primary, **result.metrics},
            "evaluation": evaluation, "seconds": timing["job_seconds"], "timing": timing,
            "spec": to_dict(spec)}

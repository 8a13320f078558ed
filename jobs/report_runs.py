"""The training runs a report needs, run (or reused) through ``ldp.jobs.compare``.

Every run is a *variant*: a set of tasks x methods trained under the report's shared budget
with some recipe overrides (an ablation's ``method_config``, a data fraction's ``train_limit``).
A variant executes as ``ldp.jobs.compare`` calls, so each cell is an ordinary adapter job
published to the registry and reused when its resolved job spec was published before. Within one
report a cell shared by two variants (the default lora-diffusion run is also the ablations'
step-adaptive row and the data-efficiency 100 % point) is trained at most once, ``--retrain`` or
not. With ``published_only`` nothing is trained: cells found in the registry are used, the others
say they are not published.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ldp.config import apply_overrides

__all__ = ["Variant", "count_train_examples", "loss_history", "main_cells", "planned_variants", "run_variants"]

NEEDS_MAIN = ("methods", "forgetting", "effective_rank", "composition", "trajectories")
"""Sections that read the main methods x tasks runs."""


@dataclass
class Variant:
    """One set of runs: ``tasks`` x ``methods`` with ``overrides`` on the shared recipe config."""

    section: str
    group: str
    label: str
    tasks: list[str]
    methods: list[str]
    train: dict[str, Any]
    """The full recipe overrides (shared budget + this variant's own)."""
    spec: Any = field(repr=False, default=None)
    params: dict[str, Any] = field(default_factory=dict)
    """What the variant varies (``{"ranks": [8, 8, 8]}``, ``{"fraction": 0.3}``)."""

    @property
    def key(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", f"{self.section}-{self.group}-{self.label}".lower()).strip("-")[:48]

    def compare_dict(self, tasks: list[str] | None = None, methods: list[str] | None = None,
                     retrain: bool = False) -> dict[str, Any]:
        s = self.spec
        tasks = tasks or self.tasks
        data = {
            "kind": "compare", "tasks": tasks, "methods": methods or self.methods,
            "size": s.size, "base": s.base, "steps": s.steps, "split": s.split,
            "task_steps": s.task_steps_within(tasks),
            "eval_limit": s.eval_limit, "registry": s.registry, "data_dir": s.data_dir,
            "storage_path": s.storage_path, "retrain": retrain, "max_parallel": s.max_parallel,
            "train": self.train,
        }
        return {k: v for k, v in data.items() if v is not None}

    def validate(self) -> None:
        from ldp.jobs.compare import validate_compare

        validate_compare(self.compare_dict())


def main_cells(spec) -> tuple[list[str], list[str]]:
    """Tasks and methods of the main run: what the chosen sections read."""
    from ldp.methods import METHOD_NAMES

    methods = list(METHOD_NAMES) if spec.methods == ["all"] else list(spec.methods)
    chosen = set(spec.sections)
    tasks: list[str] = []
    wanted: set[str] = set()
    if "methods" in chosen:
        tasks, wanted = list(spec.tasks), set(methods)
    if "forgetting" in chosen and spec.forgetting is not None:
        tasks.append(spec.forgetting.task or spec.tasks[0])
        wanted |= set(methods)
    ld = {"lora-diffusion"} & set(methods)
    if ld and chosen & {"effective_rank", "composition"}:
        tasks += spec.tasks
        wanted |= ld
    if ld and "trajectories" in chosen and spec.trajectories is not None:
        tasks += trajectory_tasks(spec)
        wanted |= ld
    ordered = [t for t in dict.fromkeys(tasks)]
    return ordered, [m for m in methods if m in wanted]


def trajectory_tasks(spec) -> list[str]:
    return list(spec.trajectories.tasks or spec.tasks[:4])


def count_train_examples(task: str, data_dir: str | None) -> int:
    """Training examples of ``task`` (quietly: this runs while the config is checked)."""
    from datasets.utils import logging as ds_logging

    from ldp.data.loading import load_examples

    shown = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        return len(load_examples(task, "train", data_dir, None))
    finally:
        if shown:
            ds_logging.enable_progress_bar()


def _ablation_variants(spec, shared: dict[str, Any]) -> list[Variant]:
    from ldp.methods.lora_diffusion.config import LoraDiffusionConfig

    cfg = spec.ablations
    tasks = list(cfg.tasks or spec.tasks[:1])
    own = dict(shared.get("method_config") or {})
    default = LoraDiffusionConfig(**own)
    phases = len(default.phase_names)
    out = []

    def add(group: str, label: str, change: dict[str, Any] | None, params: dict[str, Any]) -> None:
        train = shared if change is None else apply_overrides(shared, {f"method_config.{k}": v for k, v in change.items()})
        out.append(Variant("ablations", group, label, tasks, ["lora-diffusion"], train, spec, params))

    adaptive = "/".join(str(r) for r in default.ranks)
    for r in cfg.ranks:
        if [r] * phases == list(default.ranks):
            continue
        add("rank", f"uniform r={r}", {"ranks": [r] * phases}, {"ranks": [r] * phases})
    add("rank", f"step-adaptive {adaptive} (default)", None, {"ranks": list(default.ranks)})
    for k in cfg.modules:
        same = k == default.modules_per_phase
        add("modules", f"k={k}" + (" (default)" if same else ""), None if same else {"modules_per_phase": k},
            {"modules_per_phase": k})
    if cfg.conditioning or cfg.regularisers:
        add("conditioning", "defaults (Enc(c) FiLM, default lambdas)", None, {})
    if cfg.conditioning:
        add("conditioning", "without Enc(c) FiLM", {"conditioning": False}, {"conditioning": False})
    if cfg.regularisers:
        add("conditioning", "lambda_rank = lambda_orth = 0", {"lambda_rank": 0.0, "lambda_orth": 0.0},
            {"lambda_rank": 0.0, "lambda_orth": 0.0})
    return out


def _data_variants(spec, shared: dict[str, Any]) -> list[Variant]:
    cfg = spec.data_efficiency
    tasks = list(cfg.tasks or spec.tasks[:2])
    limit = shared.get("train_limit")
    out = []
    for task in tasks:
        full = int(limit) if limit else None
        for fraction in cfg.fractions:
            if fraction >= 1.0:
                train, n = shared, full
            else:
                total = full if full is not None else count_train_examples(task, spec.data_dir)
                n = max(1, math.ceil(fraction * total))
                train = apply_overrides(shared, {"train_limit": n})
            out.append(Variant("data_efficiency", "fraction", f"{task} {round(100 * fraction)}%", [task],
                               list(cfg.methods), train, spec, {"fraction": fraction, "train_limit": n}))
    return out


def planned_variants(spec) -> list[Variant]:
    """Every variant the chosen sections need, in the order they run (main first)."""
    from ldp.jobs.report_spec import shared_train

    shared = shared_train(spec)
    out = []
    tasks, methods = main_cells(spec)
    if tasks and methods:
        out.append(Variant("methods", "main", "methods x tasks", tasks, methods, shared, spec))
    if "ablations" in spec.sections and spec.ablations is not None:
        out += _ablation_variants(spec, shared)
    if "data_efficiency" in spec.sections and spec.data_efficiency is not None:
        out += _data_variants(spec, shared)
    return out


# -- running ------------------------------------------------------------------------------------
def _cell_hash(variant: Variant, task: str, method: str, base: str) -> str:
    from ldp.config import build
    from ldp.jobs.compare import CompareSpec, cell_spec
    from ldp.jobs.train_all_spec import spec_hash

    cspec = build(CompareSpec, variant.compare_dict([task], [method]), where="compare.")
    return spec_hash(cell_spec(cspec, task, method, base))


def _published_rows(variant: Variant, reg, base: str) -> list[dict[str, Any]]:
    """Rows from the registry only (``published_only``): nothing is trained."""
    from ldp.config import build
    from ldp.jobs.compare import CompareSpec, _cell_from_registry, cell_spec, skipped_tasks
    from ldp.jobs.train_all import find_published_adapter
    from ldp.jobs.train_all_spec import spec_hash

    cspec = build(CompareSpec, variant.compare_dict(), where="compare.")
    skipped = skipped_tasks(cspec)
    rows = []
    for task in variant.tasks:
        if task in skipped:
            continue
        for method in variant.methods:
            row: dict[str, Any] = {"task": task, "method": method}
            found = find_published_adapter(reg, task, method, spec_hash(cell_spec(cspec, task, method, base)))
            if found:
                row.update(_cell_from_registry(reg, found), reused=True)
            else:
                row["error"] = "not published for this spec (the report was made from published runs only)"
            rows.append(row)
    return rows


def run_variants(spec, variants: list[Variant], job_id: str, base: str, *, log=print) -> list[dict[str, Any]]:
    """Run every variant (compare calls per task); one result dict per variant."""
    from ldp.errors import first_line
    from ldp.jobs.compare import execute as compare_execute
    from ldp.store import Registry

    reg = Registry(spec.registry)
    done: set[str] = set()  # cell hashes trained (or reused) in this report
    results = []
    counter = 0
    for variant in variants:
        log(f"[ldp] report: {variant.section} / {variant.label}: "
            f"{len(variant.tasks)} task(s) x {', '.join(variant.methods)}")
        rows: list[dict[str, Any]] = []
        errors: list[str] = []
        if spec.published_only:
            rows = _published_rows(variant, reg, base)
        else:
            # Tasks that need the same methods (with the same retrain) share one compare call,
            # so that its cells train side by side; a cell an earlier variant of this report
            # already trained is reused, never retrained.
            groups: dict[tuple[tuple[str, ...], bool], list[str]] = {}
            for task in variant.tasks:
                hashes = {m: _cell_hash(variant, task, m, base) for m in variant.methods}
                fresh = tuple(m for m in variant.methods if hashes[m] not in done)
                seen = tuple(m for m in variant.methods if hashes[m] in done)
                for methods, retrain in ((fresh, spec.retrain), (seen, False)):
                    if methods:
                        groups.setdefault((methods, retrain), []).append(task)
                done.update(hashes.values())
            for (methods, retrain), tasks in groups.items():
                counter += 1
                child_id = f"{job_id}-{counter}"
                try:
                    out = compare_execute(variant.compare_dict(tasks, list(methods), retrain), child_id, log=log)
                    rows += out["rows"]
                    for task_skipped, why in (out.get("skipped") or {}).items():
                        errors.append(f"{task_skipped} skipped: {why}")
                except Exception as exc:  # noqa: BLE001 - every cell failed: report, go on
                    why = first_line(exc)
                    rows += [{"task": t, "method": m, "error": why} for t in tasks for m in methods]
        order = {(t, m): i for i, (t, m) in enumerate((t, m) for t in variant.tasks for m in variant.methods)}
        rows.sort(key=lambda r: order.get((r["task"], r["method"]), 0))
        results.append({
            "key": variant.key, "section": variant.section, "group": variant.group,
            "label": variant.label, "tasks": variant.tasks, "methods": variant.methods,
            "params": variant.params, "train": variant.train, "rows": rows, "notes": errors,
        })
    return results


def loss_history(reg, row: dict[str, Any], storage_path: str | None, max_points: int = 200) -> dict[str, Any]:
    """``{"steps": [...], "loss": [...]}`` of a row's training run from its job's metrics file,
    or ``{"error": why}`` (a run reused from another machine has no local metrics)."""
    from ldp.jobs.runner import _dedupe_steps, default_storage_path, read_metrics

    job = row.get("job")
    if job is None and row.get("ref"):
        try:
            job = reg.open_manifest(row["ref"]).job
        except Exception:  # noqa: BLE001 - reported below as "no job"
            job = None
    if not job:
        return {"error": "the run names no job"}
    storage = storage_path or str(default_storage_path())
    try:
        records = _dedupe_steps(read_metrics(storage, job))
    except Exception as exc:  # noqa: BLE001
        from ldp.errors import first_line

        return {"error": f"metrics of {job} unreadable: {first_line(exc)}"}
    points = [(int(r["step"]), float(r["loss"])) for r in records if "loss" in r]
    if not points:
        return {"error": f"no metrics file for job {job} under {storage}"}
    stride = max(1, math.ceil(len(points) / max_points))
    kept = points[::stride]
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return {"job": job, "steps": [p[0] for p in kept], "loss": [round(p[1], 5) for p in kept]}

"""Job kind ``compare``: every method on every task under one budget (the paper's Table 7).

Each cell (task, method) is an ordinary adapter job (the same spec, recipe, Ray Train + DeepSpeed
path and registry publication as ``ldp submit``) with the same steps, batch, data and evaluation
split for every method; only each method's own default learning rate differs (``--set
optim.lr=...`` pins one for all), and the steps where a task or a method has its own budget
(``task_steps``, ``method_steps``; the larger of the two where a cell has both). A cell whose
resolved job spec (its steps included) was published before is reused (``retrain`` forces a new
run). A failed cell is reported in the table and the others go on.

Cells train side by side as Ray tasks (:mod:`ldp.jobs.children`), as many as the cluster places
or ``max_parallel``. A cell's ``seconds`` is its own wall time with the others running beside it;
``max_parallel: 1`` gives timings of cells run alone.

The result holds one row per cell (optimiser steps, primary metric, trainable parameters and %,
training time, registry reference), per method the average over tasks, the percentage of full
fine-tuning (per task and of the averages) and the points above the label marginal, and per
classification task that marginal: the score of always answering the training split's most
common label (:mod:`ldp.evaluation.majority`), the number a method must beat to have learned
from its input.
:func:`format_markdown` renders it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from ldp.config import build, to_dict
from ldp.errors import LdpError, UsageError
from ldp.jobs.spec import check_method_steps, check_task_steps, steps_for

__all__ = ["CompareSpec", "execute", "format_markdown", "validate_compare"]

DEFAULT_TASKS = ["sst2", "agnews", "trec"]


@dataclass
class CompareSpec:
    kind: Literal["compare"] = "compare"
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    methods: list[str] = field(default_factory=lambda: ["all"])
    """Method names, or ``all`` (every method)."""
    size: str = "tiny"
    base: str | None = None
    steps: int | None = None
    """Optimiser steps of every cell (default: the adapter recipe's)."""
    task_steps: dict[str, int] = field(default_factory=dict)
    """Per-task steps that replace ``steps`` for those tasks' cells (``{squad: 100}``)."""
    method_steps: dict[str, int] = field(default_factory=dict)
    """Per-method steps that replace ``steps`` for every cell of those methods (``{weight-lora: 900}``).
    A cell whose task and method both have their own steps trains for the LARGER of the two."""
    split: Literal["validation", "test", "train"] = "validation"
    """The split each adapter is scored on."""
    eval_limit: int | None = 200
    """Examples scored per cell (None: the whole split)."""
    workers: int = 1
    strategy: str = "auto"
    registry: str | None = None
    data_dir: str | None = None
    storage_path: str | None = None
    retrain: bool = False
    """Train every cell even when an adapter for the same spec is published."""
    max_parallel: int | None = None
    """At most this many cells train at once (default: as many as the cluster's CPUs place)."""
    train: dict[str, Any] = field(default_factory=dict)
    """Adapter recipe overrides applied to every cell (``loop.batch_size``, ``optim.lr``, ...)."""

    def __post_init__(self) -> None:
        from ldp.data.tasks import get_task
        from ldp.methods import METHOD_NAMES, get_method

        if not self.tasks:
            raise ValueError("tasks is empty")
        for task in self.tasks:
            get_task(task)
        if self.methods == ["all"]:
            self.methods = list(METHOD_NAMES)
        if not self.methods:
            raise ValueError("methods is empty")
        for method in self.methods:
            get_method(method)
        if len(set(self.methods)) != len(self.methods) or len(set(self.tasks)) != len(self.tasks):
            raise ValueError("tasks and methods must not repeat")
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be >= 1")
        self.task_steps = check_task_steps(self.task_steps, self.tasks)
        self.method_steps = check_method_steps(self.method_steps, self.methods)
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError("eval_limit must be >= 1")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ValueError("max_parallel must be >= 1")


def cell_steps(spec: CompareSpec, task: str, method: str) -> int | None:
    """The steps of one cell as the spec gives them: the task's or the method's own budget, the
    larger of the two when both are given, else ``steps`` (None: the recipe's default)."""
    return steps_for(task, spec.steps, spec.task_steps, method, spec.method_steps)


def resolved_steps(child: dict[str, Any]) -> int:
    """The optimiser steps a cell's job spec (:func:`cell_spec`) trains for, the recipe's default
    filled in where the spec gives none."""
    from ldp.jobs.spec import JobSpec, train_config

    job = build(JobSpec, {k: v for k, v in child.items() if k != "kind"})
    return int(train_config(job)["loop"]["max_steps"])


def cell_spec(spec: CompareSpec, task: str, method: str, base: str | None = None) -> dict[str, Any]:
    """The adapter job spec of one cell, validated (a bad override fails before any work)."""
    from ldp.config import apply_overrides
    from ldp.jobs.spec import validate_spec

    train = apply_overrides(dict(spec.train), {"eval.split": spec.split, "eval.limit": spec.eval_limit})
    data = {
        "task": task, "method": method, "size": spec.size, "base": base or spec.base,
        "steps": cell_steps(spec, task, method), "workers": spec.workers,
        "cpus_per_worker": 1,  # cells train side by side, a worker group per free CPU
        "strategy": spec.strategy, "registry": spec.registry, "data_dir": spec.data_dir,
        "storage_path": spec.storage_path, "train": train,
    }
    return to_dict(validate_spec({k: v for k, v in data.items() if v is not None}))


def skipped_tasks(spec: CompareSpec) -> dict[str, str]:
    """Tasks without train/validation data in the local mirror, with why (they are skipped)."""
    from ldp.jobs.train_all import _has_data

    return {t: why for t in spec.tasks if (why := _has_data(t, spec.data_dir))}


def validate_compare(data: dict[str, Any]) -> CompareSpec:
    """The spec and every cell's job spec, checked before any work (UsageError)."""
    spec = build(CompareSpec, data, where="compare")
    skipped = skipped_tasks(spec)
    if len(skipped) == len(spec.tasks):
        task, why = next(iter(skipped.items()))
        raise UsageError(f"no task has data to train on ({task}: {why})")
    for task in spec.tasks:
        if task in skipped:
            continue
        for method in spec.methods:
            cell_spec(spec, task, method)
    return spec


def _cell_from_registry(reg, ref: str) -> dict[str, Any]:
    metrics = reg.read_json(ref, "metrics.json") or {}
    ev = metrics.get("evaluation") or {}
    primary = ev.get("primary")
    trainable = metrics.get("trainable") or {}
    return {
        "ref": ref,
        "primary": primary,
        "score": (ev.get("metrics") or {}).get(primary),
        "n": ev.get("n"),
        "split": ev.get("split"),
        "trainable": trainable.get("trainable"),
        "trainable_pct": trainable.get("percent"),
        "train_seconds": metrics.get("train_seconds"),
    }


def summarise(
    rows: list[dict[str, Any]], tasks: list[str], methods: list[str],
    majority: dict[str, dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Per method: average over tasks, % of full fine-tuning (of the averages and per task), and
    points above the label marginal per task (``majority``: :func:`majority_rows`)."""
    score = {(r["task"], r["method"]): r.get("score") for r in rows if r.get("score") is not None}
    marginal = {t: (m or {}).get("score") for t, m in (majority or {}).items()}
    out: dict[str, Any] = {}
    for method in methods:
        values = [score.get((t, method)) for t in tasks]
        complete = all(v is not None for v in values)
        avg = sum(values) / len(values) if complete else None
        per_task, above = {}, {}
        for t in tasks:
            full = score.get((t, "full"))
            mine = score.get((t, method))
            per_task[t] = round(100.0 * mine / full, 1) if full and mine is not None else None
            floor = marginal.get(t)
            above[t] = round(mine - floor, 1) if mine is not None and floor is not None else None
        out[method] = {"average": avg, "pct_of_full_by_task": per_task, "above_majority_by_task": above}
    full_avg = out.get("full", {}).get("average")
    for method in methods:
        avg = out[method]["average"]
        out[method]["pct_of_full"] = round(100.0 * avg / full_avg, 1) if avg is not None and full_avg else None
    return out


def execute(spec_dict: dict[str, Any], job_id: str, *, log=print) -> dict[str, Any]:
    from ldp.jobs.adapter_job import ensure_base
    from ldp.jobs.spec import JobSpec
    from ldp.jobs.train_all import find_published_adapter
    from ldp.jobs.train_all_spec import spec_hash
    from ldp.store import Registry

    spec = validate_compare(spec_dict)
    started = time.perf_counter()
    reg = Registry(spec.registry)
    skipped = skipped_tasks(spec)
    for task, why in skipped.items():
        log(f"[ldp] skipping {task}: {why}")
    tasks = [t for t in spec.tasks if t not in skipped]
    first = cell_spec(spec, tasks[0], spec.methods[0])
    base = ensure_base(JobSpec(**{k: v for k, v in first.items() if k != "kind"}), log=log)
    log(f"[ldp] compare: {len(spec.methods)} method(s) x {len(spec.tasks)} task(s) on {base}")
    cells = [(t, m) for t in tasks for m in spec.methods]
    by_cell: dict[tuple[str, str], dict[str, Any]] = {}
    todo: list[tuple[tuple[str, str], dict[str, Any]]] = []
    steps: dict[tuple[str, str], int] = {}
    for task, method in cells:
        child = cell_spec(spec, task, method, base)
        steps[(task, method)] = resolved_steps(child)
        found = None if spec.retrain else find_published_adapter(reg, task, method, spec_hash(child))
        if found:
            by_cell[(task, method)] = {"task": task, "method": method, **_cell_from_registry(reg, found),
                                       "reused": True}
            _log_cell(log, by_cell[(task, method)])
        else:
            todo.append(((task, method), child))
    if todo:  # Ray starts only when a cell must train: a rerun that reuses every cell needs none
        by_cell.update(_train_cells(spec, todo, reg, job_id, log))
    rows = [{"task": c[0], "method": c[1], "steps": steps[c], **by_cell[c]} for c in cells]
    majority = majority_rows(spec, tasks, log)
    summary = summarise(rows, tasks, spec.methods, majority)
    failed = [r for r in rows if "error" in r]
    if len(failed) == len(rows):
        raise LdpError(f"every cell failed, e.g. {failed[0]['task']}/{failed[0]['method']}: {failed[0]['error']}")
    return {
        "ref": None,
        "base": base,
        "split": spec.split,
        "tasks": tasks,
        "skipped": skipped,
        "methods": spec.methods,
        "rows": rows,
        "majority": majority,
        "summary": summary,
        "seconds": round(time.perf_counter() - started, 1),
        "metrics": {m: s["average"] for m, s in summary.items() if s["average"] is not None},
        "spec": to_dict(spec),
    }


def majority_rows(spec: CompareSpec, tasks: list[str], log=print) -> dict[str, dict[str, Any] | None]:
    """Per task, the label-marginal reference scored like every cell (same split and limit,
    the cells' training examples); None for a task without verbalisers or whose data fails
    to load (logged: the reference is context, it never fails the comparison)."""
    from ldp.errors import first_line
    from ldp.evaluation.majority import majority_baseline

    out: dict[str, dict[str, Any] | None] = {}
    for task in tasks:
        try:
            found = majority_baseline(task, spec.split, spec.data_dir, train_limit=spec.train.get("train_limit"),
                                      eval_limit=spec.eval_limit)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log(f"[ldp] {task}: no label-marginal reference ({first_line(exc)})")
            found = None
        out[task] = found.to_dict() if found is not None else None
    return out


def _log_cell(log, row: dict[str, Any]) -> None:
    score = row.get("score")
    log(f"[ldp] {row['task']}/{row['method']}: " + (
        f"{row['primary']} {score:.2f}" + (" (reused)" if row.get("reused") else "")
        if score is not None else f"FAILED: {row.get('error')}"
    ))


def _train_cells(spec: CompareSpec, todo: list, reg, job_id: str, log) -> dict[tuple[str, str], dict[str, Any]]:
    """Train the cells of ``todo`` side by side as child jobs; one row per cell."""
    from tqdm.auto import tqdm

    from ldp.cluster import connect
    from ldp.errors import first_line
    from ldp.jobs import records
    from ldp.jobs.children import run_children

    rows: dict[tuple[str, str], dict[str, Any]] = {}
    bar = tqdm(total=len(todo), desc="compare", unit="cell")

    def open_job(cell: tuple[str, str], child: dict[str, Any]) -> str:
        cell_id = f"{job_id}-{cell[0]}-{cell[1]}"
        records.create_job(child, job_id=cell_id, label=f"{cell[0]}-{cell[1]}")
        return cell_id

    def on_done(cell: tuple[str, str], cell_id: str, result: dict | None, error: str | None) -> None:
        row: dict[str, Any] = {"task": cell[0], "method": cell[1], "job": cell_id}
        if error is not None:
            row["error"] = error
        else:
            try:
                row.update(_cell_from_registry(reg, result["ref"]), reused=False)
            except Exception as exc:  # noqa: BLE001 - an unreadable publication fails the cell only
                row["error"] = first_line(exc)
        rows[cell] = row
        bar.update(1)
        bar.set_postfix_str(f"{cell[0]}/{cell[1]}")
        _log_cell(log, row)

    handle = connect()
    try:
        run_children(todo, limit=spec.max_parallel, workers=spec.workers, open_job=open_job,
                     ray_name=lambda cell: f"cell:{cell[0]}/{cell[1]}", on_done=on_done)
    finally:
        bar.close()
        handle.shutdown()
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _majority_lines(result: dict[str, Any], tasks: list[str]) -> list[str]:
    """The label-marginal row of the table and the footnote naming each task's label."""
    majority = result.get("majority") or {}
    found = {t: m for t, m in majority.items() if m and t in tasks}
    if not found:
        return []
    scores = [found[t]["score"] if t in found else None for t in tasks]
    avg = sum(scores) / len(scores) if all(v is not None for v in scores) else None
    full = (result["summary"].get("full") or {}).get("average")
    pct = round(100.0 * avg / full, 1) if avg is not None and full else None
    row = ["label marginal †", *(_fmt(v) for v in scores), _fmt(avg), _fmt(pct), "0", "—", "—"]
    names = ", ".join(f"{t}: {m['label']} ({m['train_share']:.1f}% of train)" for t, m in found.items())
    return [
        "| " + " | ".join(row) + " |",
        "",
        (
            f"† always the training split's most common label, scored like the cells ({names}); "
            "a method at this score has learned the label distribution and nothing from its input."
        ),
    ]


def _steps_lines(result: dict[str, Any], tasks: list[str], methods: list[str]) -> tuple[str, list[str]]:
    """The steps of the cells: words for the table's first line (``300 steps per cell; ``) when
    every cell ran the same number, else a pointer to a table of each cell's steps, which comes
    second (nothing for a result whose rows carry no steps, as older results do)."""
    steps = {(r["task"], r["method"]): r.get("steps") for r in result["rows"]}
    grid = [[steps.get((t, m)) for t in tasks] for m in methods]
    known = {n for row in grid for n in row if n is not None}
    if not known:
        return "", []
    if len(known) == 1 and all(n is not None for row in grid for n in row):
        return f"{known.pop()} steps per cell; ", []
    head = ["method", *tasks]
    return "steps differ between cells (‡); ", [
        "",
        ("‡ Optimiser steps of each cell (a task's or a method's own steps replace the shared number; "
         "a cell with both trains for the larger):"),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join([m, *(_fmt(n) for n in row)]) + " |" for m, row in zip(methods, grid)),
    ]


def format_markdown(result: dict[str, Any]) -> str:
    """The Table 7 analogue as Markdown: primary metric per task, average, % of full FT,
    trainable parameters and %, and training time (summed over tasks); the steps of the cells
    (one number, or a table of each cell's where they differ)."""
    tasks, methods = result["tasks"], result["methods"]
    cells = {(r["task"], r["method"]): r for r in result["rows"]}
    head = ["method", *tasks, "average", "% of full", "trainable", "trainable %", "train s"]
    steps_words, steps_table = _steps_lines(result, tasks, methods)
    lines = [
        f"Split: {result['split']}; base: {result['base']}; {steps_words}primary metric of each task "
        "(n per cell in the JSON).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for method in methods:
        row = [method]
        for task in tasks:
            cell = cells.get((task, method), {})
            row.append(_fmt(cell.get("score")) if "error" not in cell else "FAILED")
        summary = result["summary"][method]
        mine = [cells.get((t, method), {}) for t in tasks]
        trainable = next((c.get("trainable") for c in mine if c.get("trainable") is not None), None)
        pct = next((c.get("trainable_pct") for c in mine if c.get("trainable_pct") is not None), None)
        seconds = [c.get("train_seconds") for c in mine if c.get("train_seconds") is not None]
        row += [
            _fmt(summary["average"]), _fmt(summary["pct_of_full"]),
            f"{trainable:,}" if trainable is not None else "—", _fmt(pct, 3),
            _fmt(sum(seconds), 0) if seconds else "—",
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += _majority_lines(result, tasks)
    lines += steps_table
    if result.get("skipped"):
        lines.append("")
    for task, why in (result.get("skipped") or {}).items():
        lines.append(f"- skipped {task}: {why}")
    errors = [r for r in result["rows"] if "error" in r]
    if errors:
        lines.append("")
        lines += [f"- FAILED {r['task']}/{r['method']}: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"

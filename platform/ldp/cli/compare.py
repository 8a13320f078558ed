"""``ldp compare``: every method on every task under one budget, as the paper's Table 7.

Each cell is an ordinary adapter job (``ldp status``/``ldp logs`` work on ``<id>-<task>-<method>``)
and lands in the registry; cells train side by side, as many as the cluster places; a rerun reuses every cell already published for the same resolved
spec (``--retrain`` forces new runs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)


def _split(value: Optional[str]) -> Optional[list[str]]:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def parse_steps_map(option: str, noun: str, value: Optional[str]) -> Optional[dict[str, int]]:
    """``name=steps[,name=steps...]`` -> ``{name: steps}`` (UsageError naming ``option`` for a
    malformed pair or a name given twice). Whether the names and numbers are acceptable is the
    spec's check (:func:`ldp.jobs.spec.check_steps_map`)."""
    from ldp.errors import UsageError

    if value is None:
        return None
    out: dict[str, int] = {}
    for item in _split(value) or []:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name or not raw.strip().isdigit():
            raise UsageError(f"{option} expects {noun}=steps[,{noun}=steps...], got {item!r}")
        if name in out:
            raise UsageError(f"{option} gives {name} twice")
        out[name] = int(raw)
    return out


def parse_task_steps(value: Optional[str]) -> Optional[dict[str, int]]:
    """``--task-steps squad=100,gsm8k=60`` -> ``{"squad": 100, "gsm8k": 60}`` (UsageError)."""
    return parse_steps_map("--task-steps", "task", value)


def parse_method_steps(value: Optional[str]) -> Optional[dict[str, int]]:
    """``--method-steps weight-lora=900,full=600`` -> ``{"weight-lora": 900, "full": 600}`` (UsageError)."""
    return parse_steps_map("--method-steps", "method", value)


def compare(
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated task keys (default sst2,agnews,trec)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated methods, or 'all' (default)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps of every cell (default 900, the adapter recipe's)."),
    task_steps: Optional[str] = typer.Option(None, "--task-steps", help="Per-task steps replacing --steps: squad=100,gsm8k=60."),
    method_steps: Optional[str] = typer.Option(
        None, "--method-steps",
        help="Per-method steps replacing --steps for every cell of the method: weight-lora=900,full=600. "
        "A cell whose task and method both have steps trains for the larger of the two.",
    ),
    size: Optional[str] = typer.Option(None, "--size", help="Base size (default tiny)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base: registry reference or folder (default bases/<size>@latest)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split each adapter is scored on: validation (default), test or train."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Examples scored per cell (default 200)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data mirror (default LDP_DATA_DIR, else the hub)."),
    registry: Optional[str] = typer.Option(None, "--registry", help="Registry URL (default LDP_REGISTRY or ~/.ldp/registry)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster (default RAY_ADDRESS, else an embedded local Ray)."),
    max_parallel: Optional[int] = typer.Option(None, "--max-parallel", help="At most K cells train at once (default: what the cluster places; 1 gives timings of cells run alone)."),
    retrain: bool = typer.Option(False, "--retrain", help="Train every cell even when an adapter for the same spec exists."),
    sets: list[str] = typer.Option([], "--set", help="Recipe override for every cell: --set loop.batch_size=8, --set optim.lr=1e-3."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the result (rows, summary) as JSON here."),
    markdown_path: Optional[Path] = typer.Option(None, "--markdown", help="Write the table as Markdown here."),
) -> None:
    """Train every method on every task under one budget; print the Table 7 analogue."""
    from ldp import checks
    from ldp import config as cfgmod
    from ldp.config import to_dict
    from ldp.jobs import records
    from ldp.jobs.compare import format_markdown, validate_compare
    from ldp.jobs.launch import launch

    checks.output_file("--json", json_path)
    checks.output_file("--markdown", markdown_path)
    checks.data_location("--data-dir", data_dir)
    checks.registry_location("--registry", registry)
    explicit = {
        "tasks": _split(tasks), "methods": _split(methods), "steps": steps,
        "task_steps": parse_task_steps(task_steps), "method_steps": parse_method_steps(method_steps),
        "size": size, "base": base, "split": split, "eval_limit": eval_limit, "registry": registry,
        "data_dir": data_dir or os.environ.get("LDP_DATA_DIR") or None, "retrain": retrain or None,
        "max_parallel": max_parallel,
    }
    data = {k: v for k, v in explicit.items() if v is not None}
    overrides = {f"train.{k}": v for k, v in cfgmod.parse_overrides(sets).items()}
    spec = to_dict(validate_compare(cfgmod.apply_overrides(data, overrides)))
    address = address or os.environ.get("RAY_ADDRESS") or None
    if (address or "").startswith("http"):
        from ldp.errors import UsageError

        raise UsageError("ldp compare runs its driver here: give a Ray address (host:port), not the Jobs API")
    job_id = records.new_job_id("compare")
    typer.echo(job_id)
    launch(spec, job_id=job_id, wait=True, address=address)
    result = records.get_job(job_id).result or {}
    table = format_markdown(result)
    typer.echo(table)
    typer.echo(f"wall time: {result.get('seconds')} s")
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    if markdown_path is not None:
        markdown_path.write_text(table)

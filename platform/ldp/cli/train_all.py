"""``ldp train-all``: every task adapter (as Ray work), then the router, then a bundle.

Prints the pipeline's job id first; ``ldp status``/``ldp logs`` work on it and on each child job
(``<id>-<task>``, ``<id>-router``). A rerun with the same options reuses every adapter (and the
router) already published for the same resolved spec.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer

from ldp.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("train-all")(train_all)


def _spec(config: Optional[Path], sets: list[str], explicit: dict) -> dict:
    """Pipeline spec: YAML file, then ``--set`` (keys outside the pipeline spec go to the adapter
    recipe, ``train.``), then the explicit options."""
    from ldp import config as cfgmod
    from ldp.jobs.train_all_spec import PipelineSpec

    data = cfgmod.read_mapping(config) if config is not None else {}
    keys = {f.name for f in fields(PipelineSpec)}
    overrides = {}
    for key, value in cfgmod.parse_overrides(sets).items():
        overrides[key if key.split(".", 1)[0] in keys else f"train.{key}"] = value
    overrides.update({k: v for k, v in explicit.items() if v is not None})
    return cfgmod.apply_overrides(data, overrides)


def train_all(
    size: Optional[str] = typer.Option(None, "--size", help="Base size: tiny, 350m, 1.3b, 7b."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated task keys, or 'all' (default)."),
    method: Optional[str] = typer.Option(None, "--method", help="Adapter method (composition needs lora-diffusion)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base: registry reference or folder (default bases/<size>@latest)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps per task adapter (default 900)."),
    task_steps: Optional[str] = typer.Option(None, "--task-steps", help="Per-task steps replacing --steps: squad=100,gsm8k=60."),
    router_steps: Optional[int] = typer.Option(None, "--router-steps", help="Optimiser steps of the router."),
    max_parallel: Optional[int] = typer.Option(None, "--max-parallel", help="At most K adapter jobs at once (default: what the cluster places)."),
    name: Optional[str] = typer.Option(None, "--name", help="Bundle and router name (default <size>-<method>)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: host:port, ray://, or http:// (Jobs API). Default: RAY_ADDRESS, else an embedded local Ray."),
    registry: Optional[str] = typer.Option(None, "--registry", help="Registry URL (default LDP_REGISTRY or ~/.ldp/registry)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data mirror (default LDP_DATA_DIR, else the hub)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML pipeline spec."),
    sets: list[str] = typer.Option([], "--set", help="Override: --set router.per_phase=true, --set eval_limit=50, --set loop.batch_size=8 (adapter recipe keys)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the pipeline to the end (default) or return at once."),
    json_out: bool = typer.Option(False, "--json", help="With --wait: print the result as JSON."),
) -> None:
    """Train every task adapter, then the router over them; publish a composition bundle."""
    from ldp.cli.compare import parse_task_steps
    from ldp.config import to_dict
    from ldp.jobs import records
    from ldp.jobs.launch import launch
    from ldp.jobs.train_all_spec import validate_pipeline

    explicit = {
        "size": size, "tasks": None if tasks is None else [t.strip() for t in tasks.split(",") if t.strip()],
        "method": method, "base": base, "steps": steps, "task_steps": parse_task_steps(task_steps),
        "router_steps": router_steps, "max_parallel": max_parallel, "name": name,
        "registry": registry, "data_dir": data_dir or os.environ.get("LDP_DATA_DIR") or None,
    }
    spec = to_dict(validate_pipeline(_spec(config, sets, explicit)))
    _check_data(spec)
    address = address or os.environ.get("RAY_ADDRESS") or None
    job_id = records.new_job_id("train-all")
    typer.echo(job_id)
    launch(spec, job_id=job_id, wait=wait, address=address)
    if not wait:
        typer.echo(f"follow with: ldp logs {job_id}" + (f" --address {address}" if address else ""), err=True)
        return
    record = records.get_job(job_id) if not (address or "").startswith("http") else None
    result = (record.result if record is not None else None) or {}
    if json_out:
        print(json.dumps({"job_id": job_id, **result}, indent=2))
        return
    if result:
        typer.echo(f"bundle: {result.get('ref')}")
        typer.echo(f"router: {result.get('router')}")
        for task, ref in (result.get("adapters") or {}).items():
            typer.echo(f"adapter {task}: {ref}")
        for task, error in (result.get("failed") or {}).items():
            typer.echo(f"FAILED {task}: {error}")
        if result.get("comparison"):
            from ldp.evaluation.composition import format_comparison

            typer.echo(format_comparison(result["comparison"]))
        typer.echo(f"wall time: {result.get('seconds')} s")


def _check_data(spec: dict) -> None:
    """A local data mirror that does not exist is a usage error, found before Ray starts."""
    from ldp.data.loading import resolve_data_dir

    location = resolve_data_dir(spec.get("data_dir"))
    if location is not None and "://" not in location and not Path(location).is_dir():
        raise UsageError(f"data dir {location} does not exist (set --data-dir or LDP_DATA_DIR to a mirror)")

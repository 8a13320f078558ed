"""``ldp submit``: validate an adapter job spec, print its id, run it on Ray (here, detached, or
on a remote cluster) and, with ``--wait``, end with the registry reference and the metrics."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer

from ldp.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)


def _spec_from_options(config: Optional[Path], sets: list[str], explicit: dict) -> dict:
    """JobSpec dict: YAML file, then ``--set`` (keys outside JobSpec go to ``train.``), then the
    explicit options."""
    from ldp import config as cfgmod
    from ldp.jobs.spec import JobSpec

    data: dict = {}
    if config is not None:
        if not config.is_file():
            raise UsageError(f"config file not found: {config}")
        import yaml

        try:
            loaded = yaml.safe_load(config.read_text())
        except yaml.YAMLError as exc:
            raise UsageError(f"{config}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UsageError(f"{config}: expected a mapping at the top level")
        data = loaded or {}
    spec_keys = {f.name for f in fields(JobSpec)}
    overrides = {}
    for key, value in cfgmod.parse_overrides(sets).items():
        top = key.split(".", 1)[0]
        overrides[key if top in spec_keys else f"train.{key}"] = value
    overrides.update({k: v for k, v in explicit.items() if v is not None})
    return cfgmod.apply_overrides(data, overrides)


def submit(
    task: Optional[str] = typer.Option(None, "--task", help="Task key (see `ldp tasks`)."),
    size: Optional[str] = typer.Option(None, "--size", help="Base size: tiny, 350m, 1.3b, 7b."),
    method: Optional[str] = typer.Option(None, "--method", help="lora-diffusion | weight-lora | prefix | adapters | bitfit | full."),
    base: Optional[str] = typer.Option(None, "--base", help="Base: registry reference or folder (default bases/<size>@latest)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray Train workers."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="auto | ddp | zero2 | zero3 | zero3-offload."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: host:port, ray://, or http:// (Jobs API). Default: RAY_ADDRESS, else an embedded local Ray."),
    registry: Optional[str] = typer.Option(None, "--registry", help="Registry URL (default LDP_REGISTRY or ~/.ldp/registry)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data mirror (default LDP_DATA_DIR, else the hub)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML job spec (see configs/)."),
    sets: list[str] = typer.Option([], "--set", help="Override: --set checkpoint_every=20, --set loop.batch_size=8 (recipe keys)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job to the end (default) or return at once."),
    json_out: bool = typer.Option(False, "--json", help="With --wait: print the result as JSON."),
) -> None:
    """Train one task adapter as a Ray Train + DeepSpeed job and publish it to the registry."""
    import os

    from ldp.jobs import records
    from ldp.jobs.launch import launch
    from ldp.jobs.spec import validate_spec
    from ldp.config import to_dict

    explicit = {
        "task": task, "size": size, "method": method, "base": base, "steps": steps,
        "workers": workers, "strategy": strategy, "registry": registry,
        "data_dir": data_dir or os.environ.get("LDP_DATA_DIR") or None,
    }
    spec = to_dict(validate_spec(_spec_from_options(config, sets, explicit)))
    address = address or os.environ.get("RAY_ADDRESS") or None
    job_id = records.new_job_id(spec["task"])
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
        ev = result.get("evaluation", {})
        primary = ev.get("primary")
        typer.echo(f"adapter: {result.get('ref')}")
        if primary:
            typer.echo(f"{ev.get('split')} {primary}: {ev['metrics'][primary]:.2f} (n={ev.get('n')})")

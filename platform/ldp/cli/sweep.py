"""``ldp sweep GRID.yaml``: a Ray Tune sweep over an adapter job's config (see ``docs/SWEEPS.md``).

The grid is validated — every grid point resolved into a job spec and checked — before the job id
is printed and before Ray starts; a bad grid exits 2 naming the dotted key. The sweep then runs as
a job of kind ``sweep`` (here, detached with ``--no-wait``, or on a cluster with ``--address``), so
``ldp jobs``, ``ldp status`` and ``ldp logs`` follow it like any other job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)


def sweep(
    grid: Path = typer.Argument(..., help="Grid file: a base job plus a `search` section (see configs/sweep-*.yaml)."),
    sets: list[str] = typer.Option([], "--set", help="Override the grid's base job: --set steps=20, --set loop.batch_size=8 (recipe keys)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: host:port, ray://, or http:// (Jobs API). Default: RAY_ADDRESS, else an embedded local Ray."),
    registry: Optional[str] = typer.Option(None, "--registry", help="Registry URL (default LDP_REGISTRY or ~/.ldp/registry)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data mirror (default LDP_DATA_DIR, else the hub)."),
    name: Optional[str] = typer.Option(None, "--name", help="Sweep name: sweeps/<name> in the registry (default: the grid's `name`, else its file name)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the newest interrupted run of this sweep; finished trials are not run again."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the sweep to the end (default) or return at once."),
    json_out: bool = typer.Option(False, "--json", help="With --wait: print the result as JSON."),
) -> None:
    """Ray Tune over learning rate, regulariser weights or any config key; the best trial's adapter
    and the sweep's table and plot are published to the registry."""
    import os

    from ldp.errors import UsageError
    from ldp.jobs import records
    from ldp.jobs.launch import launch
    from ldp.jobs.sweep import find_resumable, sweep_spec
    from ldp.jobs.sweep_grid import load_grid

    explicit = {"registry": registry, "data_dir": data_dir or os.environ.get("LDP_DATA_DIR") or None}
    plan = load_grid(grid, sets=sets, explicit=explicit, name=name)
    address = address or os.environ.get("RAY_ADDRESS") or None
    remote = (address or "").lower().startswith(("http://", "https://"))
    if resume and not remote:
        from ldp.jobs.sweep import _storage

        storage = _storage(plan.as_dict())
        if find_resumable(storage, plan.name) is None:
            raise UsageError(f"no unfinished run of sweep {plan.name!r} in {storage} to resume")
    spec = sweep_spec(plan, resume=resume)
    job_id = records.new_job_id(f"sweep-{plan.name}")
    typer.echo(job_id)
    launch(spec, job_id=job_id, wait=wait, address=address)
    if not wait:
        typer.echo(f"follow with: ldp logs {job_id}" + (f" --address {address}" if address else ""), err=True)
        return
    record = records.get_job(job_id) if not remote else None
    result = (record.result if record is not None else None) or {}
    if json_out:
        print(json.dumps({"job_id": job_id, **result}, indent=2))
        return
    if result:
        typer.echo(f"best adapter: {result.get('best')}")
        typer.echo(f"sweep record: {result.get('ref')}")

"""``ldp status``, ``ldp logs``, ``ldp jobs`` (and the internal ``ldp _run-job``).

Local jobs are read from their records (``LDP_HOME/jobs/<id>/``); with ``--address
http://host:8265`` (or ``RAY_ADDRESS`` set to one) from that cluster's Jobs API. A local record of
a job submitted to a remote cluster remembers the address, so ``ldp status ID`` and ``ldp logs
ID`` find it without ``--address``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from typing import Any

import typer

__all__ = ["register"]

_ADDRESS_HELP = (
    "A remote cluster's Jobs API (http://host:8265; default: RAY_ADDRESS if it is one, else "
    "this machine's job records)."
)


def _remote_address(address: str | None) -> str | None:
    """The Jobs API address to read from, or None for local records."""
    from ldp.cluster import resolve_address

    if address is None:
        env = os.environ.get("RAY_ADDRESS", "").strip()
        if not env.lower().startswith(("http://", "https://")):
            return None  # an embedded or GCS address: jobs are recorded locally
    kind, addr = resolve_address(address)
    if kind == "local":
        return None
    if kind != "jobs":
        from ldp.errors import UsageError

        raise UsageError(
            f"--address {addr} is a Ray (GCS) address; job status and logs come from the "
            "cluster's Jobs API: pass its dashboard address, e.g. http://127.0.0.1:8265"
        )
    return addr


def _get(job_id: str, address: str | None):
    """The job's record, from the Jobs API when it ran remotely (mirrored locally if known)."""
    from ldp.jobs import records

    remote = _remote_address(address)
    if remote is None:
        rec = records.get_job(job_id)
        if rec.address is None:
            return rec
        remote = rec.address
    rec = records.remote_get(remote, job_id)
    from ldp.jobs.launch import mirror_remote

    mirror_remote(rec)
    return rec


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _duration(rec) -> str:
    if not rec.started_at:
        return "-"
    end = rec.ended_at or time.time()
    secs = int(max(0, end - rec.started_at))
    h, rest = divmod(secs, 3600)
    m, s = divmod(rest, 60)
    text = f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
    return text if rec.ended_at else text + " so far"


def _kind(rec) -> str:
    return rec.kind + (f" ({rec.label})" if rec.label and rec.label not in rec.kind else "")


def _metrics_text(metrics: dict[str, Any] | None, limit: int = 6) -> str:
    if not metrics:
        return "-"
    parts = []
    for k, v in list(metrics.items())[:limit]:
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


def _status(
    job_id: str = typer.Argument(..., help="The job id (ldp jobs lists them)."),
    address: str | None = typer.Option(None, "--address", help=_ADDRESS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """Show a job's state, times, result (registry reference and metrics) or error."""
    rec = _get(job_id, address)
    interrupted = _head_lost(rec)
    if as_json:
        out = rec.as_dict()
        if interrupted:
            out["interrupted"] = interrupted
        typer.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    result = rec.result or {}
    rows = [
        ("job", rec.job_id),
        ("kind", _kind(rec)),
        ("state", rec.state),
        ("submitted", _when(rec.submitted_at)),
        ("started", _when(rec.started_at)),
        ("ended", _when(rec.ended_at)),
        ("duration", _duration(rec)),
    ]
    if rec.state == "SUCCEEDED":
        rows.append(("result", str(result.get("ref") or "-")))
        if result.get("best"):  # a sweep: its record is the result, the best adapter besides
            rows.append(("best", str(result["best"])))
        rows.append(("metrics", _metrics_text(result.get("metrics"), limit=20)))
    rows.append(("where", rec.address or f"local ({rec.host or 'this machine'})"))
    logs = f"ldp logs {rec.job_id}" + (f" --address {rec.address}" if rec.address else "")
    rows.append(("logs", logs))
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
    # What went wrong, on one line of its own (a table cell would wrap it).
    if rec.error:
        typer.echo(f"error: {rec.error}")
    if interrupted:
        typer.echo(f"interrupted: {interrupted}")


def _head_lost(rec) -> str | None:
    """For a local job still RUNNING whose Ray head no longer answers (its driver has not noticed
    yet): one line saying so, with its last checkpoint. None otherwise."""
    from ldp.jobs import records

    address = (rec.extra or {}).get("ray_address")
    if rec.state != "RUNNING" or rec.address is not None or not address:
        return None
    return records.head_lost_line(rec)


def _logs(
    job_id: str = typer.Argument(..., help="The job id."),
    address: str | None = typer.Option(None, "--address", help=_ADDRESS_HELP),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Keep printing new output until the job ends."
    ),
) -> None:
    """Print a job's log (driver and Ray workers)."""
    from ldp.jobs import records

    remote = _remote_address(address)
    if remote is None:
        rec = records.get_job(job_id)
        remote = rec.address
    if remote is not None:
        if follow:
            for chunk in records.remote_follow(remote, job_id):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        else:
            sys.stdout.write(records.remote_logs(remote, job_id))
        sys.stdout.flush()
        return
    path = records.log_path(job_id)
    with open(path, encoding="utf-8", errors="replace") as fh:
        while True:
            chunk = fh.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            if not follow:
                return
            if records.get_job(job_id).finished:
                rest = fh.read()
                if rest:
                    sys.stdout.write(rest)
                    sys.stdout.flush()
                return
            time.sleep(0.5)


def _jobs(
    address: str | None = typer.Option(None, "--address", help=_ADDRESS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List jobs, newest first: this machine's records, or a remote cluster's Jobs API."""
    from ldp.jobs import records

    remote = _remote_address(address)
    recs = records.remote_list(remote) if remote else records.list_jobs()
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in recs], indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    title = f"LDP jobs on {remote}" if remote else "LDP jobs"
    table = Table(title=title)
    width = max([len(r.job_id) for r in recs] + [3])
    table.add_column("job", no_wrap=True, min_width=width)  # ids are never cut
    table.add_column("kind", min_width=8)
    table.add_column("state", no_wrap=True, min_width=9)
    table.add_column("submitted")
    table.add_column("duration")
    table.add_column("result")
    for r in recs:
        if r.state == "SUCCEEDED":
            outcome = str(
                (r.result or {}).get("ref") or _metrics_text((r.result or {}).get("metrics"), 3)
            )
        elif r.error:
            outcome = r.error
        elif r.address and not remote:
            outcome = f"on {r.address}"
        else:
            outcome = ""
        submitted = _when(r.submitted_at)[5:16] if r.submitted_at else "-"  # MM-DD HH:MM
        table.add_row(r.job_id, _kind(r), r.state, submitted, _duration(r), outcome)
    if not recs:
        typer.echo("no jobs" + (f" on {remote}" if remote else ""))
        return
    Console().print(table)


def _run_job(
    job_id: str = typer.Argument(..., help="The job id."),
    spec_json: str | None = typer.Option(
        None, "--spec-json", help="The spec, when the record does not exist here (Jobs API)."
    ),
) -> None:
    """Internal: execute a job from its record (detached --no-wait jobs, Jobs API entrypoint)."""
    from ldp.errors import UsageError
    from ldp.jobs.launch import run_job

    spec = None
    if spec_json is not None:
        try:
            spec = json.loads(spec_json)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--spec-json is not valid JSON: {exc}") from exc
    run_job(job_id, spec=spec)


def register(app: typer.Typer) -> None:
    app.command("status")(_status)
    app.command("logs")(_logs)
    app.command("jobs")(_jobs)
    app.command("_run-job", hidden=True)(_run_job)

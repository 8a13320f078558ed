"""``ldp cluster up|down|status``: a local Ray head for jobs, sweeps and the dashboard."""

from __future__ import annotations

import json

import typer

__all__ = ["cluster_app", "register"]

cluster_app = typer.Typer(
    help="Start, stop and inspect a local Ray head (the default without one is an embedded Ray "
    "per command).",
    no_args_is_help=True,
)


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f} GB"


def _n(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@cluster_app.command("up")
def up(
    num_cpus: int | None = typer.Option(
        None, "--num-cpus", help="CPUs the head offers (default: all of this machine's)."
    ),
    port: int = typer.Option(6380, "--port", help="GCS port (the address drivers connect to)."),
    dashboard_port: int = typer.Option(
        8265, "--dashboard-port", help="Dashboard and Jobs API port."
    ),
    client_port: int = typer.Option(10001, "--client-port", help="Ray Client (ray://) port."),
    auth: str | None = typer.Option(
        None,
        "--auth",
        help="token (default, or RAY_AUTH_MODE) or disabled.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the head's details as JSON."),
) -> None:
    """Start a local Ray head in the background and print how to reach it."""
    from ldp import checks
    from ldp.cluster.local import auth_token_path, start_head

    for option, value in (("--port", port), ("--dashboard-port", dashboard_port), ("--client-port", client_port)):
        checks.port(option, value)
    checks.positive("--num-cpus", num_cpus)

    head = start_head(num_cpus, port, dashboard_port, client_port, auth=auth)
    if as_json:
        out = head.as_dict()
        out["auth_token_path"] = auth_token_path() if head.auth == "token" else None
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"Ray head running (pid {head.pid}, {head.num_cpus} CPUs); log: {head.log_path}")
    typer.echo(f"  address:    {head.address}")
    typer.echo(
        f"              ldp submit --address {head.address} ...   or   export RAY_ADDRESS={head.address}"
    )
    typer.echo(f"  jobs API:   --address {head.dashboard_url}")
    typer.echo(
        f"  dashboard:  {head.dashboard_url}  (this machine only; from elsewhere: "
        f"ssh -L {head.dashboard_port}:127.0.0.1:{head.dashboard_port} <this host>)"
    )
    if head.auth == "token":
        typer.echo(
            f"  auth:       token auth is on; the token is in {auth_token_path()} "
            "(`ray get-auth-token` prints it)."
        )
        typer.echo(
            "              The dashboard asks for it once; HTTP clients send "
            "'Authorization: Bearer <token>'; other drivers need RAY_AUTH_MODE=token "
            "(ldp sets it for this head). Start with --auth disabled (or RAY_AUTH_MODE=disabled) to turn it off."
        )
    else:
        typer.echo(
            "  auth:       disabled: anyone who can reach these ports can run code on this machine"
        )
    typer.echo("  stop with:  ldp cluster down")


@cluster_app.command("down")
def down(
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Stop the Ray head started by `ldp cluster up` (only that one)."""
    from ldp.cluster.local import stop_head

    head = stop_head()
    if as_json:
        typer.echo(json.dumps({"stopped": head is not None, "pid": head.pid if head else None}))
    elif head is None:
        typer.echo("no Ray head started by `ldp cluster up` is running")
    else:
        typer.echo(f"stopped the Ray head (pid {head.pid}, address {head.address})")


@cluster_app.command("status")
def status(
    address: str | None = typer.Option(
        None,
        "--address",
        help="Cluster to query (host:port or ray://); default: the head from `ldp cluster up`, "
        "else RAY_ADDRESS.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Show whether a head is running and the cluster's CPUs, GPUs and memory."""
    import os

    from ldp.cluster.connect import resolve_address
    from ldp.cluster.local import head_status
    from ldp.errors import UsageError

    note = None
    if address is None and os.environ.get("RAY_ADDRESS"):
        from ldp.cluster.local import running_head

        if running_head() is None:
            if resolve_address(os.environ["RAY_ADDRESS"])[0] == "ray":
                address = os.environ["RAY_ADDRESS"]
            else:
                note = "RAY_ADDRESS is a Jobs API URL; pass --address host:port to read resources"
    if address is not None:
        kind, resolved = resolve_address(address)
        if kind != "ray":
            raise UsageError(
                f"cluster status needs a driver address (host:port or ray://), not {address!r}"
            )
        address = resolved
    info = head_status(address)
    if note:
        info["note"] = note
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    head = info["head"]
    if head:
        typer.echo(
            f"head:       running (pid {head['pid']}, started by `ldp cluster up`, auth {head['auth']})"
        )
        typer.echo(f"dashboard:  {head['dashboard_url']}")
    else:
        typer.echo("head:       none started by `ldp cluster up` (start one with `ldp cluster up`)")
    if note:
        typer.echo(f"note:       {note}")
    if info["address"] is None:
        return
    typer.echo(f"address:    {info['address']}")
    if not info["reachable"]:
        typer.echo(f"reachable:  no ({info.get('error', 'unknown error')})")
        return
    res = info["resources"]
    tot, av = res["total"], res["available"]
    typer.echo(f"nodes:      {len(res['nodes'])}")
    typer.echo(f"CPUs:       {_n(tot['cpus'])} total, {_n(av['cpus'])} available")
    typer.echo(f"GPUs:       {_n(tot['gpus'])} total, {_n(av['gpus'])} available")
    typer.echo(f"memory:     {_gb(tot['memory_bytes'])} total, {_gb(av['memory_bytes'])} available")
    typer.echo(
        f"obj store:  {_gb(tot['object_store_memory_bytes'])} total, "
        f"{_gb(av['object_store_memory_bytes'])} available"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(cluster_app, name="cluster")

"""``ldp registry ls|show|pull|rm|verify|gc|alias|publish``: the adapter registry from a shell.

Every command takes ``--registry URL`` (default ``LDP_REGISTRY`` or ``~/.ldp/registry``) and
``--s3-endpoint URL`` (default ``LDP_S3_ENDPOINT_URL``); tables are for people, ``--json`` prints
JSON for scripts. Failures print one line and exit 1 (2 for bad input such as an invalid
reference).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ldp.errors import IntegrityError, UsageError
from ldp.units import format_bytes

__all__ = ["register", "registry_app"]

registry_app = typer.Typer(
    name="registry",
    help="Store, list, fetch and check versioned bases, adapters, routers and bundles.",
    no_args_is_help=True,
)

RegistryOpt = Annotated[
    str | None,
    typer.Option("--registry", help="Registry URL (file://, s3://). Default: LDP_REGISTRY."),
]
EndpointOpt = Annotated[
    str | None,
    typer.Option("--s3-endpoint", help="S3 endpoint URL. Default: LDP_S3_ENDPOINT_URL."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
RefArg = Annotated[
    str, typer.Argument(help="KIND/NAME@VERSION, e.g. adapters/sst2/lora-diffusion@latest")
]


def register(app: typer.Typer) -> None:
    if any(group.typer_instance is registry_app for group in app.registered_groups):
        return  # main() registers on every call; register once
    app.add_typer(registry_app, name="registry")


def _open(registry: str | None, s3_endpoint: str | None):
    from ldp.paths import default_registry_url
    from ldp.store import Registry

    url = registry or default_registry_url()
    options: dict[str, Any] | None = None
    if s3_endpoint:
        if not url.startswith(("s3://", "s3a://")):
            raise UsageError("--s3-endpoint applies to s3:// registries only")
        options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    return Registry(url, options)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _size(n: int) -> str:
    return format_bytes(n, binary=True)


def _console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped: do not fold references and digests at 80 columns
        console = Console(width=200)
    return console


def _table(*columns: str):
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in columns:
        table.add_column(col, overflow="fold", no_wrap=col not in ("PROBLEMS", "VALUE", "REASON"))
    return table


@registry_app.command("ls")
def ls_cmd(
    prefix: Annotated[
        str | None, typer.Argument(help="adapters, adapters/sst2, bases/tiny, or a full ref")
    ] = None,
    registry: RegistryOpt = None,
    s3_endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List versions: reference, size, manifest digest, creation time, aliases."""
    infos = _open(registry, s3_endpoint).ls(prefix)
    if as_json:
        _print_json([i.to_dict() for i in infos])
        return
    table = _table("REF", "SIZE", "DIGEST", "CREATED", "ALIASES", "JOB")
    for i in infos:
        tags = list(i.aliases) + (["latest"] if i.latest else [])
        digest = i.digest.split(":", 1)[-1][:12]
        table.add_row(str(i.ref), _size(i.size), digest, i.created, ",".join(tags), i.job or "")
    _console().print(table if infos else "no versions")


@registry_app.command("show")
def show_cmd(
    ref: RefArg,
    registry: RegistryOpt = None,
    s3_endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One version: where it is, its digest, aliases, base, metadata and files."""
    info = _open(registry, s3_endpoint).show(ref)
    if as_json:
        _print_json(info)
        return
    manifest = info["manifest"]
    head = _table("FIELD", "VALUE")
    for key in ("ref", "location", "digest"):
        head.add_row(key, str(info[key]))
    head.add_row("size", _size(info["size"]))
    head.add_row("aliases", ",".join(info["aliases"] + (["latest"] if info["latest"] else [])))
    head.add_row("created", manifest.get("created") or "")
    head.add_row("job", manifest.get("job") or "")
    base = manifest.get("base") or {}
    head.add_row("base", f"{base.get('ref')} ({base.get('digest')})" if base else "")
    head.add_row("metadata", json.dumps(manifest.get("metadata") or {}, sort_keys=True))
    files = _table("FILE", "SIZE", "SHA256")
    for name, entry in manifest["files"].items():
        files.add_row(name, _size(entry["size"]), entry["sha256"])
    console = _console()
    console.print(head)
    console.print(files)


@registry_app.command("pull")
def pull_cmd(
    ref: RefArg,
    to: Annotated[
        str | None, typer.Option("--to", help="Folder to create (absent or empty).")
    ] = None,
    registry: RegistryOpt = None,
    s3_endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a version into the local cache and materialise it as a folder; prints the path."""
    reg = _open(registry, s3_endpoint)
    resolved = reg.resolve(ref)
    path = reg.pull(resolved, to=to)
    if as_json:
        _print_json({"ref": str(resolved), "path": str(path)})
    else:
        print(path)


@registry_app.command("rm")
def rm_cmd(
    ref: Annotated[str, typer.Argument(help="KIND/NAME@VERSION (a number or an alias)")],
    force: Annotated[
        bool, typer.Option("--force", help="Remove even if aliases point at it (unsets them).")
    ] = False,
    registry: RegistryOpt = None,
    s3_endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove one version; its number is never reused."""
    removed = _open(registry, s3_endpoint).rm(ref, force=force)
    if as_json:
        _print_json({"removed": str(removed)})
    else:
        print(f"removed {removed}")


@registry_app.command("verify")
def verify_cmd(
    ref: Annotated[str | None, typer.Argument(help="One version; default: all")] = None,
    registry: RegistryOpt = None,
    s3_endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-hash stored files against their manifests; exit 1 naming the first bad file."""
    results = _open(registry, s3_endpoint).verify(ref)
    if as_json:
        _print_json([r.to_dict() for r in results])
    else:
        table = _table("REF", "STATUS", "PROBLEMS")
        for r in results:
            table.add_row(r.ref, "ok" if r.ok else "FAILED", "; ".join(r.problems))
        _console().print(table if results else "no versions")
    problems = [p for r in results for p in r.problems]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise IntegrityError(problems[0] + more)


@registry_app.command("gc")
def gc_cmd(
    grace: Annotated[
        float,
        typer.Option(
            "--grace", min=0, help="Seconds without progress before a publish is abandoned."
        ),
    ] = 3600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report.")] = False,
    registry: RegistryOpt = None,
    s3_endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove the leftovers of dead publishers and removed versions."""
    records = _open(registry, s3_endpoint).gc(grace, dry_run=dry_run)
    if as_json:
        _print_json([r.to_dict() for r in records])
        return
    table = _table("VERSION", "REASON", "OBJECTS")
    for r in records:
        table.add_row(r.version, r.reason, str(len(r.removed)))
    _console().print(table if records else "nothing to collect")


@registry_app.command("alias")
def alias_cmd(
    ref: RefArg,
    name: Annotated[str, typer.Argument(help="Alias name, e.g. prod")],
    expect: Annotated[
        str | None,
        typer.Option(
            "--expect", help="Move only if the alias now holds this version ('none': unset)."
        ),
    ] = None,
    registry: RegistryOpt = None,
    s3_endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Point an alias at a version (compare-and-swap)."""
    from ldp.store import ANY

    expected: Any = ANY
    if expect is not None:
        if expect.lower() == "none":
            expected = None
        elif expect.isdigit():
            expected = int(expect)
        else:
            raise UsageError(f"--expect takes a version number or 'none', got {expect!r}")
    target = _open(registry, s3_endpoint).set_alias(ref, name, expect=expected)
    if as_json:
        _print_json({"alias": f"{target.key}@{name}", "ref": str(target)})
    else:
        print(f"{target.key}@{name} -> {target}")


@registry_app.command("publish")
def publish_cmd(
    kind_name: Annotated[str, typer.Argument(help="KIND/NAME, e.g. adapters/sst2/lora-diffusion")],
    path: Annotated[str, typer.Argument(help="Folder (or file) to publish")],
    job: Annotated[str | None, typer.Option("--job", help="Creating job id")] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Base reference, e.g. bases/tiny@3")
    ] = None,
    meta: Annotated[
        list[str] | None, typer.Option("--meta", help="Metadata key=value (repeatable)")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Publish files outside the kind's layout too")
    ] = False,
    registry: RegistryOpt = None,
    s3_endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a folder as the next version; prints its reference.

    Only files of the kind's layout are accepted (weights as safetensors, JSON/YAML configs,
    tokenizer and text files; see ``ldp.store.layout``) unless ``--force``."""
    import yaml

    from ldp.store.layout import layout_problems

    kind = kind_name.strip().strip("/").split("/")[0]
    problems = layout_problems(kind, path)
    if problems and not force and not problems[0].endswith("no such file or folder"):
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UsageError(f"refusing to publish: {problems[0]}{more}; --force publishes anyway")

    metadata: dict[str, Any] = {}
    for pair in meta or ():
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--meta expects key=value, got {pair!r}")
        try:
            metadata[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            metadata[key.strip()] = raw
    ref = _open(registry, s3_endpoint).publish(
        kind_name, path, job=job, base=base, metadata=metadata
    )
    if as_json:
        _print_json({"ref": str(ref)})
    else:
        print(ref)

"""``ldp infra check [--schemas DIR] FILE...``: validate KubeRay manifests offline.

Without ``--schemas`` the manifests are checked against the project's minimal, closed schemas of
the fields LDP writes (``ldp.cluster.schemas``); with it, against the operator's own CRDs
(``ray.io_rayclusters.yaml``, ``ray.io_rayjobs.yaml``, ``ray.io_rayservices.yaml`` in DIR, e.g.
``ray-operator/config/crd/bases`` of your KubeRay release). Either way the operator rules no
schema states and the embedded ``serveConfigV2``/``runtimeEnvYAML`` are checked too (see
``ldp.cluster.validate``). Prints one line per manifest; exit 0 when all pass, 1 otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ldp.errors import LdpError

infra_app = typer.Typer(help="Deployment manifests (KubeRay): check them offline.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(infra_app, name="infra")


@infra_app.command("check")
def check(
    files: list[Path] = typer.Argument(..., help="Manifest files (YAML, one or more documents each)."),
    schemas: Optional[Path] = typer.Option(
        None, "--schemas", help="Folder with the KubeRay CRDs (ray.io_*.yaml) of your operator version."
    ),
) -> None:
    """Check KubeRay RayCluster/RayJob/RayService manifests against schemas and operator rules."""
    from ldp.cluster.schemas import builtin_schemas
    from ldp.cluster.validate import check_file, load_crd_schemas

    table = load_crd_schemas(schemas) if schemas is not None else builtin_schemas()
    results = [(path, check_file(path, table)) for path in files]  # all files read before output
    bad = 0
    for path, docs in results:
        for label, problems in docs:
            if not problems:
                typer.echo(f"ok   {path}: {label}")
                continue
            bad += 1
            typer.echo(f"FAIL {path}: {label}: {problems[0]}")
            for more in problems[1:]:
                typer.echo(f"     {path}: {label}: {more}")
    total = sum(len(docs) for _, docs in results)
    if bad:
        raise LdpError(f"{bad} of {total} manifest(s) failed the check")

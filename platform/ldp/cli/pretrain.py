"""``ldp pretrain``: a base denoiser on a text corpus (native size or warm start)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ldp.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)


def pretrain(
    size: str = typer.Option("tiny", "--size", help="Size preset (see `ldp sizes`)."),
    init: Optional[str] = typer.Option(
        None, "--init", help="Warm start from a HF encoder/masked LM: hub id, folder, or `minilm`."
    ),
    corpus: str = typer.Option("wikitext", "--corpus", help="wikitext | arxiv | code | a text file/folder."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps (default 300)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data mirror (default LDP_DATA_DIR, else the hub)."),
    registry: Optional[str] = typer.Option(None, "--registry", help="Registry URL (default LDP_REGISTRY or ~/.ldp/registry)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also keep the run (checkpoints, metrics, base) in this folder."),
    no_publish: bool = typer.Option(False, "--no-publish", help="Do not publish to the registry (needs --out)."),
    name: Optional[str] = typer.Option(None, "--name", help="Registry name bases/<name> (default: the size)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML PretrainConfig."),
    sets: list[str] = typer.Option([], "--set", help="Override a config key: --set loop.batch_size=8."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics JSON here."),
) -> None:
    """Train a base masked-diffusion LM; report validation ELBO perplexity before and after."""
    from ldp import config as cfgmod
    from ldp.models.sizes import size_names

    if size not in size_names():
        raise UsageError(f"unknown size {size!r}; choose from {', '.join(size_names())}")
    if no_publish and out is None:
        raise UsageError("--no-publish needs --out (the base would be lost)")
    overrides: dict = {"size": size, "corpus": corpus}
    if init is not None:
        overrides["init"] = init
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if steps is not None:
        overrides["loop.max_steps"] = steps
    if name is not None:
        overrides["name"] = name
    overrides.update(cfgmod.parse_overrides(sets))

    from ldp.training.recipes.pretrain import PretrainConfig, run_pretrain

    cfg = cfgmod.load(PretrainConfig, config, overrides)
    result = run_pretrain(cfg, registry=registry, out_dir=out, publish=not no_publish)
    if json_out is not None:
        json_out.write_text(json.dumps({"ref": result.ref, **result.metrics}, indent=2))

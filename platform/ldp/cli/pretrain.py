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
    size: Optional[str] = typer.Option(None, "--size", help="Size preset (see `ldp sizes`; default tiny)."),
    init: Optional[str] = typer.Option(
        None, "--init", help="Warm start from a HF encoder/masked LM: hub id, folder, or `minilm`."
    ),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="wikitext | arxiv | code | a text file/folder (default wikitext)."),
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
    from ldp import checks
    from ldp import config as cfgmod
    from ldp.models.presets import size_names

    if size is not None and size not in size_names():
        raise UsageError(f"unknown size {size!r}; choose from {', '.join(size_names())}")
    if no_publish and out is None:
        raise UsageError("--no-publish needs --out (the base would be lost)")
    checks.positive("--steps", steps)
    checks.data_location("--data-dir", data_dir)
    checks.output_folder("--out", out)
    checks.output_file("--json", json_out)
    if not no_publish:
        checks.registry_location("--registry", registry)
    # Options the user gave override the config file; options left out leave it alone.
    overrides: dict = {}
    if size is not None:
        overrides["size"] = size
    if corpus is not None:
        overrides["corpus"] = corpus
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
    if cfg.name is not None or not no_publish:
        from ldp.store.refs import check_name

        check_name(cfg.name or cfg.size)
    if cfg.train_limit is not None and cfg.train_limit < cfg.loop.batch_size:
        raise UsageError(
            f"train_limit={cfg.train_limit} is fewer blocks than one batch ({cfg.loop.batch_size})"
        )
    if not no_publish:
        from ldp.store import Registry

        Registry(registry)  # an unusable registry URL fails now, not after training
    result = run_pretrain(cfg, registry=registry, out_dir=out, publish=not no_publish)
    if json_out is not None:
        json_out.write_text(json.dumps({"ref": result.ref, **result.metrics}, indent=2))

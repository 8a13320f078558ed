"""``ldp eval``: score an adapter (or a bare base) on a task split; JSON and a table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ldp.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)


def eval_command(
    task: str = typer.Option(..., "--task", help="Task key (see `ldp tasks`)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="adapters/TASK/METHOD@VERSION or a folder."),
    base: Optional[str] = typer.Option(None, "--base", help="bases/NAME@VERSION or a folder (no adapter)."),
    split: str = typer.Option("validation", "--split", help="validation | test | train."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data mirror (default LDP_DATA_DIR, else the hub)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score at most N examples."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps for generation."),
    mode: str = typer.Option("auto", "--mode", help="auto | generate | likelihood (verbaliser ELBO)."),
    samples: int = typer.Option(4, "--elbo-samples", help="Monte-Carlo samples per candidate (likelihood)."),
    batch_size: int = typer.Option(16, "--batch-size"),
    registry: Optional[str] = typer.Option(None, "--registry", help="Registry URL."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the result JSON here ('-' for stdout)."),
) -> None:
    """Generate (or score verbalisers) for each example and print the task's metrics."""
    from ldp.data.tasks import get_task

    get_task(task)
    if adapter is None and base is None:
        raise UsageError("give --adapter REF or --base REF")
    if split not in ("train", "validation", "test"):
        raise UsageError(f"--split must be train, validation or test, got {split!r}")
    if limit is not None and limit < 1:
        raise UsageError("--limit must be >= 1")
    if mode not in ("auto", "generate", "likelihood"):
        raise UsageError(f"--mode must be auto, generate or likelihood, got {mode!r}")

    from ldp.bases import load_adapted, resolve_base
    from ldp.evaluation import evaluate_task
    from ldp.models.loading import load_base

    if adapter is not None:
        model, tokenizer, info = load_adapted(adapter, registry, base)
    else:
        source = resolve_base(base, registry)
        model, tokenizer = load_base(source.folder)
        info = {"adapter": None, "base": source.ref}
    result = evaluate_task(
        model, tokenizer, task, split=split, data_dir=data_dir, limit=limit, mode=mode,
        steps=steps, elbo_samples=samples, batch_size=batch_size,
    )
    payload = result.to_dict(adapter=info.get("adapter"), base=info.get("base"))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.task} / {result.split}  (n={result.n}, {result.mode})")
    table.add_column("metric")
    table.add_column("score", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name + (" *" if name == result.primary else ""), f"{value:.4f}")
    if json_path is not None and str(json_path) == "-":
        print(json.dumps(payload, indent=2))
        return
    Console().print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(payload, indent=2))

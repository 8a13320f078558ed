"""``ldp bench``: time per step, peak memory, generation latency, trainable parameters and
adapter bytes for every method, measured side by side in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ldp.errors import UsageError


def register(app: typer.Typer) -> None:
    from ldp.cli.serve import bench_serve

    group = typer.Typer(help="Efficiency tables measured side by side; `ldp bench serve` for serving.")
    group.callback(invoke_without_command=True)(bench)
    group.command("serve")(bench_serve)
    app.add_typer(group, name="bench")


def bench(
    ctx: typer.Context,
    size: str = typer.Option("tiny", "--size", help="Native size preset to measure on."),
    base: Optional[str] = typer.Option(None, "--base", help="Measure on this base (registry ref or folder) instead."),
    methods: list[str] = typer.Option([], "--methods", help="Methods to measure (repeatable; default all)."),
    batch: int = typer.Option(16, "--batch"),
    seq: int = typer.Option(128, "--seq"),
    steps: int = typer.Option(10, "--steps", help="Timed steps per method (after 3 warm-up steps)."),
    base_dtype: str = typer.Option("auto", "--base-dtype", help="auto | bf16 | fp32: frozen base forward precision (auto: bf16 only where the hardware has it natively)."),
    registry: Optional[str] = typer.Option(None, "--registry"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the results JSON here."),
) -> None:
    """Paper Table 9, measured: every method in its own fresh process on the same batch."""
    if ctx.invoked_subcommand is not None:
        return
    from ldp.bench import BenchConfig, run_bench
    from ldp.methods import METHOD_NAMES
    from ldp.models.presets import size_names

    if size not in size_names():
        raise UsageError(f"unknown size {size!r}; choose from {', '.join(size_names())}")
    chosen = [m for item in methods for m in item.split(",") if m] or list(METHOD_NAMES)
    unknown = [m for m in chosen if m not in METHOD_NAMES]
    if unknown:
        raise UsageError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHOD_NAMES)}")
    if min(batch, seq, steps) < 1 or seq <= 16:
        raise UsageError("--batch and --steps must be >= 1 and --seq > 16")
    if base_dtype not in ("auto", "bf16", "fp32"):
        raise UsageError("--base-dtype must be auto, bf16 or fp32")
    from ldp import checks

    checks.output_file("--json", json_path)
    checks.registry_location("--registry", registry)
    cfg = BenchConfig(size=size, base=base, registry=registry, batch=batch, seq=seq, steps=steps,
                      base_dtype=base_dtype)
    out = run_bench(chosen, cfg, log=lambda m: typer.echo(m, err=True))

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ldp bench: {base or size}, batch {batch} x {seq}, base in {out['base_dtype']}")
    for col in ("method", "step (ms)", "x frozen fwd", "peak (MB)", "gen (ms)", "trainable", "%", "adapter (KB)"):
        table.add_column(col, justify="right" if col != "method" else "left")
    frozen = out["frozen_forward_s"]
    table.add_row("frozen forward", f"{frozen * 1e3:.1f}", "1.00", "-", "-", "0", "0", "-")
    hidden = out["frozen_hidden_s"]
    table.add_row("  base states only", f"{hidden * 1e3:.1f}", f"{hidden / frozen:.2f}", "-", "-", "0", "0", "-")
    for name, m in out["methods"].items():
        table.add_row(
            name, f"{m['step_s'] * 1e3:.1f}", f"{m['step_s'] / frozen:.2f}",
            f"{m['peak_bytes'] / 2**20:.1f}", f"{m['gen_latency_s'] * 1e3:.0f}",
            f"{m['trainable_params']:,}", f"{m['trainable_pct']:.2f}", f"{m['adapter_bytes'] / 1024:.0f}",
        )
    console = Console()
    console.print(table)
    for key, value in out["ratios"].items():
        console.print(f"{key}: {value}")
    if json_path is not None:
        json_path.write_text(json.dumps(out, indent=2))

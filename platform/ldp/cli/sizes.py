"""``ldp sizes``: every base size's shape, parameter count and bf16 weight bytes.

Counted on the ``meta`` device (nothing is allocated, ``7b`` included). The rows come from
:func:`size_rows`, one dict per size, and the table's columns from :data:`COLUMNS`; per-strategy
memory columns (``--gpus N --gpu-mem GB``) extend both.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from ldp.units import format_bytes, format_count

__all__ = ["register", "size_rows", "COLUMNS"]

COLUMNS: list[tuple[str, str]] = [
    ("size", "size"),
    ("layers", "layers"),
    ("hidden", "hidden"),
    ("heads", "heads"),
    ("ffn", "FFN"),
    ("vocab", "vocab"),
    ("max_len", "max len"),
    ("params", "parameters"),
    ("bf16_bytes", "bf16 weights"),
]
"""(row key, column title) of the table, in order."""


def size_rows(names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per size: shape, ``params`` (distinct parameters), ``bf16_bytes``, and the counts
    a memory estimate needs (``embedding``, ``largest_layer``)."""
    from ldp.models.sizes import SIZES, count_parameters, size_config

    rows = []
    for name in names or list(SIZES):
        config = size_config(name)
        counts = count_parameters(config)
        rows.append(
            {
                "size": name,
                "layers": config.num_hidden_layers,
                "hidden": config.hidden_size,
                "heads": config.num_attention_heads,
                "ffn": config.intermediate_size,
                "vocab": config.vocab_size,
                "max_len": config.max_position_embeddings,
                "params": counts["total"],
                "bf16_bytes": counts["bf16_bytes"],
                "embedding": counts["embedding"],
                "largest_layer": counts["largest_layer"],
            }
        )
    return rows


def _cell(key: str, value: Any) -> str:
    if key == "params":
        return format_count(value)
    if key.endswith("bytes"):
        return format_bytes(value)
    return str(value)


def trainable_on_meta(size: str, method: str = "lora-diffusion") -> int:
    """Trainable parameters of ``method``'s default config on ``size``, counted on meta."""
    from ldp.jobs.plan import trainable_on_meta as count

    return count(size, method)


def memory_rows(rows: list[dict[str, Any]], gpus: int, gpu_mem_gb: float) -> list[dict[str, Any]]:
    """Per size and method (lora-diffusion vs full fine-tuning): per-GPU bytes under each
    strategy and what ``--strategy auto`` picks (``ldp.cluster.memory_table``)."""
    from ldp.cluster import memory_table

    out = []
    for row in rows:
        by_method = {"lora-diffusion": trainable_on_meta(row["size"]), "full": row["params"]}
        for mem in memory_table(
            row["params"], by_method, gpus, int(gpu_mem_gb * 1e9),
            largest_layer_params=row["largest_layer"],
        ):
            out.append({"size": row["size"], **mem.as_dict()})
    return out


def sizes(
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON (one object per size) instead of a table."
    ),
    gpus: int | None = typer.Option(
        None, "--gpus", help="Also estimate per-GPU memory per strategy on this many GPUs."
    ),
    gpu_mem: float = typer.Option(80.0, "--gpu-mem", help="Memory per GPU in GB (with --gpus)."),
) -> None:
    """Every base size: layers, hidden, heads, FFN, vocab, max length, parameters, bf16 bytes;
    with ``--gpus N --gpu-mem GB``, memory per GPU for adapter training vs full fine-tuning under
    each strategy and what ``--strategy auto`` would pick."""
    from ldp.errors import UsageError

    if gpus is not None and gpus < 1:
        raise UsageError("--gpus must be >= 1")
    if not 0 < gpu_mem < 100_000:  # also refuses nan and inf
        raise UsageError(f"--gpu-mem is GB per GPU (e.g. 80), got {gpu_mem}")
    rows = size_rows()
    memory = memory_rows(rows, gpus, gpu_mem) if gpus else None
    if as_json:
        print(json.dumps(rows if memory is None else {"sizes": rows, "memory": memory}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(box=None, header_style="bold")
    for key, title in COLUMNS:
        table.add_column(title, justify="left" if key == "size" else "right")
    for row in rows:
        table.add_row(*(_cell(key, row[key]) for key, _ in COLUMNS))
    console.print(table)
    print("Counted on the meta device (no memory allocated); the head is tied to the embedding.")
    if memory is None:
        return
    strategies = list(memory[0]["per_gpu_bytes"])
    mt = Table(title=f"Model-state memory per GPU on {gpus} x {gpu_mem:g} GB (activations excluded)",
               box=None, header_style="bold")
    for title in ("size", "method", "trainable", *strategies, "auto"):
        mt.add_column(title, justify="left" if title in ("size", "method", "auto") else "right")
    for m in memory:
        cells = [
            format_bytes(m["per_gpu_bytes"][s]) + ("" if m["fits"][s] else " ✗") for s in strategies
        ]
        mt.add_row(m["size"], m["method"], format_count(m["trainable_params"]), *cells, m["auto"] or "none fits")
    console.print(mt)


def register(app: typer.Typer) -> None:
    app.command("sizes")(sizes)

"""``ldp sizes``: every base size's shape, parameter count and bf16 weight bytes.

Counted on the ``meta`` device (nothing is allocated, ``7b`` included). The rows come from
:func:`size_rows`, one dict per size, and the table's columns from :data:`COLUMNS`; per-strategy
memory columns (``--gpus N --gpu-mem GB``) extend both.
"""

from __future__ import annotations

import json
from typing import Any

import typer

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


def _human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _human_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _cell(key: str, value: Any) -> str:
    if key == "params":
        return _human_count(value)
    if key.endswith("bytes"):
        return _human_bytes(value)
    return str(value)


def sizes(
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON (one object per size) instead of a table."
    ),
) -> None:
    """Every base size: layers, hidden, heads, FFN, vocab, max length, parameters, bf16 bytes."""
    rows = size_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for key, title in COLUMNS:
        table.add_column(title, justify="left" if key == "size" else "right")
    for row in rows:
        table.add_row(*(_cell(key, row[key]) for key, _ in COLUMNS))
    Console().print(table)
    print("Counted on the meta device (no memory allocated); the head is tied to the embedding.")


def register(app: typer.Typer) -> None:
    app.command("sizes")(sizes)

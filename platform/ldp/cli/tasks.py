"""``ldp tasks``: the 15-task suite at a glance (specs, metrics, local sample sizes)."""

from __future__ import annotations

import json
from typing import Any

import typer

__all__ = ["register", "task_rows"]


def task_rows(data_dir: str | None) -> tuple[str | None, list[dict[str, Any]]]:
    """(resolved mirror or None, one dict per task) — the data behind the table and ``--json``."""
    from ldp.data.loading import count_rows, resolve_data_dir
    from ldp.data.tasks import SPLITS, all_tasks

    from ldp import checks

    checks.data_location("--data-dir", data_dir)
    location = resolve_data_dir(data_dir)
    rows = []
    for spec in all_tasks():
        counts = None
        if location is not None:
            counts = {split: count_rows(spec, split, location) for split in SPLITS}
        rows.append(
            {
                "key": spec.name,
                "family": spec.family,
                "dataset": spec.dataset,
                "config": spec.config,
                "hub_splits": dict(spec.splits),
                "metrics": list(spec.metrics_ordered),
                "primary_metric": spec.primary_metric,
                "max_new_tokens": spec.max_new_tokens,
                "counts": counts,
            }
        )
    return location, rows


def register(app: typer.Typer) -> None:
    @app.command("tasks")
    def tasks(
        data_dir: str | None = typer.Option(
            None,
            "--data-dir",
            help="Data mirror (folder or s3:// URL) whose sample sizes to show; default "
            "LDP_DATA_DIR; 'hub' shows none.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """List the 15 tasks: family, hub dataset, metrics (primary first), local sample counts."""
        location, rows = task_rows(data_dir)
        if as_json:
            typer.echo(json.dumps({"data_dir": location, "tasks": rows}, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        from ldp.data.tasks import SPLITS

        title = f"LDP tasks (samples in {location})" if location else "LDP tasks"
        table = Table(title=title)
        table.add_column("task", no_wrap=True)
        table.add_column("family", no_wrap=True)
        table.add_column("dataset")
        table.add_column("metrics")
        if location is not None:
            for split in SPLITS:
                table.add_column(split, justify="right", no_wrap=True)
        for row in rows:
            dataset = row["dataset"] + (f" ({row['config']})" if row["config"] else "")
            cells = [row["key"], row["family"], dataset, ", ".join(row["metrics"])]
            if row["counts"] is not None:
                cells += ["-" if row["counts"][s] is None else str(row["counts"][s]) for s in SPLITS]
            table.add_row(*cells)
        Console().print(table)

"""Report figures (PNG, matplotlib's Agg backend) drawn from the results dict.

``draw_figures(results, folder)`` writes every figure the results allow and records each file
name in its section's ``figures`` list, which is what the Markdown links.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = ["draw_figures"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(folder / name, dpi=110)
    _plt().close(fig)
    return name


def _effective_rank(s: dict[str, Any], folder: Path) -> list[str]:
    rows = [r for r in s["rows"] if r.get("ranks")]
    if not rows:
        return []
    plt = _plt()
    phases = list(rows[0]["ranks"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.bar([j + i * width for j in range(len(phases))], [r["ranks"][p] for p in phases], width, label=r["task"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(phases))], phases)
    ax.set_ylabel("effective rank (Eq. 28)")
    ax.set_title("Effective rank by phase")
    ax.legend(fontsize=8)
    return [_save(fig, folder, "effective_rank.png")]


def _data_efficiency(s: dict[str, Any], folder: Path) -> list[str]:
    from ldp.jobs.report_sections import data_curves

    curves = data_curves(s)
    if not curves:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for ax, (task, per_method) in zip(axes[0], curves.items()):
        for method, points in per_method.items():
            xs = sorted(points)
            ax.plot([100 * x for x in xs], [points[x] for x in xs], marker="o", label=method)
        ax.set_title(task)
        ax.set_xlabel("% of training examples")
        ax.set_ylabel("score")
        ax.legend(fontsize=8)
    return [_save(fig, folder, "data_efficiency.png")]


def _trajectories(s: dict[str, Any], folder: Path) -> list[str]:
    models = s.get("models") or {}
    if not models:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (kind, m) in zip(axes[0], models.items()):
        tasks = list(dict.fromkeys(m["task"]))
        for j, task in enumerate(tasks):
            idx = [i for i, t in enumerate(m["task"]) if t == task]
            xs, ys = [m["x"][i] for i in idx], [m["y"][i] for i in idx]
            ax.scatter(xs, ys, s=10, color=colours[j % len(colours)], label=task, alpha=0.7)
            # one line per trajectory: consecutive points of the same example
            start = 0
            for k in range(1, len(idx) + 1):
                if k == len(idx) or m["point"][idx[k]] == 0:
                    ax.plot(xs[start:k], ys[start:k], color=colours[j % len(colours)], alpha=0.3, lw=0.8)
                    start = k
        sep = m.get("separation")
        ax.set_title(f"{kind} (separation {sep:.2f})" if sep is not None else kind)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=8)
    return [_save(fig, folder, "trajectories.png")]


def _loss_curves(s: dict[str, Any], folder: Path) -> list[str]:
    by_task: dict[str, list[dict[str, Any]]] = {}
    for c in s["runs"]:
        if c.get("loss"):
            by_task.setdefault(c["task"], []).append(c)
    plt = _plt()
    names = []
    for task, curves in by_task.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for c in curves:
            ax.plot(c["steps"], c["loss"], label=c["label"], lw=1)
        ax.set_title(f"Training loss: {task}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=6, ncol=2)
        slug = re.sub(r"[^a-z0-9]+", "_", task.lower())
        names.append(_save(fig, folder, f"loss_{slug}.png"))
    return names


DRAWERS = {
    "effective_rank": _effective_rank, "data_efficiency": _data_efficiency,
    "trajectories": _trajectories, "loss_curves": _loss_curves,
}


def draw_figures(results: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, draw in DRAWERS.items():
        section = (results.get("sections") or {}).get(key)
        if section and section.get("status") == "ok":
            section["figures"] = draw(section, folder)

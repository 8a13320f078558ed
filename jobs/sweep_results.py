"""A finished sweep's results: the table (printed, CSV, JSON), the plot, the published records.

:func:`collect` turns Tune's ``ResultGrid`` into one :class:`TrialRow` per trial;
:func:`best_row` picks the best finished trial; :func:`publish` stores the best trial's adapter as
``adapters/<task>/<method>@N`` (sweep name and parameters in its metadata) and the whole sweep —
``results.csv``, ``results.json``, ``grid.yaml``, ``best.json``, ``plot.png``, ``metrics.json`` —
as ``sweeps/<name>@M``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ldp.errors import LdpError

__all__ = ["TrialRow", "best_row", "collect", "format_table", "plot", "publish", "write_table"]


@dataclass
class TrialRow:
    trial: str
    params: dict[str, Any]
    """Search key (as written in the grid file) -> value."""
    status: str
    """``finished``, ``stopped early`` (by the scheduler) or ``error``."""
    metric: float | None
    """The sweep's metric (None for trials that did not finish)."""
    val_loss: float | None
    steps: int | None
    seconds: float | None
    """The trial's wall time as Tune measured it (training, evaluation, Tune's own work)."""
    train_loop_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """The trial's last report (artifact path, eval seconds, the task's other metrics, ...)."""
    error: str | None = None

    @property
    def stopped_early(self) -> bool:
        return self.status == "stopped early"


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def collect(results: Any, plan: dict[str, Any]) -> list[TrialRow]:
    """One row per trial of a Tune ``ResultGrid`` (ordered by trial id, i.e. grid order)."""
    from ldp.jobs.sweep_trial import DONE_KEY

    search_names = _display_names(plan)
    rows = []
    for result in results:
        metrics = dict(result.metrics or {})
        config = dict(result.config or {})
        trial = str(metrics.get("trial_id") or Path(str(result.path)).name)
        params = {search_names.get(k, k): config[k] for k in config if k in search_names}
        if result.error is not None:
            status = "error"
        elif metrics.get(DONE_KEY):
            status = "finished"
        else:
            status = "stopped early"
        rows.append(TrialRow(
            trial=trial,
            params=params,
            status=status,
            metric=_num(metrics.get(plan["metric"])) if status == "finished" else None,
            val_loss=_num(metrics.get("val_loss")),
            steps=int(metrics["step"]) if _num(metrics.get("step")) is not None else None,
            seconds=_num(metrics.get("time_total_s")),
            train_loop_seconds=_num(metrics.get("train_loop_seconds")),
            extra={k: v for k, v in metrics.items() if k not in ("config",)},
            error=(str(result.error).strip().splitlines() or [""])[0][:300] if result.error else None,
        ))
    rows.sort(key=lambda r: r.trial)
    return rows


def _display_names(plan: dict[str, Any]) -> dict[str, str]:
    """Spec-level key (``train.optim.lr``) -> the key as the grid file wrote it."""
    out = {}
    written = plan["config"]["search"]
    from ldp.jobs.sweep_grid import spec_key

    for key in written:
        out[spec_key(key)] = key
    return out


def best_row(rows: list[TrialRow], mode: str) -> TrialRow | None:
    done = [r for r in rows if r.status == "finished" and r.metric is not None]
    if not done:
        return None
    pick = max if mode == "max" else min
    return pick(done, key=lambda r: r.metric)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table_rows(rows: list[TrialRow], plan: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    names = list(plan["config"]["search"])
    header = ["trial", *names, plan["metric"], "val_loss", "steps", "stopped early", "time_s"]
    body = []
    for r in rows:
        body.append([
            r.trial, *(r.params.get(n) for n in names), r.metric, r.val_loss, r.steps,
            "yes" if r.stopped_early else ("error" if r.status == "error" else "no"),
            round(r.seconds, 1) if r.seconds is not None else None,
        ])
    return header, body


def format_table(rows: list[TrialRow], plan: dict[str, Any], best: TrialRow | None) -> str:
    """The results table as aligned text (``*`` marks the best trial)."""
    header, body = table_rows(rows, plan)
    cells = [header] + [[_fmt(v) for v in line] for line in body]
    marks = [""] + ["*" if best is not None and r.trial == best.trial else "" for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = []
    for mark, line in zip(marks, cells):
        lines.append(f"{mark:1} " + "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    return "\n".join(lines)


def write_table(rows: list[TrialRow], plan: dict[str, Any], folder: Path) -> None:
    """``results.csv`` (the printed columns) and ``results.json`` (every field) into ``folder``."""
    header, body = table_rows(rows, plan)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in line] for line in body])
    (folder / "results.csv").write_text(buf.getvalue())
    data = [{**asdict(r), "stopped_early": r.stopped_early} for r in rows]
    (folder / "results.json").write_text(json.dumps(data, indent=2, default=str))


def plot(rows: list[TrialRow], plan: dict[str, Any], path: Path) -> None:
    """``plot.png``: the sweep's metric against each swept parameter, one panel per parameter.

    Finished trials are dots; trials stopped early have no task metric and are drawn as crosses
    at their last validation loss on a second axis when the metric is not the loss itself."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = list(plan["config"]["search"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        dist = next(iter(plan["config"]["search"][name]))
        done = [r for r in rows if r.metric is not None and _num(r.params.get(name)) is not None]
        xs = [float(r.params[name]) for r in done]
        ax.scatter(xs, [r.metric for r in done], color="tab:blue", label=f"{plan['metric']} (finished)")
        stopped = [r for r in rows if r.stopped_early and r.val_loss is not None
                   and _num(r.params.get(name)) is not None]
        if stopped and plan["metric"] != "val_loss":
            twin = ax.twinx()
            twin.scatter([float(r.params[name]) for r in stopped], [r.val_loss for r in stopped],
                         marker="x", color="tab:red", label="val_loss (stopped early)")
            twin.set_ylabel("val_loss (stopped early)", color="tab:red")
        positive = [float(r.params[name]) for r in rows if (_num(r.params.get(name)) or 0) > 0]
        if dist == "loguniform" or (positive and len(positive) == len(rows)
                                    and max(positive) / min(positive) >= 30):
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(plan["metric"])
        ax.grid(alpha=0.3)
    fig.suptitle(f"sweep {plan['name']}: {plan['metric']} ({plan['mode']}) per parameter")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _artifact_folder(path: str, storage_path: str, into: Path) -> Path:
    """The best trial's exported adapter as a local folder (downloaded from remote storage)."""
    import pyarrow.fs

    if "://" not in storage_path or storage_path.startswith("file://"):
        local = Path(path)
        if not local.is_dir():
            raise LdpError(f"the best trial's adapter is missing from {local}")
        return local
    fs, _ = pyarrow.fs.FileSystem.from_uri(storage_path)
    pyarrow.fs.copy_files(path, str(into), source_filesystem=fs)
    return into


def publish(
    rows: list[TrialRow],
    best: TrialRow,
    plan: dict[str, Any],
    *,
    job_id: str,
    experiment: str,
    base: str,
    storage_path: str,
    wall_seconds: float,
) -> tuple[str, str]:
    """Publish the best adapter and the sweep record; returns their references."""
    from ldp.config import dump_yaml
    from ldp.jobs.sweep_trial import trial_spec
    from ldp.store import Registry

    job = plan["job"]
    reg = Registry(job.get("registry"))
    task, method = job["task"], job["method"]
    point = {k: v for k, v in _spec_point(best, plan).items()}
    with tempfile.TemporaryDirectory(prefix=f"ldp-{job_id}-") as tmp:
        tmp = Path(tmp)
        source = _artifact_folder(str(best.extra["artifact_path"]), storage_path, tmp / "download")
        adapter = tmp / "adapter"
        shutil.copytree(source, adapter, ignore=shutil.ignore_patterns("ldp_artifact.json"))
        evaluation = {k: best.extra[k] for k in best.extra if k in _task_metric_names(task)}
        metrics = {
            "evaluation": {"split": job.get("train", {}).get("eval", {}).get("split", "validation"),
                           "n": best.extra.get("eval_n"), "primary": best.extra.get("primary"),
                           "metrics": evaluation},
            "train": {"step": best.steps, "val_loss": best.val_loss,
                      "train_loss": _num(best.extra.get("train_loss"))},
            "sweep": {"name": plan["name"], "job": job_id, "trial": best.trial,
                      "params": best.params, "metric": plan["metric"], "value": best.metric},
        }
        (adapter / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        (adapter / "job_spec.yaml").write_text(dump_yaml(trial_spec(plan, point)))
        meta = {"task": task, "method": method, "primary": best.extra.get("primary"),
                "sweep": plan["name"], "sweep_job": job_id, "trial": best.trial,
                "params": best.params, plan["metric"]: best.metric}
        primary = best.extra.get("primary")
        if primary and primary in best.extra:
            meta[primary] = best.extra[primary]
        adapter_ref = reg.publish(
            f"adapters/{task}/{method}", adapter, job=job_id,
            base=base if base.startswith("bases/") else None, metadata=meta,
        )

        record = tmp / "sweep"
        record.mkdir()
        write_table(rows, plan, record)
        (record / "grid.yaml").write_text(plan.get("grid_text") or dump_yaml(plan["config"]))
        (record / "plan.json").write_text(json.dumps(plan, indent=2, default=str))
        best_info = {"adapter": str(adapter_ref), "trial": best.trial, "params": best.params,
                     "metric": plan["metric"], "mode": plan["mode"], "value": best.metric}
        (record / "best.json").write_text(json.dumps(best_info, indent=2, default=str))
        plot(rows, plan, record / "plot.png")
        stopped = sum(r.stopped_early for r in rows)
        summary = {
            "trials": len(rows), "finished": sum(r.status == "finished" for r in rows),
            "stopped_early": stopped, "errors": sum(r.status == "error" for r in rows),
            "best": best_info, "wall_seconds": round(wall_seconds, 2), "experiment": experiment,
            "overhead": overhead(rows, wall_seconds),
        }
        (record / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
        sweep_ref = reg.publish(
            f"sweeps/{plan['name']}", record, job=job_id,
            metadata={"task": task, "method": method, "best": str(adapter_ref),
                      "metric": plan["metric"], "value": best.metric, "trials": len(rows)},
        )
    return str(adapter_ref), str(sweep_ref)


def overhead(rows: list[TrialRow], wall_seconds: float) -> dict[str, Any]:
    """What the sweep spends beyond training: per trial, Tune's wall time minus the training
    loop's own time (Train worker start-up, checkpoints, evaluation, Tune), and the whole sweep's
    wall time minus all training loops, per trial."""
    timed = [r for r in rows if r.seconds is not None and r.train_loop_seconds is not None]
    loops = sum(r.train_loop_seconds for r in timed)
    evals = sum(_num(r.extra.get("eval_seconds")) or 0.0 for r in timed)
    per_trial = [r.seconds - r.train_loop_seconds for r in timed]
    return {
        "trials_timed": len(timed),
        "train_loop_seconds": round(loops, 2),
        "eval_seconds": round(evals, 2),
        "per_trial_seconds": round(sum(per_trial) / len(per_trial), 2) if per_trial else None,
        "per_trial_excluding_eval_seconds": (
            round((sum(per_trial) - evals) / len(per_trial), 2) if per_trial else None
        ),
        "sweep_per_trial_seconds": round((wall_seconds - loops) / len(rows), 2) if rows else None,
    }


def _spec_point(row: TrialRow, plan: dict[str, Any]) -> dict[str, Any]:
    from ldp.jobs.sweep_grid import spec_key

    return {spec_key(k): v for k, v in row.params.items()}


def _task_metric_names(task: str) -> tuple[str, ...]:
    from ldp.data.tasks import get_task

    return get_task(task).metrics

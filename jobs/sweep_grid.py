"""The sweep grid file: a base adapter job plus a search space, validated before any Ray work.

A grid file is one YAML mapping. The sweep's own keys are those of :class:`SweepConfig`
(``name``, ``search``, ``num_samples``, ``metric``, ``mode``, ``scheduler``, ``report_every``,
``max_concurrent``, ``resources_per_trial``, ``seed``); every other key belongs to the base job and
means what it means in ``ldp submit --config`` (``task``, ``size``, ``method``, ``steps``,
``train: {...}``, ...).

``search`` maps dotted keys to distributions. A key whose first part is a job-spec field
(``steps``, ``workers``, ``train.optim.lr``) addresses the job spec; any other key addresses the
adapter recipe's config under ``train`` (``optim.lr`` is ``train.optim.lr``), exactly like
``ldp submit --set``. Distributions: ``{grid: [..]}`` (every value, crossed with the other grids),
``{choice: [..]}``, ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{randint: [lo, hi]}``
(``hi`` excluded). Every grid point, and both ends of every range, is resolved into a full job
spec and validated by :func:`ldp.jobs.spec.validate_spec`, so an unknown key or a value the recipe
refuses exits 2 naming the dotted key before anything runs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ldp.config import apply_overrides, build, parse_overrides, to_dict
from ldp.errors import UsageError

__all__ = [
    "DISTRIBUTIONS",
    "ResourcesConfig",
    "SchedulerConfig",
    "SweepConfig",
    "SweepPlan",
    "apply_point",
    "grid_points",
    "load_grid",
    "plan_from_dict",
    "spec_key",
]

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
_LOSS_METRICS = ("val_loss", "train_loss", "loss")


@dataclass
class SchedulerConfig:
    type: Literal["none", "asha"] = "none"
    """``asha``: asynchronous successive halving stops trials whose ``metric`` trails the others'
    at the same step; ``none``: every trial runs to the end."""
    metric: str = "val_loss"
    """What ASHA compares. It must be reported while training runs: ``val_loss`` (every
    ``report_every`` steps), ``loss`` or ``train_loss``."""
    mode: Literal["min", "max"] = "min"
    grace_period: int | None = None
    """Steps every trial runs before it can be stopped (default: ``report_every``)."""
    reduction_factor: float = 2
    """Roughly 1/reduction_factor of the trials pass each rung."""

    def __post_init__(self) -> None:
        if self.metric not in _LOSS_METRICS:
            raise ValueError(
                f"scheduler.metric must be reported during training: one of "
                f"{', '.join(_LOSS_METRICS)}, got {self.metric!r}"
            )
        if self.grace_period is not None and self.grace_period < 1:
            raise ValueError("scheduler.grace_period must be >= 1 (steps)")
        if self.reduction_factor <= 1:
            raise ValueError("scheduler.reduction_factor must be > 1")


@dataclass
class ResourcesConfig:
    workers: int | None = None
    """Ray Train workers per trial (default: the base job's ``workers``)."""
    cpus_per_worker: float = 1
    trial_cpus: float = 0.25
    """CPUs Tune reserves for each trial's driver (it builds the Train run, then evaluates).
    Must be > 0; the trial's Train workers hold their own CPUs besides."""

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError("resources_per_trial.workers must be >= 1")
        if self.cpus_per_worker <= 0:
            raise ValueError("resources_per_trial.cpus_per_worker must be > 0")
        if not 0 < self.trial_cpus <= 64:
            raise ValueError("resources_per_trial.trial_cpus must be > 0")


@dataclass
class SweepConfig:
    name: str | None = None
    """Sweep name: ``sweeps/<name>`` in the registry (default: the grid file's name)."""
    search: dict[str, Any] = field(default_factory=dict)
    """Dotted key -> distribution (see the module docstring)."""
    num_samples: int = 1
    """Repeats of the whole grid; each repeat draws the random distributions afresh."""
    metric: str | None = None
    """What picks the best trial (default: the task's primary metric, scored after training on
    the job's ``train.eval`` split). ``val_loss`` picks by the last validation loss instead."""
    mode: Literal["min", "max"] | None = None
    """Default: ``min`` for losses, ``max`` for task metrics."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    report_every: int | None = None
    """Steps between validation-loss reports (and checkpoints) of each trial (default: the job's
    ``checkpoint_every``, at most a quarter of its steps)."""
    max_concurrent: int | None = None
    """Trials at once (default: as many as the cluster's CPUs hold)."""
    resources_per_trial: ResourcesConfig = field(default_factory=ResourcesConfig)
    seed: int = 0
    """Seed for drawing the random distributions."""

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if self.report_every is not None and self.report_every < 1:
            raise ValueError("report_every must be >= 1")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        if not self.search:
            raise ValueError("search is empty: give at least one key, e.g. optim.lr: {grid: [...]}")


@dataclass
class SweepPlan:
    """A validated sweep: everything :func:`ldp.jobs.sweep.execute` needs, as plain data."""

    name: str
    job: dict[str, Any]
    """The base job spec (validated, resolved by ``JobSpec``)."""
    search: dict[str, dict[str, list]]
    """Spec-level dotted key (``train.optim.lr``) -> ``{distribution: values}``."""
    config: dict[str, Any]
    """The :class:`SweepConfig` as a dict (defaults filled in)."""
    metric: str
    mode: str
    report_every: int
    max_steps: int
    trials: int
    """How many trials the sweep runs (grid points x num_samples)."""
    grid_text: str = ""
    """The grid file as written (published with the sweep)."""

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepPlan:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def spec_key(key: str) -> str:
    """The job-spec dotted key for a search/--set key (``optim.lr`` -> ``train.optim.lr``)."""
    from ldp.jobs.spec import JobSpec

    top = key.split(".", 1)[0]
    return key if top in {f.name for f in fields(JobSpec)} else f"train.{key}"


def apply_point(job: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """The job spec dict with one trial's values (spec-level dotted keys) set."""
    return apply_overrides(job, point)


def _check_distribution(key: str, raw: Any) -> tuple[str, list]:
    where = f"search.{key}"
    if not isinstance(raw, dict) or len(raw) != 1:
        raise UsageError(
            f"{where}: expected one distribution, e.g. {{grid: [1e-4, 1e-3]}}; "
            f"choose from {', '.join(DISTRIBUTIONS)}"
        )
    (kind, values), = raw.items()
    if kind not in DISTRIBUTIONS:
        raise UsageError(f"{where}: unknown distribution {kind!r}; choose from {', '.join(DISTRIBUTIONS)}")
    if not isinstance(values, list) or not values:
        raise UsageError(f"{where}: {kind} needs a non-empty list of values")
    if kind in ("grid", "choice"):
        return kind, values
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UsageError(f"{where}: {kind} needs [low, high] numbers, got {values!r}")
    lo, hi = values
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise UsageError(f"{where}: {kind} needs low < high, got {values!r}")
    if kind == "loguniform" and lo <= 0:
        raise UsageError(f"{where}: loguniform needs low > 0, got {lo!r}")
    if kind == "randint" and not (isinstance(lo, int) and isinstance(hi, int)):
        raise UsageError(f"{where}: randint needs integer bounds, got {values!r}")
    return kind, values


def _flatten(search: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections (``optim: {lr: {grid: [..]}}``) as dotted keys (``optim.lr``)."""
    out: dict[str, Any] = {}
    for key, value in search.items():
        full = f"{prefix}{key}"
        nested = (
            isinstance(value, dict) and value
            and not (set(value) & set(DISTRIBUTIONS))
            and all(isinstance(v, dict) for v in value.values())
        )
        if nested:
            out.update(_flatten(value, f"{full}."))
        else:
            out[full] = value
    return out


def _probe_values(kind: str, values: list) -> list:
    """Values that stand for a distribution when validating: all of a list, both ends of a range."""
    if kind in ("grid", "choice"):
        return list(values)
    if kind == "randint":
        return [values[0], values[1] - 1]
    return list(values)


def grid_points(search: dict[str, dict[str, list]]) -> list[dict[str, Any]]:
    """Every combination of the ``grid`` keys' values (one empty point when there are none)."""
    keys = [k for k, d in search.items() if "grid" in d]
    combos = itertools.product(*(search[k]["grid"] for k in keys))
    return [dict(zip(keys, combo)) for combo in combos]


def _validate_point(job: dict[str, Any], point: dict[str, Any], origin: dict[str, str]) -> None:
    from ldp.jobs.spec import validate_spec

    try:
        validate_spec(apply_point(job, point))
    except UsageError as exc:
        keys = ", ".join(f"{origin[k]}={point[k]!r}" for k in point)
        raise UsageError(f"search ({keys}): {str(exc).splitlines()[0]}") from None


def plan_from_dict(
    data: dict[str, Any],
    *,
    sets: list[str] | None = None,
    explicit: dict[str, Any] | None = None,
    default_name: str = "sweep",
    grid_text: str = "",
) -> SweepPlan:
    """Validate a grid document (with ``--set`` overrides of the base job and explicit options
    such as ``registry``/``data_dir``) into a :class:`SweepPlan`; raises :class:`UsageError`."""
    from ldp.jobs.spec import train_config, validate_spec
    from ldp.store.refs import check_name

    if not isinstance(data, dict):
        raise UsageError("a grid file is a mapping at the top level")
    sweep_keys = {f.name for f in fields(SweepConfig)}
    sweep_data = {k: v for k, v in data.items() if k in sweep_keys}
    job_data = {k: v for k, v in data.items() if k not in sweep_keys}
    if isinstance(sweep_data.get("scheduler"), str):
        sweep_data["scheduler"] = {"type": sweep_data["scheduler"]}
    cfg = build(SweepConfig, sweep_data)

    overrides = {spec_key(k): v for k, v in parse_overrides(sets or []).items()}
    overrides.update({k: v for k, v in (explicit or {}).items() if v is not None})
    job_data = apply_overrides(job_data, overrides)
    spec = validate_spec(job_data)  # the base job alone must be a valid job

    search: dict[str, dict[str, list]] = {}
    origin: dict[str, str] = {}
    for key, raw in _flatten(cfg.search).items():
        if not isinstance(key, str) or not key or key.startswith(".") or key.endswith("."):
            raise UsageError(f"search: invalid key {key!r}; use a dotted config key like optim.lr")
        kind, values = _check_distribution(key, raw)
        full = spec_key(key)
        if full in search:
            raise UsageError(f"search.{key}: given twice ({origin[full]} and {key})")
        search[full] = {kind: values}
        origin[full] = key
    if "train.loop.max_steps" in search and job_data.get("steps") is not None:
        raise UsageError(
            f"search.{origin['train.loop.max_steps']}: the job sets steps, which wins over "
            "loop.max_steps; search `steps` instead"
        )
    # Each key alone first (so an error names that key), then every grid point and both ends of
    # every range together (cross-field checks).
    for full, dist in search.items():
        kind, values = next(iter(dist.items()))
        for value in _probe_values(kind, values):
            try:
                validate_spec(apply_point(job_data, {full: value}))
            except UsageError as exc:
                raise UsageError(
                    f"search.{origin[full]}={value!r}: {str(exc).splitlines()[0]}"
                ) from None
    probes = grid_points(search)
    for full, dist in search.items():
        kind, values = next(iter(dist.items()))
        if kind == "grid":
            continue
        for value in _probe_values(kind, values):
            _validate_point(job_data, {**probes[0], full: value}, origin)
    for point in probes:
        _validate_point(job_data, point, origin)

    name = check_name(str(cfg.name or default_name), what="sweep name")
    recipe = train_config(spec)
    metrics = _task_metrics(spec.task)
    metric = cfg.metric or metrics[0]
    if metric not in (*metrics, "val_loss"):
        raise UsageError(
            f"metric {metric!r}: choose the task's metrics ({', '.join(metrics)}) or val_loss"
        )
    mode = cfg.mode or ("min" if metric in _LOSS_METRICS else "max")
    max_steps = max(_steps_of(apply_point(job_data, p)) for p in probes)
    for full, dist in search.items():
        if full in ("steps", "train.loop.max_steps"):
            max_steps = max([max_steps, *(int(v) for v in next(iter(dist.values())))])
    report_every = cfg.report_every or max(1, min(spec.checkpoint_every, recipe["loop"]["max_steps"] // 4))
    if cfg.scheduler.type == "asha":
        grace = cfg.scheduler.grace_period or report_every
        if grace > max_steps:
            raise UsageError(
                f"scheduler.grace_period {grace} is more than the trials' {max_steps} steps"
            )
    workers = cfg.resources_per_trial.workers or spec.workers
    config = to_dict(cfg)
    config["resources_per_trial"]["workers"] = workers
    return SweepPlan(
        name=name,
        job=to_dict(spec),
        search=search,
        config=config,
        metric=metric,
        mode=mode,
        report_every=int(report_every),
        max_steps=int(max_steps),
        trials=len(probes) * cfg.num_samples,
        grid_text=grid_text,
    )


def _steps_of(job: dict[str, Any]) -> int:
    from ldp.jobs.spec import JobSpec, train_config

    return int(train_config(build(JobSpec, job))["loop"]["max_steps"])


def _task_metrics(task: str) -> tuple[str, ...]:
    from ldp.data.tasks import get_task

    return get_task(task).metrics_ordered


def load_grid(
    path: str | Path,
    *,
    sets: list[str] | None = None,
    explicit: dict[str, Any] | None = None,
    name: str | None = None,
) -> SweepPlan:
    """Read and validate grid file ``path`` (see the module docstring)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"grid file not found: {path}")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping at the top level")
    if name is not None:
        data = {**data, "name": name}
    default = path.stem.lower().removeprefix("sweep-") or "sweep"
    return plan_from_dict(data, sets=sets, explicit=explicit, default_name=default, grid_text=text)

"""The ``report`` job spec: what ``ldp report`` trains, measures and writes, checked up front.

A report config (``configs/report-*.yaml``) is one :class:`ReportSpec`. The shared budget (tasks,
methods, steps, evaluation split and limit, recipe overrides, seed) applies to every training the
report needs; each section has its own small settings block, and a section whose block is
``null`` is still written, saying it was not configured. :func:`validate_report` resolves every
training run (the methods x tasks cells, the ablation variants, the data fractions) into its
adapter job spec and checks it before anything is trained, so a bad config exits 2 at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ldp.config import apply_overrides, build
from ldp.errors import UsageError

__all__ = [
    "SECTIONS",
    "AblationConfig",
    "CompositionConfig",
    "DataEfficiencyConfig",
    "EfficiencyConfig",
    "ForgettingConfig",
    "ReportSpec",
    "TrajectoryConfig",
    "parse_sections",
    "shared_train",
    "validate_report",
]

SECTIONS: dict[str, str] = {
    "methods": "Methods x tasks (Tables 7-8)",
    "efficiency": "Efficiency (Table 9)",
    "forgetting": "Forgetting (Table 10)",
    "ablations": "Ablations (Tables 12-13, conditioning and regularisers)",
    "effective_rank": "Effective rank by phase (Section 6.2, Eq. 28)",
    "composition": "Composition (Table 11 analogue)",
    "data_efficiency": "Data efficiency (Section 6.4.2)",
    "trajectories": "Trajectories (Section 6.5)",
    "loss_curves": "Loss curves",
}
"""Section keys in report order; ``--sections`` takes these keys or their numbers 1-9."""


@dataclass
class EfficiencyConfig:
    """``ldp bench`` settings (see :class:`ldp.bench.BenchConfig`)."""

    batch: int = 8
    seq: int = 64
    response: int = 16
    warmup: int = 2
    steps: int = 5
    gen_length: int = 16
    gen_steps: int = 16

    def __post_init__(self) -> None:
        for key in ("batch", "seq", "response", "steps", "gen_length", "gen_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"efficiency.{key} must be >= 1")
        if self.warmup < 0:
            raise ValueError("efficiency.warmup must be >= 0")
        if self.response >= self.seq:
            raise ValueError("efficiency.response must be smaller than efficiency.seq")


@dataclass
class ForgettingConfig:
    task: str | None = None
    """The task whose adapters are measured (default: the first task)."""
    corpora: list[str] = field(default_factory=lambda: ["wikitext", "arxiv", "code"])
    split: str = "validation"
    blocks: int = 16
    """Blocks of each corpus scored (the same blocks for every model)."""
    block_len: int = 64
    elbo_samples: int = 2

    def __post_init__(self) -> None:
        from ldp.data.corpora import CORPORA

        unknown = [c for c in self.corpora if c not in CORPORA]
        if unknown:
            raise ValueError(f"forgetting.corpora: unknown corpus {unknown[0]!r}; known: {', '.join(CORPORA)}")
        if not self.corpora:
            raise ValueError("forgetting.corpora is empty")
        if self.split not in ("train", "validation"):
            raise ValueError(f"forgetting.split must be train or validation, got {self.split!r}")
        for key in ("blocks", "block_len", "elbo_samples"):
            if getattr(self, key) < 1:
                raise ValueError(f"forgetting.{key} must be >= 1")


@dataclass
class AblationConfig:
    tasks: list[str] | None = None
    """Tasks the lora-diffusion variants train on (default: the first task)."""
    ranks: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    """Uniform ranks r (every phase r) compared with the step-adaptive default."""
    modules: list[int] = field(default_factory=lambda: [1, 2, 4])
    """Modules per phase k."""
    conditioning: bool = True
    """Also train without Enc(c) FiLM conditioning."""
    regularisers: bool = True
    """Also train with lambda_rank = lambda_orth = 0."""

    def __post_init__(self) -> None:
        if any(r < 1 for r in self.ranks):
            raise ValueError("ablations.ranks must be >= 1")
        if any(k < 1 for k in self.modules):
            raise ValueError("ablations.modules must be >= 1")


@dataclass
class CompositionConfig:
    router_steps: int | None = None
    """Router optimiser steps (default: the router recipe's)."""
    eval_limit: int = 50
    """Validation examples per task for router / uniform / oracle / base."""
    router: dict[str, Any] = field(default_factory=dict)
    """Router recipe overrides."""

    def __post_init__(self) -> None:
        if self.router_steps is not None and self.router_steps < 1:
            raise ValueError("composition.router_steps must be >= 1")
        if self.eval_limit < 1:
            raise ValueError("composition.eval_limit must be >= 1")


@dataclass
class DataEfficiencyConfig:
    tasks: list[str] | None = None
    """Default: the first two tasks."""
    methods: list[str] = field(default_factory=lambda: ["lora-diffusion", "weight-lora"])
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0])
    """Fractions of the training set (of ``train.train_limit`` when set, else of the split)."""

    def __post_init__(self) -> None:
        if not self.fractions:
            raise ValueError("data_efficiency.fractions is empty")
        for f in self.fractions:
            if not 0.0 < float(f) <= 1.0:
                raise ValueError(f"data_efficiency.fractions must lie in (0, 1], got {f}")
        self.fractions = sorted({float(f) for f in self.fractions})


@dataclass
class TrajectoryConfig:
    tasks: list[str] | None = None
    """Default: every report task (at most four)."""
    examples: int = 8
    """Validation prompts per task."""
    points: int = 8
    """Denoising steps sampled along each trajectory (t = T ... 1)."""

    def __post_init__(self) -> None:
        if self.examples < 1 or self.points < 2:
            raise ValueError("trajectories.examples must be >= 1 and trajectories.points >= 2")


@dataclass
class ReportSpec:
    kind: Literal["report"] = "report"
    title: str = "LDP report"
    source: str | None = None
    """The config file the spec was read from (shown in the report)."""
    size: str = "tiny"
    base: str | None = None
    """Registry reference or folder of the frozen base (default ``bases/<size>@latest``)."""
    tasks: list[str] = field(default_factory=lambda: ["sst2", "trec"])
    methods: list[str] = field(default_factory=lambda: ["all"])
    steps: int | None = None
    """Optimiser steps of every training run."""
    task_steps: dict[str, int] = field(default_factory=dict)
    """Per-task steps replacing ``steps`` for that task's runs in every section (``{squad: 100}``)."""
    seed: int = 0
    """``loop.seed`` of every training run."""
    split: Literal["validation", "test", "train"] = "validation"
    eval_limit: int | None = 100
    train: dict[str, Any] = field(default_factory=dict)
    """Adapter recipe overrides for every run (``loop.batch_size``, ``train_limit``, ...)."""
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    efficiency: EfficiencyConfig | None = field(default_factory=EfficiencyConfig)
    forgetting: ForgettingConfig | None = field(default_factory=ForgettingConfig)
    ablations: AblationConfig | None = field(default_factory=AblationConfig)
    composition: CompositionConfig | None = field(default_factory=CompositionConfig)
    data_efficiency: DataEfficiencyConfig | None = field(default_factory=DataEfficiencyConfig)
    trajectories: TrajectoryConfig | None = field(default_factory=TrajectoryConfig)
    out: str = "docs/report"
    """Folder for REPORT.md, results.json and the figures."""
    registry: str | None = None
    data_dir: str | None = None
    storage_path: str | None = None
    retrain: bool = False
    """Train every run even when one with the same resolved job spec was published."""
    published_only: bool = False
    """Train nothing: use only runs already published for the same specs (others say so)."""
    max_parallel: int | None = None
    """At most this many runs train at once (default: as many as the cluster's CPUs place)."""

    def __post_init__(self) -> None:
        from ldp.jobs.spec import _absolute, check_task_steps
        from ldp.models.presets import size_names

        if self.size not in size_names():
            raise ValueError(f"unknown size {self.size!r}; choose from {', '.join(size_names())}")
        self.sections = parse_sections(self.sections)
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be >= 1")
        self.task_steps = check_task_steps(self.task_steps)
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError("eval_limit must be >= 1")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ValueError("max_parallel must be >= 1")
        if self.retrain and self.published_only:
            raise ValueError("retrain and published_only exclude each other")
        self.out = str(_absolute(self.out))
        self.data_dir = self.data_dir if self.data_dir == "hub" else _absolute(self.data_dir)
        self.registry = _absolute(self.registry)
        self.storage_path = _absolute(self.storage_path)
        if self.base is not None and not self.base.startswith("bases/"):
            self.base = _absolute(self.base)


    def task_steps_within(self, tasks: list[str]) -> dict[str, int]:
        """The per-task budgets of ``tasks`` only: what a compare or train-all spec over those
        tasks takes (they refuse a budget for a task they do not run)."""
        return {t: n for t, n in self.task_steps.items() if t in tasks}


def parse_sections(value: Any) -> list[str]:
    """Section keys or numbers (a list or ``"1,2,5"``) -> keys in report order (UsageError)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    keys = list(SECTIONS)
    chosen = set()
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if text == "all":
            chosen.update(keys)
        elif text.isdigit() and 1 <= int(text) <= len(keys):
            chosen.add(keys[int(text) - 1])
        elif text in SECTIONS:
            chosen.add(text)
        else:
            raise UsageError(f"unknown report section {text!r}; use 1-{len(keys)} or {', '.join(keys)}")
    if not chosen:
        raise UsageError("no report section chosen")
    return [k for k in keys if k in chosen]


def shared_train(spec: ReportSpec) -> dict[str, Any]:
    """The recipe overrides every run shares (the seed folded in)."""
    return apply_overrides(dict(spec.train), {"loop.seed": spec.seed})


def validate_report(data: dict[str, Any]) -> ReportSpec:
    """The spec and every training run it implies, checked before any work (UsageError)."""
    from ldp.jobs.report_runs import planned_variants

    spec = build(ReportSpec, data, where="report.")
    from ldp.data.tasks import get_task
    from ldp.methods import get_method

    for method in spec.methods:
        if method != "all":
            get_method(method)
    lists = [("tasks", spec.tasks)]
    if spec.ablations is not None:
        lists.append(("ablations.tasks", spec.ablations.tasks or []))
    if spec.data_efficiency is not None:
        lists.append(("data_efficiency.tasks", spec.data_efficiency.tasks or []))
        for method in spec.data_efficiency.methods:
            get_method(method)
    if spec.trajectories is not None:
        lists.append(("trajectories.tasks", spec.trajectories.tasks or []))
    if spec.forgetting is not None and spec.forgetting.task:
        lists.append(("forgetting.task", [spec.forgetting.task]))
    for _, tasks in lists:
        for task in tasks:
            get_task(task)
    for variant in planned_variants(spec):
        variant.validate()
    return spec

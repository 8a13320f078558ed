"""Config of the trajectory adapter (LoRA-Diffusion; docs/METHOD.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

from ldp.methods.base import floor_cutoff

__all__ = ["LoraDiffusionConfig"]


@dataclass
class LoraDiffusionConfig:
    num_steps: int = 100
    """T, the number of diffusion steps; must equal the diffusion schedule's T."""
    phase_names: list[str] = field(default_factory=lambda: ["early", "middle", "late"])
    """Phase names, from the noisiest (t = T) to the cleanest (t = 1)."""
    boundaries: list[float] = field(default_factory=lambda: [2 / 3, 1 / 3])
    """Strictly decreasing fractions of T in (0, 1), one fewer than phases. With integer cutoffs
    ``c_p = floor(T * boundaries[p])``, phase 0 holds ``t > c_0``, phase p holds
    ``c_p < t <= c_{p-1}``, the last phase ``t <= c_last`` (default: early t > 2T/3, middle,
    late t <= T/3)."""
    ranks: list[int] = field(default_factory=lambda: [64, 32, 8])
    """Bottleneck rank r of each phase's modules."""
    scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])
    """sigma(t): the scale of each phase's perturbation."""
    modules_per_phase: int = 2
    """k: modules g_i summed per phase."""
    shared_rank: int = 0
    """Rank of one more module that every step uses beside its phase's (0, the default: none).
    Meant for ``share: phase``, where each training row reaches only its own phase's modules:
    the shared module learns from every row and still sees the step through Emb(t). Measured
    with ``share: phase`` on validation data (tiny base, 900 steps, seeds 0 and 1;
    docs/METHOD.md): trec 86.6 / 85.2 without, 86.6 / 87.6 at rank 64, 87.9 / 88.9 at 128 (at
    1.3b: 0.87% -> 1.39% of the parameters); ``share: nested`` got 88.9 / 88.9 with fewer."""
    shared_scale: float = 1.0
    """sigma of the shared module's perturbation."""
    share: Literal["nested", "phase", "step"] = "nested"
    """``nested`` (default): one set of k modules of rank max(ranks) for every step; a step of
    phase p uses their first ranks[p] bottleneck units, scaled by scales[p], so every row
    trains the units its phase uses. ``phase``: one set of k modules per phase, each learning
    from its phase's rows only (a third of them with three phases). ``step``: k modules per
    step, i.e. T sets (the paper's Eq. 24 count), stored as parameter tensors indexed by step.
    ``nested`` was chosen on validation data (tiny base, 900 steps; docs/METHOD.md): trec
    88.9 / 88.9 (seeds 0 / 1) against 86.6 / 85.2 with ``phase``, sst2 79.3 with both, with 61%
    of the parameters."""
    time_embed_dim: int = 128
    """Width of the sinusoidal step embedding Emb(t) concatenated to H."""
    conditioning: bool = True
    """FiLM-condition the bottleneck on Enc(c), a summary of the base's states over the prompt."""
    context: Literal["blocks", "final"] = "blocks"
    """What Enc(c) summarises. ``final``: the mean of the final states over the prompt (the
    paper's form, d features). ``blocks`` (default): that mean taken at the output of every
    block of the base, concatenated (n_blocks x d features). A warm-started encoder's middle
    blocks keep sentence features that its last block, retrained to denoise, has partly lost:
    on the tiny base ``blocks`` scored 4-5 points more on sst2 and trec (docs/METHOD.md).
    Adapters saved before this option existed load as ``final``."""
    pooling: Literal["mean", "attention"] = "attention"
    """How Enc(c) pools each read layer's states over the prompt. ``attention`` (default): weighted
    by a softmax over the prompt positions of ``h . q``, with one learned query ``q`` per read
    layer (d parameters each), so the adapter can weight the tokens that decide the label (a
    question's first words, say) above the rest. Every query starts at zero, where the softmax is
    uniform: a fresh adapter pools exactly as ``mean``. ``mean``: the plain average. Chosen on
    validation data (tiny base, 900 steps, docs/METHOD.md): trec 88.0 / 89.5 against 86.0 / 87.0
    (seeds 0 / 1), 88.0 against 86.5 on an fp32 base build, sst2 80.5 against 79.0; its step
    costs ~12% more (``ldp bench``: 0.23 of weight LoRA's step against 0.20). Without
    ``conditioning`` there is no Enc(c) and the option has no effect (no queries). Adapters saved
    before this option existed load as ``mean``."""
    inject_layers: list[int] = field(default_factory=list)
    """Also inject into the residual stream after these blocks (0-based; negative counts from
    the end). Empty (default): final hidden state only, and the base runs without autograd."""
    base_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """Precision of the frozen base's forward: ``auto`` runs it under bf16 autocast where the
    hardware has native bf16 (CUDA, AVX512-BF16/AMX CPUs) and in fp32 elsewhere; the adapter's
    own math is always fp32."""
    offset: bool = True
    """Give each phase a trained constant offset ``b`` beside the low-rank modules (carries what
    does not depend on the example, such as the label marginal)."""
    calibration_examples: int = 64
    """Training examples whose frozen-base states set the input standardisers before training
    (0: no standardisation, the raw states go in)."""
    lambda_rank: float = 0.001
    """Weight of the nuclear norms of W_A and W_B (Eq. 17). The paper's 0.01 held the adapter
    back: at init the term is ~1.2 (W_B starts random), several times the denoising loss, and
    the adapter underfit its own training data. Chosen on validation data (tiny base, 900
    steps, docs/METHOD.md): sst2 77.3 / 79.3 / 78.7 and trec 83.6 / 86.6 / 87.6 for
    0.01 / 0.001 / 0."""
    lambda_orth: float = 0.001
    """Weight of sum_{i<j} ||W_A_i^T W_A_j||_F^2 over modules of the same phase and step."""

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        n = len(self.phase_names)
        if n < 1:
            raise ValueError("phase_names must name at least one phase")
        if len(set(self.phase_names)) != n:
            raise ValueError(f"phase_names must be distinct, got {self.phase_names}")
        for name in self.phase_names:
            if not name.isidentifier():
                raise ValueError(f"phase name {name!r} must be an identifier (letters, digits, _)")
        if len(self.boundaries) != n - 1:
            raise ValueError(f"{n} phases need {n - 1} boundaries, got {len(self.boundaries)}")
        if len(self.ranks) != n or len(self.scales) != n:
            raise ValueError(
                f"{n} phases need {n} ranks and {n} scales, got {len(self.ranks)} and {len(self.scales)}"
            )
        if any(not 0.0 < b < 1.0 for b in self.boundaries):
            raise ValueError(f"boundaries must lie in (0, 1), got {self.boundaries}")
        if any(a <= b for a, b in pairwise(self.boundaries)):
            raise ValueError(f"boundaries must be strictly decreasing, got {self.boundaries}")
        if any(r < 1 for r in self.ranks):
            raise ValueError(f"ranks must be >= 1, got {self.ranks}")
        if self.shared_rank < 0:
            raise ValueError(f"shared_rank must be >= 0, got {self.shared_rank}")
        if self.shared_rank and "shared" in self.phase_names:
            raise ValueError("a phase cannot be named 'shared' when shared_rank > 0")
        if self.share == "nested" and "nested" in self.phase_names:
            raise ValueError("a phase cannot be named 'nested' with share: nested")
        if self.modules_per_phase < 1:
            raise ValueError(f"modules_per_phase must be >= 1, got {self.modules_per_phase}")
        if self.time_embed_dim < 2 or self.time_embed_dim % 2:
            raise ValueError(f"time_embed_dim must be even and >= 2, got {self.time_embed_dim}")
        if self.calibration_examples < 0:
            raise ValueError(f"calibration_examples must be >= 0, got {self.calibration_examples}")
        if self.lambda_rank < 0 or self.lambda_orth < 0:
            raise ValueError("lambda_rank and lambda_orth must be >= 0")
        if len(set(self.inject_layers)) != len(self.inject_layers):
            raise ValueError(f"inject_layers has duplicates: {self.inject_layers}")
        ranges = self.step_ranges()
        for name, (lo, hi) in zip(self.phase_names, ranges):
            if lo > hi:
                raise ValueError(
                    f"phase {name!r} covers no step with num_steps={self.num_steps} and "
                    f"boundaries {self.boundaries}"
                )

    def cutoffs(self) -> list[int]:
        """Integer cutoffs ``floor(T * b)`` (descending)."""
        return [floor_cutoff(self.num_steps, b) for b in self.boundaries]

    def step_ranges(self) -> list[tuple[int, int]]:
        """Inclusive ``(first, last)`` step of each phase, first = smallest step."""
        edges = [self.num_steps, *self.cutoffs(), 0]
        return [(lo + 1, hi) for hi, lo in pairwise(edges)]

    def phase_of(self, step: int) -> int:
        """Index of the phase holding integer step ``step`` (1..T)."""
        for index, (lo, hi) in enumerate(self.step_ranges()):
            if lo <= step <= hi:
                return index
        raise ValueError(f"step {step} outside 1..{self.num_steps}")

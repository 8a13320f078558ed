"""Whether each of the paper's claims holds in a report's numbers: pure functions, one per claim.

Each returns a :class:`Claim`: ``holds`` is True, False, or None when the numbers needed are
missing (a section not run, a failed cell), and ``sentence`` says it with the numbers compared.
The sentence is built from the numbers, never written by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "Claim",
    "adaptive_rank",
    "composition",
    "data_efficiency",
    "effective_rank_order",
    "efficiency",
    "forgetting",
    "loss_decreases",
    "methods_average",
    "modules_per_phase",
    "trajectories",
]


@dataclass
class Claim:
    key: str
    claim: str
    """The paper's claim, in a few words."""
    holds: bool | None
    sentence: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def verdict(self) -> str:
        return {True: "holds here", False: "does not hold here", None: "not measured"}[self.holds]


def _missing(key: str, claim: str, why: str) -> Claim:
    return Claim(key, claim, None, f"Not measured: {why}.")


def _f(x: float, d: int = 1) -> str:
    return f"{x:.{d}f}"


def methods_average(averages: dict[str, float | None]) -> Claim:
    """Paper: LoRA-Diffusion beats weight LoRA on average (80.7 vs 77.4)."""
    claim = "LoRA-Diffusion scores above weight LoRA on average (Table 7: 80.7 vs 77.4)"
    ld, wl = averages.get("lora-diffusion"), averages.get("weight-lora")
    if ld is None or wl is None:
        return _missing("methods", claim, "lora-diffusion and weight-lora both need a score on every task")
    holds = ld > wl
    return Claim("methods", claim, holds,
                 f"LoRA-Diffusion averages {_f(ld)} and weight LoRA {_f(wl)} here (paper 80.7 vs 77.4): "
                 f"the claim {'holds' if holds else 'does not hold'}.")


def efficiency(ratios: dict[str, float | None]) -> Claim:
    """Paper: a LoRA-Diffusion step is faster than weight LoRA's and its adapter smaller."""
    claim = "LoRA-Diffusion trains faster per step and stores less than weight LoRA (Table 9: 0.83x, 0.75x)"
    step, size = ratios.get("step_vs_weight_lora"), ratios.get("bytes_vs_weight_lora")
    if step is None or size is None:
        return _missing("efficiency", claim, "the bench has no lora-diffusion and weight-lora pair")
    holds = step < 1.0 and size < 1.0
    return Claim("efficiency", claim, holds,
                 f"A LoRA-Diffusion step takes {_f(step, 2)}x weight LoRA's and its adapter file is "
                 f"{_f(size, 2)}x as large (paper 0.83x and 0.75x): the claim {'holds' if holds else 'does not hold'}.")


def forgetting(changes: dict[str, float | None]) -> Claim:
    """Paper: LoRA-Diffusion's held-out perplexity rises least (mean over corpora, % change)."""
    claim = "LoRA-Diffusion forgets less than weight LoRA (Table 10: +4.0% vs +8.7% mean perplexity change)"
    ld, wl = changes.get("lora-diffusion"), changes.get("weight-lora")
    if ld is None or wl is None:
        return _missing("forgetting", claim, "lora-diffusion and weight-lora both need perplexities")
    holds = ld < wl
    return Claim("forgetting", claim, holds,
                 f"Mean perplexity change on the held-out corpora: LoRA-Diffusion {ld:+.2f}%, weight LoRA "
                 f"{wl:+.2f}% (paper +4.0% and +8.7%): the claim {'holds' if holds else 'does not hold'}.")


def adaptive_rank(adaptive: dict[str, Any] | None, r64: dict[str, Any] | None, tolerance: float = 1.0) -> Claim:
    """Paper: step-adaptive 64/32/8 scores within a point of uniform r=64 with ~1/3 of its parameters.

    ``adaptive``/``r64``: ``{"score", "trainable"}``."""
    claim = "step-adaptive ranks match uniform r=64 (within 1 point) with fewer parameters (Table 12: 80.7 vs 80.9, 9.1M vs 25.6M)"
    if not adaptive or not r64 or adaptive.get("score") is None or r64.get("score") is None:
        return _missing("ablations.rank", claim, "both the step-adaptive and the uniform r=64 runs are needed")
    close = adaptive["score"] >= r64["score"] - tolerance
    fewer = (adaptive.get("trainable") or 0) < (r64.get("trainable") or 0)
    holds = close and fewer
    return Claim("ablations.rank", claim, holds,
                 f"Step-adaptive scores {_f(adaptive['score'])} with {adaptive.get('trainable'):,} trainable "
                 f"parameters, uniform r=64 {_f(r64['score'])} with {r64.get('trainable'):,}: the claim "
                 f"{'holds' if holds else 'does not hold'}.")


def modules_per_phase(scores: dict[int, float | None]) -> Claim:
    """Paper: k=2 improves on k=1 (80.7 vs 79.1) and k=4 adds little (80.9)."""
    claim = "two modules per phase beat one (Table 13: 80.7 vs 79.1)"
    k1, k2 = scores.get(1), scores.get(2)
    if k1 is None or k2 is None:
        return _missing("ablations.modules", claim, "the k=1 and k=2 runs are needed")
    holds = k2 > k1
    return Claim("ablations.modules", claim, holds,
                 f"k=2 scores {_f(k2)} and k=1 {_f(k1)} here: the claim {'holds' if holds else 'does not hold'}.")


def effective_rank_order(means: dict[str, float]) -> Claim:
    """Paper: effective rank falls from early to late phases (about 50 / 24 / 8)."""
    claim = "the effective rank falls from early to late phases (Section 6.2: about 50 / 24 / 8)"
    if len(means) < 2:
        return _missing("effective_rank", claim, "no lora-diffusion adapter was measured")
    values = list(means.values())
    holds = all(a > b for a, b in zip(values, values[1:]))
    text = " / ".join(f"{k} {_f(v)}" for k, v in means.items())
    return Claim("effective_rank", claim, holds,
                 f"Mean effective rank by phase here: {text}: the claim {'holds' if holds else 'does not hold'}.")


def composition(means: dict[str, float | None]) -> Claim:
    """Our analogue of Table 11: the router's mix beats a uniform mix of the same adapters."""
    claim = "a learned mix of separately trained adapters beats a uniform one (Table 11 analogue)"
    auto, uniform = means.get("auto"), means.get("uniform")
    if auto is None or uniform is None:
        return _missing("composition", claim, "router and uniform scores are both needed")
    holds = auto > uniform
    base, oracle = means.get("base"), means.get("oracle")
    extra = ""
    if base is not None and oracle is not None:
        extra = f" (oracle {_f(oracle)}, base {_f(base)})"
    return Claim("composition", claim, holds,
                 f"The router's mix averages {_f(auto)} and the uniform mix {_f(uniform)}{extra}: the claim "
                 f"{'holds' if holds else 'does not hold'}.")


def fraction_to_reach(points: dict[float, float], share: float = 0.9) -> float | None:
    """The smallest training fraction whose score reaches ``share`` of the best score."""
    if not points:
        return None
    best = max(points.values())
    for fraction in sorted(points):
        if points[fraction] >= share * best:
            return fraction
    return None


def data_efficiency(curves: dict[str, dict[str, dict[float, float]]]) -> Claim:
    """Paper: LoRA-Diffusion reaches 90% of its best score with less data than weight LoRA.

    ``curves[task][method] = {fraction: score}``; compares the mean fraction over tasks."""
    claim = "LoRA-Diffusion reaches 90% of its best score with less data than weight LoRA (Section 6.4.2: 30% less)"
    need: dict[str, list[float]] = {"lora-diffusion": [], "weight-lora": []}
    for per_method in curves.values():
        got = {m: fraction_to_reach(per_method.get(m) or {}) for m in need}
        if all(v is not None for v in got.values()):
            for m, v in got.items():
                need[m].append(v)
    if not need["lora-diffusion"]:
        return _missing("data_efficiency", claim, "no task has both methods' curves")
    ld = sum(need["lora-diffusion"]) / len(need["lora-diffusion"])
    wl = sum(need["weight-lora"]) / len(need["weight-lora"])
    holds = ld < wl
    return Claim("data_efficiency", claim, holds,
                 f"Mean training fraction to reach 90% of the best score: LoRA-Diffusion {100 * ld:.0f}%, weight "
                 f"LoRA {100 * wl:.0f}% over {len(need['lora-diffusion'])} task(s): the claim "
                 f"{'holds' if holds else 'does not hold'}.")


def trajectories(base: float | None, adapted: float | None) -> Claim:
    """Paper: adapted trajectories form one cluster per task, the base's overlap."""
    claim = "adaptation separates the tasks' trajectories (Section 6.5)"
    if base is None or adapted is None:
        return _missing("trajectories", claim, "base and adapted trajectories of at least two tasks are needed")
    holds = adapted > base
    return Claim("trajectories", claim, holds,
                 f"Task separation (centroid distance over spread) is {_f(adapted, 2)} adapted and {_f(base, 2)} "
                 f"for the base: the claim {'holds' if holds else 'does not hold'}.")


def loss_decreases(curves: list[dict[str, Any]]) -> Claim:
    """Not a paper claim: every run's training loss fell (mean of its last tenth below its first)."""
    claim = "every run's training loss fell"
    usable = [c for c in curves if len(c.get("loss") or []) >= 2]
    if not usable:
        return _missing("loss_curves", claim, "no run has a metrics file here")
    fell = 0
    for c in usable:
        loss = c["loss"]
        tenth = max(1, len(loss) // 10)
        if sum(loss[-tenth:]) / tenth < sum(loss[:tenth]) / tenth:
            fell += 1
    holds = fell == len(usable)
    return Claim("loss_curves", claim, holds,
                 f"The loss fell (mean of the last tenth of steps below the first tenth) in {fell} of "
                 f"{len(usable)} run(s).")

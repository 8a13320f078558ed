"""Config of the weight-LoRA baseline (turned into a ``peft.LoraConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["WeightLoraConfig"]

_ATTENTION = ("q", "k", "v", "o")
_PARTS = (*_ATTENTION, "up", "down")


@dataclass
class WeightLoraConfig:
    r: int = 64
    """LoRA rank."""
    alpha: float = 64.0
    """lora_alpha; the update is scaled by alpha / r (1.0 by default)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch's input."""
    targets: list[str] = field(default_factory=lambda: list(_ATTENTION))
    """Which projections of every block get LoRA (``base.block_parts()`` fields): the attention's
    q, k, v, o (the default, the paper's baseline) and the feed-forward's up and down."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("targets must name at least one projection")
        bad = sorted(set(self.targets) - set(_PARTS))
        if bad:
            raise ValueError(f"targets: unknown projection {bad[0]!r} (known: {', '.join(_PARTS)})")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets has duplicates: {self.targets}")

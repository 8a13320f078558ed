"""Config of the Houlsby bottleneck adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["AdaptersConfig"]


@dataclass
class AdaptersConfig:
    bottleneck: int = 256
    """Bottleneck width m of each adapter (d -> m -> d)."""
    activation: Literal["gelu", "relu"] = "gelu"
    """Non-linearity between the down- and up-projection."""
    sites: list[str] = field(default_factory=lambda: ["attention", "ffn"])
    """Sub-layers followed by an adapter: names of ``base.block_parts()`` fields."""
    init_std: float = 0.01
    """Std of the down-projection's normal init (the up-projection starts at zero)."""

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise ValueError(f"bottleneck must be >= 1, got {self.bottleneck}")
        if not self.sites:
            raise ValueError("sites must name at least one sub-layer")
        bad = sorted(set(self.sites) - {"attention", "ffn"})
        if bad:
            raise ValueError(f"sites: unknown sub-layer {bad[0]!r} (known: attention, ffn)")
        if len(set(self.sites)) != len(self.sites):
            raise ValueError(f"sites has duplicates: {self.sites}")
        if self.init_std < 0:
            raise ValueError("init_std must be >= 0")

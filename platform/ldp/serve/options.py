"""What a serving replica (or ``ldp generate``) is configured with."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ldp.errors import UsageError

__all__ = ["ServeOptions"]


@dataclass
class ServeOptions:
    base: str | None = None
    """Base reference (``bases/tiny@latest``) or folder; default: the base the bundle or the
    first adapter names."""
    registry: str | None = None
    """Registry URL (default ``LDP_REGISTRY`` or the local one)."""
    adapters: list[str] = field(default_factory=list)
    """Adapter references loaded at start (others load on first request)."""
    bundle: str | None = None
    """Default bundle (``bundles/NAME@VERSION``): its router answers ``adapters: "auto"``."""
    cache_size: int = 8
    """Most adapters + routers held at once; the least recently used unpinned one is evicted."""
    max_batch_size: int = 8
    """Requests denoised together (one base forward per step for all of them)."""
    batch_wait_s: float = 0.02
    """How long a batch waits to fill once its first request arrived."""
    max_new_tokens: int = 128
    """Longest answer a request may ask for."""
    default_new_tokens: int = 32
    """Answer length of a request that names none (capped at ``max_new_tokens``)."""
    max_steps: int = 512
    """Most denoising steps a request may ask for."""
    max_prompt_tokens: int = 256
    """Longest prompt (in tokens, special tokens included) accepted."""
    block_length: int | None = None
    """Semi-autoregressive block length for every request (None: one block)."""
    num_steps: int = 100
    """T, the diffusion steps a bare base is sampled with (adapters bring their own)."""
    replicas: int = 1
    num_cpus: float = 1.0
    """CPUs each replica reserves from Ray."""

    def __post_init__(self) -> None:
        for name in ("cache_size", "max_batch_size", "max_new_tokens", "default_new_tokens",
                     "max_steps", "max_prompt_tokens", "replicas", "num_steps"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        # A lower --max-new-tokens caps the default too, rather than failing on an option the
        # user never set.
        self.default_new_tokens = min(self.default_new_tokens, self.max_new_tokens)
        if self.batch_wait_s < 0 or self.num_cpus < 0:
            raise UsageError("batch_wait_s and num_cpus must be >= 0")
        if self.block_length is not None and self.block_length < 1:
            raise UsageError(f"block-length must be >= 1, got {self.block_length}")
        if isinstance(self.adapters, str):
            self.adapters = [a for a in self.adapters.split(",") if a]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

"""LoRA-Diffusion: the trajectory-level adapter (docs/METHOD.md)."""

from ldp.methods.base import Method
from ldp.methods.lora_diffusion.config import LoraDiffusionConfig
from ldp.methods.lora_diffusion.layer import PhaseAdapter, effective_rank_of
from ldp.methods.lora_diffusion.model import LoraDiffusionModel, attach

__all__ = [
    "METHOD",
    "LoraDiffusionConfig",
    "LoraDiffusionModel",
    "PhaseAdapter",
    "attach",
    "effective_rank_of",
]

METHOD = Method(
    name="lora-diffusion",
    peft_type=LoraDiffusionModel.peft_type,
    config_cls=LoraDiffusionConfig,
    attach_fn=attach,
    # Adapters saved before ``context`` existed summarised the final states only; those saved
    # before ``pooling`` existed pooled by the mean.
    legacy_defaults={"context": "final", "pooling": "mean"},
)

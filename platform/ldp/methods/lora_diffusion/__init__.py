"""LoRA-Diffusion: the trajectory-level adapter (docs/METHOD.md)."""

from ldp.methods.base import Method, load_generic
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



def _load(method, base, folder, meta, base_hash):
    # Adapters saved before the ``context`` option existed summarised the final states only.
    config = {"context": "final", **(meta.get("ldp_config") or {})}
    return load_generic(method, base, folder, {**meta, "ldp_config": config}, base_hash)


METHOD = Method(
    name="lora-diffusion",
    peft_type=LoraDiffusionModel.peft_type,
    config_cls=LoraDiffusionConfig,
    attach_fn=attach,
    load_fn=_load,
)

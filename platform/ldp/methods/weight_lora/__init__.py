"""Weight LoRA baseline through ``peft`` (q, k, v, o; r = 64), artifacts loadable by peft."""

from ldp.methods.base import Method
from ldp.methods.weight_lora.config import WeightLoraConfig
from ldp.methods.weight_lora.model import WeightLoraModel, attach, load

__all__ = ["METHOD", "WeightLoraConfig", "WeightLoraModel", "attach"]

METHOD = Method(
    name="weight-lora",
    peft_type="LORA",
    config_cls=WeightLoraConfig,
    attach_fn=attach,
    load_fn=load,
)

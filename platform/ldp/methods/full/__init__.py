"""Full fine-tuning baseline: every weight of the base trains."""

from ldp.methods.base import Method
from ldp.methods.full.model import FullConfig, FullModel, attach

__all__ = ["METHOD", "FullConfig", "FullModel", "attach"]

METHOD = Method(name="full", peft_type="FULL_LDP", config_cls=FullConfig, attach_fn=attach)

"""Houlsby bottleneck adapters (Houlsby et al., 2019) after the attention and FFN sub-layers."""

from ldp.methods.adapters.config import AdaptersConfig
from ldp.methods.adapters.layer import BottleneckAdapter
from ldp.methods.adapters.model import AdaptersModel, attach
from ldp.methods.base import Method

__all__ = ["METHOD", "AdaptersConfig", "AdaptersModel", "BottleneckAdapter", "attach"]

METHOD = Method(
    name="adapters", peft_type="HOULSBY_LDP", config_cls=AdaptersConfig, attach_fn=attach
)

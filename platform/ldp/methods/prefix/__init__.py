"""Prefix tuning (P learned key/value pairs per layer) for bidirectional denoisers."""

from ldp.methods.base import Method
from ldp.methods.prefix.config import PrefixConfig
from ldp.methods.prefix.layer import PrefixSelfAttention
from ldp.methods.prefix.model import PrefixModel, attach

__all__ = ["METHOD", "PrefixConfig", "PrefixModel", "PrefixSelfAttention", "attach"]

METHOD = Method(name="prefix", peft_type="PREFIX_LDP", config_cls=PrefixConfig, attach_fn=attach)

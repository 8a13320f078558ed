"""BitFit baseline: only the bias terms of the base train."""

from ldp.methods.base import Method
from ldp.methods.bitfit.model import BitFitConfig, BitFitModel, attach

__all__ = ["METHOD", "BitFitConfig", "BitFitModel", "attach"]

METHOD = Method(name="bitfit", peft_type="BITFIT_LDP", config_cls=BitFitConfig, attach_fn=attach)

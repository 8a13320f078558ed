"""Reaching a Ray cluster, strategy choice, memory estimates. Imported as ``ldp.cluster``."""

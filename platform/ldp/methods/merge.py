"""Weighted merge of weight-LoRA adapters (the paper's Table 11 baseline for composition).

Weight-space adapters cannot share one base forward the way final-state adapters do
(:mod:`ldp.methods.compose`); they compose by merging their low-rank updates with peft's
``add_weighted_adapter``. ``combination_type="cat"`` concatenates the factors, so the merged
update of every layer is exactly ``sum_j w_j * B_j A_j * scaling_j`` (no rank truncation).
One merge serves one weight vector for the whole batch (no per-row mixes).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from ldp.errors import UsageError
from ldp.methods.base import base_fingerprint, read_adapter_config

__all__ = ["MERGED_NAME", "merge_weight_lora"]

MERGED_NAME = "ldp_merged"
"""The peft adapter name of the merged update (made active)."""


def merge_weight_lora(
    base: nn.Module,
    adapter_folders: Mapping[str, str | Path],
    weights: Mapping[str, float],
    *,
    base_hash: str | None = None,
):
    """Load every weight-lora folder onto ``base`` and activate their weighted merge.

    Returns the adapted model of the first adapter with the merged peft adapter active (for
    evaluation). Refuses other methods, other bases and weights for unknown adapters (one line,
    before any weights are read)."""
    from ldp.methods import load_adapter

    if not adapter_folders:
        raise UsageError("a merge needs at least one adapter")
    unknown = sorted(set(weights) - set(adapter_folders))
    if unknown:
        raise UsageError(f"weights for unknown adapter(s): {', '.join(unknown)}")
    base_hash = base_hash or base_fingerprint(base)
    for name, folder in adapter_folders.items():
        meta = read_adapter_config(folder)
        if meta.get("ldp_method") != "weight-lora":
            raise UsageError(f"adapter {name!r} is {meta.get('ldp_method')}, not weight-lora: only weight-lora adapters merge")
        if meta.get("base_hash") != base_hash:
            raise UsageError(
                f"adapter {name!r} ({folder}) was trained on another base (hash "
                f"{str(meta.get('base_hash'))[:12]}), not this one (hash {base_hash[:12]})"
            )
    names = list(adapter_folders)
    first = load_adapter(base, adapter_folders[names[0]], base_hash=base_hash)
    peft = first.peft_model
    peft_names = [peft.active_adapter]
    for index, name in enumerate(names[1:], 1):
        slot = f"ldp_{index}"
        peft.load_adapter(str(adapter_folders[name]), adapter_name=slot)
        peft_names.append(slot)
    peft.add_weighted_adapter(
        peft_names, [float(weights.get(n, 0.0)) for n in names], MERGED_NAME, combination_type="cat"
    )
    peft.set_adapter(MERGED_NAME)
    first.eval()
    return first

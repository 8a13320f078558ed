"""``ldp bench``'s measurement of one method, on a small native base (the CLI's bad input is in
test_bad_input.py; the full table is run by hand: it takes minutes)."""

from __future__ import annotations

import pytest
from ldp.bench import FROZEN, FROZEN_HIDDEN, BenchConfig, measure_method, ratios

CFG = BenchConfig(size="tiny", batch=2, seq=24, response=4, warmup=1, steps=2, gen_length=4, gen_steps=2)


@pytest.mark.parametrize("method", ["lora-diffusion", "weight-lora", FROZEN, FROZEN_HIDDEN])
def test_measures_a_training_step_and_what_it_stores(method):
    result = measure_method(method, CFG)
    assert result["step_s"] > 0
    if method in (FROZEN, FROZEN_HIDDEN):
        assert result["trainable_params"] == 0 and result["gen_latency_s"] is None
        return
    assert 0 < result["trainable_pct"] < 100
    assert result["adapter_bytes"] >= 4 * result["trainable_params"] * 0.9  # fp32 weights saved
    assert result["gen_latency_s"] > 0


def test_ratios_compare_lora_diffusion_with_weight_lora_and_the_frozen_forward():
    results = {
        "lora-diffusion": {"step_s": 0.3, "peak_bytes": 10, "adapter_bytes": 2},
        "weight-lora": {"step_s": 1.2, "peak_bytes": 40, "adapter_bytes": 8},
        FROZEN: {"step_s": 0.25, "peak_bytes": None, "adapter_bytes": 0},
        FROZEN_HIDDEN: {"step_s": 0.2, "peak_bytes": None, "adapter_bytes": 0},
    }
    assert ratios(results) == {
        "step_vs_weight_lora": 0.25, "step_vs_frozen_forward": 1.2, "step_vs_frozen_hidden": 1.5,
        "peak_vs_weight_lora": 0.25, "bytes_vs_weight_lora": 0.25,
    }
    assert ratios({"lora-diffusion": {"step_s": 1.0}})["step_vs_weight_lora"] is None


def test_the_frozen_forward_floor_scores_the_loss_and_the_hidden_floor_does_not(monkeypatch):
    from ldp.models.native import DiffusionTransformer

    calls = []
    head = DiffusionTransformer.head
    monkeypatch.setattr(DiffusionTransformer, "head", lambda self, h: (calls.append(h.shape[0]), head(self, h))[1])
    measure_method(FROZEN_HIDDEN, CFG)
    assert calls == []
    measure_method(FROZEN, CFG)
    # Warm-up and timed steps each run the head once, on the scored positions only.
    assert len(calls) == CFG.warmup + CFG.steps
    assert all(0 < n <= CFG.batch * CFG.response for n in calls)

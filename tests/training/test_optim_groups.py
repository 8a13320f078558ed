"""Per-parameter learning-rate scales (used to fine-tune adapters beside a router)."""

from __future__ import annotations

import pytest
import torch

from ldp.training.optim import OptimConfig, build_optimizer, set_lr_scale


def test_scaled_parameters_move_by_the_scaled_rate():
    fast, slow = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    set_lr_scale([slow], 0.01)
    cfg = OptimConfig(lr=1e-2, warmup_steps=0, grad_clip=0)
    optimizer, scheduler = build_optimizer([slow, fast], cfg, total_steps=10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-2, 1e-4])  # unscaled first
    (fast.sum() + slow.sum()).backward()
    optimizer.step()
    scheduler.step()
    # Adam's first step moves each parameter by its rate, whatever the gradient's size.
    assert fast.tolist() == pytest.approx([-1e-2] * 4, rel=1e-3)
    assert slow.tolist() == pytest.approx([-1e-4] * 4, rel=1e-3)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.01 * optimizer.param_groups[0]["lr"])


def test_bad_scale_is_refused():
    with pytest.raises(ValueError, match="positive finite"):
        set_lr_scale([torch.nn.Parameter(torch.zeros(1))], 0.0)

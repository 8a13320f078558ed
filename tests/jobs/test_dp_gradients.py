"""Data-parallel training is exact: the reduced gradient equals the one-process gradient.

Two ranks (two subprocesses over gloo, real DeepSpeed) hold batches of *different* diffusion
phases, the case where a data-dependent graph makes ranks disagree on which parameters have
gradients (ZeRO-2 then reduces mismatched buckets). See ``ds_grad_worker.py``.
"""

from __future__ import annotations

import pytest

from .test_deepspeed_backend import _run_two_ranks

pytestmark = pytest.mark.slow


def test_reduced_gradient_equals_single_process_gradient(tmp_path):
    out = _run_two_ranks(tmp_path, ("ddp", "zero2", "zero3"), None, worker="ds_grad_worker.py")
    assert set(out) == {"ddp", "zero2", "zero3"}
    for strategy, result in out.items():
        # the phases the batches hold gave every one of their parameters a real gradient
        assert not [n for n in result["zero_grad_params"] if "early" in n or "late" in n], result
        assert result["grad_scale"] > 1e-3
        # Adam's linearised step differs from -g by |g|/eps relative (< 1e-5 here)
        assert result["max_abs_diff"] <= 1e-5 * max(1.0, result["grad_scale"]), (strategy, result)

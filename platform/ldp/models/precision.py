"""Which precision the frozen base runs in: bf16 only where the hardware computes it natively.

bf16 halves the memory traffic of a frozen forward and is the right choice on GPUs and on CPUs
with native bf16 arithmetic (AVX512-BF16, AMX). On a CPU without it (AVX2-only, many AMD EPYC
parts) PyTorch emulates bf16 matrix products, measured ~75x slower than fp32 for a bare matmul:
there fp32 is much faster. ``auto`` picks by the hardware; ``fp32``/``bf16`` force a choice.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["cpu_has_native_bf16", "resolve_base_dtype"]

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU advertises bf16 arithmetic (Linux ``/proc/cpuinfo`` flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return any(flag in flags for flag in _BF16_FLAGS)
    return False


def resolve_base_dtype(choice: str, device: torch.device | str = "cpu") -> str:
    """``auto`` -> ``bf16`` on CUDA (when supported) and on CPUs with native bf16, else ``fp32``;
    ``fp32``/``bf16`` are returned unchanged."""
    if choice != "auto":
        return choice
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"

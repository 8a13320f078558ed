"""The GPU check script runs on CPU (``--size tiny``) and prints its JSON: CI keeps it working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_with_tiny_sizes():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--size", "tiny", "--big-size", "tiny",
         "--batch", "1", "--seq", "24", "--answer", "8", "--steps", "1", "--warmup", "0"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert set(out["methods"]) == {"lora-diffusion", "weight-lora", "full"}
    for row in out["methods"].values():
        assert row["step_ms"] > 0 and row["trainable_params"] > 0
    full, ld = out["methods"]["full"], out["methods"]["lora-diffusion"]
    assert full["trainable_params"] > 10 * ld["trainable_params"]
    assert "full_vs_lora_diffusion_time" in out["ratios"]
    assert out["big_lora_diffusion"]["step_ms"] > 0


def test_gpu_check_refuses_bad_arguments():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--answer", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr

"""The generated DeepSpeed configs run on CPU with gloo: a real engine step per strategy.

Runs in a subprocess (torch.distributed state is process-global). The first run JIT-builds
DeepSpeed's CPU communication op (~1 min on 2 cores) into TORCH_EXTENSIONS_DIR, which is kept
between runs (the environment's, else ~/.cache/torch_extensions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import free_port

pytestmark = pytest.mark.slow

_SCRIPT = r"""
import json, os, sys
import torch
import deepspeed
from ldp.cluster.strategy import deepspeed_config

deepspeed.init_distributed(dist_backend="gloo")
out = {}
for strategy in ("ddp", "zero2", "zero3", "zero3-offload"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    model[0].requires_grad_(False)  # a frozen "base" and a trainable "adapter"
    frozen_before = model[0].weight.detach().clone()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)  # the caller's optimizer (no lr in the config)
    thr = 0 if strategy.startswith("zero3") else None
    cfg = deepspeed_config(strategy, micro_batch=4, zero3_param_persistence_threshold=thr)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=opt, config=cfg)
    x = torch.randn(4, 8)
    losses = []
    for _ in range(5):
        loss = engine(x).pow(2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    if strategy.startswith("zero3"):
        with deepspeed.zero.GatheredParameters([model[0].weight]):
            frozen_same = bool(torch.equal(model[0].weight.detach(), frozen_before))
        partitioned = model[2].weight.numel() == 0  # threshold 0: even tiny tensors are sharded
    else:
        frozen_same = bool(torch.equal(model[0].weight.detach(), frozen_before))
        partitioned = False
    out[strategy] = {"stage": engine.zero_optimization_stage(), "losses": losses,
                     "frozen_same": frozen_same, "partitioned": partitioned}
print("RESULT " + json.dumps(out))
"""


def test_every_strategy_trains_on_cpu_with_gloo(tmp_path):
    ext = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        TORCH_EXTENSIONS_DIR=ext,
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        cwd=tmp_path,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    assert {s: r["stage"] for s, r in out.items()} == {
        "ddp": 0,
        "zero2": 2,
        "zero3": 3,
        "zero3-offload": 3,
    }
    for strategy, r in out.items():
        assert r["losses"][-1] < r["losses"][0], strategy  # the trainable part learns
        assert r["frozen_same"], strategy  # the frozen part does not move
    assert out["zero3"]["partitioned"] and out["zero3-offload"]["partitioned"]

"""One rank of the DeepSpeedBackend check (run by test_deepspeed_backend.py, not collected).

For each strategy: train the toy recipe 12 steps straight; train 6, checkpoint, rebuild
everything and resume to 12; print per-step losses, the final gathered weights' digest and
shapes as one ``RESULT`` JSON line (rank 0).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
import toy_recipe
from ldp.jobs.deepspeed_backend import DeepSpeedBackend
from ldp.training.trainer import Trainer

RANK = int(os.environ["RANK"])
WORLD = int(os.environ["WORLD_SIZE"])


def make(strategy: str, config: dict):
    built = toy_recipe.build(config, RANK, WORLD)
    overrides = {}
    if strategy.startswith("zero3"):
        overrides = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
    backend = DeepSpeedBackend(
        built.model,
        built.named_trainable,
        built.loss_fn,
        strategy=strategy,
        loop=built.loop,
        optim=built.optim,
        overrides=overrides,
    )
    trainer = Trainer(
        built.model,
        backend.loss_fn,
        built.train_loader,
        loop=built.loop,
        backend=backend,
        val_batches=built.val_batches,
        progress=False,
        is_main=RANK == 0,
        state_subdir=None if RANK == 0 else f"rank_{RANK}",
    )
    trainer.generator.manual_seed(built.loop.seed + 1000 * RANK)  # own noise per rank
    return built, backend, trainer


def main() -> None:
    strategies = sys.argv[1].split(",")
    root = Path(sys.argv[2])
    config = {"steps": 12, **(json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})}
    # As Ray Train does: torch.distributed first, DeepSpeed's comm layer inside initialize()
    torch.distributed.init_process_group(backend="gloo")
    out = {}
    for strategy in strategies:
        t0 = time.perf_counter()
        built, backend, trainer = make(strategy, config)
        partitioned = built.model.out_weight.numel() == 0
        full = trainer.train()
        full_state = backend.consolidated_trainable_state()

        _, _, first = make(strategy, config)
        first.loop = dataclasses.replace(first.loop, max_steps=6)
        first.train()
        ckpt = root / strategy / "step_000006"
        first.save_checkpoint(ckpt)
        torch.distributed.barrier()

        _, backend2, resumed = make(strategy, config)
        resumed.load_checkpoint(ckpt)
        again = resumed.train()
        state = backend2.consolidated_trainable_state()

        # Why LossModule exists: the recipe's loss_fn on the bare partitioned model fails.
        direct_fails = False
        if partitioned:
            bare, _, _ = make(strategy, config)
            batch = (torch.randn(8, toy_recipe.D_IN), torch.randn(8, toy_recipe.D_OUT))
            try:
                with torch.no_grad():
                    bare.loss_fn(bare.model, batch, torch.Generator())
            except RuntimeError:
                direct_fails = True
        if RANK == 0:
            out[strategy] = {
                "stage": backend.stage,
                "partitioned": partitioned,
                "direct_fails": direct_fails,
                "full": [m["loss"] for m in full.history],
                "grad_norm": [m["grad_norm"] for m in full.history],
                "lr": [m["lr"] for m in full.history],
                "val": full.val,
                "resumed": [m["loss"] for m in again.history],
                "first_resumed_step": again.history[0]["step"],
                "shapes": {n: list(t.shape) for n, t in state.items()},
                "max_diff": max(float((state[n] - full_state[n]).abs().max()) for n in state),
                "seconds": time.perf_counter() - t0,
            }
        torch.distributed.barrier()
    if RANK == 0:
        print("RESULT " + json.dumps(out), flush=True)
    # Tear the process group down before exit: left to the interpreter's shutdown, a comm thread
    # was once destroyed while joinable ("terminate called without an active exception") and the
    # rank exited non-zero after a correct result (seen once in CI).
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

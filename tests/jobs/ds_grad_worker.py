"""One rank of the data-parallel gradient check (run by test_dp_gradients.py, not collected).

Both ranks build the same small native base with the same lora-diffusion adapter (made non-zero,
so every parameter has a gradient). Rank r trains on its own batch at steps of phase r only
(rank 0: early, rank 1: late), so the ranks' graphs would differ if the adapter only ran the
phases present in a batch. After ONE optimiser step under DeepSpeed, the weights are compared
with the same step taken in one process on the two batches together.

The optimiser is the trainer's AdamW made linear for the check: with ``eps`` far above every
gradient and ``lr = eps``, Adam's first update is ``-lr * g / (|g| + eps) ~= -g`` (relative error
|g| / eps), so the weight change *is* the reduced gradient.
"""

from __future__ import annotations

import json
import os
import sys

import deepspeed
import torch
from ldp.diffusion import DiffusionConfig, training_loss
from ldp.jobs.deepspeed_backend import DeepSpeedBackend
from ldp.methods import attach
from ldp.models.native import DiffusionTransformer
from ldp.models.sizes import size_config
from ldp.training.optim import OptimConfig
from ldp.training.trainer import LoopConfig

RANK = int(os.environ["RANK"])
T = 30
EPS = 1e4


def build_model():
    torch.manual_seed(0)
    config = size_config("tiny", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, vocab_size=64, max_position_embeddings=64,
                         mask_token_id=3, pad_token_id=0, eos_token_id=2)
    base = DiffusionTransformer(config).eval()
    # Ranks of at least 3: with 2 ReLU units per module, a random draw can leave every unit dead
    # at the late rows' few masked positions, and those FiLM weights then get no gradient at all.
    model = attach(base, "lora-diffusion", {"num_steps": T, "ranks": [5, 4, 3], "time_embed_dim": 8})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def batch_for(rank: int) -> dict:
    g = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(5, 64, (4, 12), generator=g)
    response = torch.zeros(4, 12, dtype=torch.bool)
    response[:, 7:] = True
    instruction = ~response
    lo, hi = (21, 30) if rank == 0 else (1, 10)  # early phase on rank 0, late phase on rank 1
    steps = torch.randint(lo, hi + 1, (4,), generator=g)
    return {"input_ids": ids, "response_mask": response, "instruction_mask": instruction, "steps": steps}


def loss_fn(model, batch, generator):
    inner = getattr(model, "module", model)
    generator = torch.Generator().manual_seed(int(batch["steps"][0]))  # same noise in both runs
    loss, stats = training_loss(
        inner, batch, DiffusionConfig(num_steps=T), generator=generator, t=batch["steps"],
        hidden_fn=lambda x, t, a: inner.hidden_states(x, t, a, instruction_mask=batch["instruction_mask"]),
    )
    reg = inner.regularization()
    return loss + reg["rank"] + reg["orth"], stats


OPTIM = OptimConfig(lr=EPS, eps=EPS, warmup_steps=0, grad_clip=0.0, min_lr_ratio=1.0)


def reference() -> dict[str, torch.Tensor]:
    """The gradient of the mean of the two ranks' losses, in one process."""
    model = build_model().train()
    losses = [loss_fn(model, batch_for(r), None)[0] for r in (0, 1)]
    ((losses[0] + losses[1]) / 2).backward()
    return {
        n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
        for n, p in model.named_trainable_parameters().items()
    }


def main() -> None:
    strategies = sys.argv[1].split(",")
    deepspeed.init_distributed(dist_backend="gloo")
    ref = reference() if RANK == 0 else None
    out = {}
    for strategy in strategies:
        model = build_model().train()
        named = model.named_trainable_parameters()
        before = {n: p.detach().clone() for n, p in named.items()}
        overrides = {}
        if strategy.startswith("zero3"):
            overrides = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
        if strategy == "zero2":  # small buckets: several reductions, as in a real model
            overrides = {"zero_optimization": {"reduce_bucket_size": 500, "allgather_bucket_size": 500}}
        backend = DeepSpeedBackend(model, named, loss_fn, strategy=strategy,
                                   loop=LoopConfig(max_steps=1, batch_size=4), optim=OPTIM,
                                   overrides=overrides)
        loss, _ = backend.loss_fn(model, batch_for(RANK), torch.Generator())
        backend.backward(loss)
        backend.step()
        after = backend.consolidated_trainable_state()
        if RANK == 0:
            diffs, scale = {}, {}
            for n in named:
                applied = before[n] - after[n]  # = the reduced gradient, see the docstring
                diffs[n] = float((applied - ref[n]).abs().max())
                scale[n] = float(ref[n].abs().max())
            out[strategy] = {"max_abs_diff": max(diffs.values()), "worst": max(diffs, key=diffs.get),
                             "grad_scale": max(scale.values()),
                             "zero_grad_params": [n for n, v in scale.items() if v == 0.0]}
        torch.distributed.barrier()
    if RANK == 0:
        print("RESULT " + json.dumps(out), flush=True)
    # Tear the process group down before exit: left to the interpreter's shutdown, a comm thread
    # was once destroyed while joinable ("terminate called without an active exception") and the
    # rank exited non-zero after a correct result (seen once in CI).
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

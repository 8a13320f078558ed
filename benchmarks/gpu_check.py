"""One adapter training step per method on a randomly initialised native base: time and peak memory.

What it measures, side by side in one process (accuracy is not the point, the weights are random):

- on a ``--size`` base (default ``1.3b``): one optimiser step of ``lora-diffusion`` (final-state
  adapter, base frozen and run without autograd), ``weight-lora`` (peft LoRA on q/k/v/o, r=64) and
  ``full`` fine-tuning, at ``--batch`` x ``--seq`` tokens (default 8 x 512), the last ``--answer``
  tokens of each row scored by the diffusion loss;
- on a ``--big-size`` base (default ``7b``): one ``lora-diffusion`` step with the frozen base in bf16.

Each figure is the median of ``--steps`` timed steps after ``--warmup`` untimed ones (forward,
backward, AdamW step; CUDA synchronised around each). Peak memory is PyTorch's
``max_memory_allocated`` for that method alone (reset between methods); on CPU it is not measured.
Prints one JSON object: absolute times and memory, and the ratios against ``lora-diffusion``.

On a GPU the base is built on the device in bf16 and steps run under bf16 autocast. On CPU
(``--device cpu``, what CI runs with ``--size tiny --big-size tiny``) everything stays fp32.

Usage: ``python benchmarks/gpu_check.py`` (GPU) or
``python benchmarks/gpu_check.py --device cpu --size tiny --big-size tiny --batch 2 --seq 64``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
from typing import Any

import torch

METHODS = ("lora-diffusion", "weight-lora", "full")


def _batch(vocab: int, batch: int, seq: int, answer: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    response = torch.zeros(batch, seq, dtype=torch.bool)
    response[:, seq - answer:] = True
    instruction = torch.zeros(batch, seq, dtype=torch.bool)
    instruction[:, : min(32, seq - answer)] = True
    out = {
        "input_ids": ids,
        "response_mask": response,
        "prompt_mask": ~response,
        "instruction_mask": instruction,
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
    }
    return {k: v.to(device) for k, v in out.items()}


def _build(size: str, method: str, device: torch.device, bf16: bool):
    from ldp.methods import attach
    from ldp.models.native import DiffusionTransformer
    from ldp.models.sizes import size_config

    config = size_config(size)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if bf16 else torch.float32)
    try:
        with torch.device(device):  # random init on the device: a 7B init on CPU takes minutes
            base = DiffusionTransformer(config)
    finally:
        torch.set_default_dtype(old)
    method_config: dict[str, Any] = {"calibration_examples": 0} if method == "lora-diffusion" else {}
    if method == "lora-diffusion" and bf16:
        method_config["base_dtype"] = "bf16"
    model = attach(base, method, method_config, base_hash="random")
    model.to(device)
    if method != "full":  # the adapter's own parameters train in fp32 (mixed precision)
        for p in model.trainable_parameters():
            p.data = p.data.float()
    return model, config


def _loss(model, batch, diffusion_config, generator):
    from ldp.diffusion.loss import training_loss

    instruction = batch["instruction_mask"]

    def hidden_fn(x_t, t_norm, attention_mask):
        return model.hidden_states(x_t, t_norm, attention_mask, instruction_mask=instruction)

    loss, _ = training_loss(model, batch, diffusion_config, generator=generator, hidden_fn=hidden_fn)
    regularization = getattr(model, "regularization", None)
    if regularization is not None:
        for value in regularization().values():
            loss = loss + value
    return loss


def measure(size: str, method: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from ldp.diffusion.config import DiffusionConfig

    bf16 = device.type == "cuda"
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    built = time.perf_counter()
    model, config = _build(size, method, device, bf16)
    build_s = time.perf_counter() - built
    model.train()
    params = list(model.trainable_parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batch = _batch(config.vocab_size, args.batch, args.seq, args.answer, device)
    diffusion = DiffusionConfig()
    generator = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    times = []
    for i in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast:
            loss = _loss(model, batch, diffusion, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    if not torch.isfinite(loss.detach()).item():
        raise RuntimeError(f"{method} on {size}: non-finite loss {loss.item()}")
    row = {
        "size": size,
        "method": method,
        "step_ms": round(statistics.median(times) * 1000, 2),
        "step_ms_min": round(min(times) * 1000, 2),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 3) if cuda else None,
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
        "build_s": round(build_s, 1),
        "loss": round(float(loss.detach()), 4),
    }
    del model, optimizer, params, batch, loss
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def _guarded(size: str, method: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """:func:`measure`, with a failure (out of memory, say) recorded as that row's one-line error
    so the other rows still print."""
    try:
        return measure(size, method, args, device)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, and in the exit code
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        text = str(exc).strip().splitlines()
        return {"size": size, "method": method, "error": f"{type(exc).__name__}: {text[0] if text else ''}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1.3b")
    parser.add_argument("--big-size", default="7b", help="base of the single frozen-base lora-diffusion step ('' skips it)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--answer", type=int, default=128, help="scored (answer) tokens per row")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    if not (0 < args.answer < args.seq) or min(args.batch, args.steps) < 1 or args.warmup < 0:
        parser.error("need 0 < --answer < --seq, --batch and --steps >= 1, --warmup >= 0")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or "lora-diffusion" not in methods:
        parser.error(f"--methods: choose among {', '.join(METHODS)} (lora-diffusion included)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible")
    device = torch.device(args.device)
    started = time.perf_counter()
    rows = {m: _guarded(args.size, m, args, device) for m in methods}
    ref = rows["lora-diffusion"]
    ratios = {}
    for m, row in rows.items():
        if m == "lora-diffusion" or "error" in row or "error" in ref:
            continue
        ratios[f"{m}_vs_lora_diffusion_time"] = round(row["step_ms"] / ref["step_ms"], 2)
        if row["peak_mem_gb"] and ref["peak_mem_gb"]:
            ratios[f"{m}_vs_lora_diffusion_peak_mem"] = round(row["peak_mem_gb"] / ref["peak_mem_gb"], 2)
    big = _guarded(args.big_size, "lora-diffusion", args, device) if args.big_size else None
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": "bf16 base, bf16 autocast" if device.type == "cuda" else "fp32",
        "batch": args.batch, "seq": args.seq, "answer": args.answer,
        "steps_timed": args.steps, "warmup": args.warmup,
        "methods": rows,
        "ratios": ratios,
        "big_lora_diffusion": big,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(out, indent=2))
    failed = [r for r in [*rows.values(), big] if r and "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

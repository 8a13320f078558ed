"""``ldp bench``: the efficiency table (paper Table 9), every method measured side by side.

Each method is measured in a fresh subprocess (``python -m ldp.bench METHOD ...``) so one
method's peak memory cannot hide another's. Per method, on the same base, batch and sequence:

- ``step_s``: median wall time of a training step (forward, loss, backward, optimiser) after
  warm-up;
- ``peak_bytes``: peak resident memory of the process above its resident memory once the model
  and batch are built (the training step's own cost: activations, gradients, optimiser state);
  ``peak_rss_bytes`` is the absolute high-water mark;
- ``gen_latency_s``: median time to generate one response (batch 1);
- ``trainable_params`` / ``trainable_pct``; ``adapter_bytes``: the saved adapter's weight file.

Two floors are measured the same way, without autograd and with the base in the precision the
lora-diffusion adapter runs it in:

- ``frozen-forward``: the frozen model's forward of the same training loss -- the batch corrupted
  as a step corrupts it, the base's hidden states, the output head at the scored (masked answer)
  positions and the cross-entropy. Every method's step contains this much work, so it is the
  floor an adapter step can reach, and ``step_vs_frozen_forward`` is what training adds to it
  (backward to H', the adapter, the regularisers, the optimiser);
- ``frozen-hidden``: the base's hidden states alone, without the head (``step_vs_frozen_hidden``);
  on a 30522-token vocabulary the head at ~128 scored positions is ~7% of the base's forward.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["FLOORS", "FROZEN", "FROZEN_HIDDEN", "BenchConfig", "run_bench", "measure_method", "ratios"]

FROZEN = "frozen-forward"
FROZEN_HIDDEN = "frozen-hidden"
FLOORS = (FROZEN, FROZEN_HIDDEN)


@dataclass
class BenchConfig:
    size: str = "tiny"
    base: str | None = None
    """A registry reference or folder; default: a fresh native base of ``size``."""
    registry: str | None = None
    batch: int = 16
    seq: int = 128
    response: int = 16
    """Response (scored) tokens at the end of each sequence; the rest is prompt."""
    warmup: int = 3
    steps: int = 10
    gen_length: int = 16
    gen_steps: int = 16
    base_dtype: str = "auto"
    """Precision of the frozen base's forward for lora-diffusion and frozen-forward: ``auto``
    (bf16 where the hardware has it natively, else fp32; see ``ldp.models.precision``), ``fp32``
    or ``bf16``."""
    threads: int | None = None


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _build_base(cfg: BenchConfig):
    import torch

    if cfg.base:
        from ldp.bases import resolve_base
        from ldp.models.loading import load_base

        base, _ = load_base(resolve_base(cfg.base, cfg.registry).folder)
        return base
    from ldp.models.native import DiffusionTransformer
    from ldp.models.sizes import size_config

    torch.manual_seed(0)
    return DiffusionTransformer(size_config(cfg.size)).eval()


def measure_method(method: str, cfg: BenchConfig) -> dict[str, Any]:
    """Measure one method in this process (call it in a fresh one)."""
    import torch

    from ldp.diffusion import DiffusionConfig, sample
    from ldp.methods import attach
    from ldp.training.recipes.adapter import adapter_loss

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base = _build_base(cfg)
    vocab = base.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (cfg.batch, cfg.seq), generator=g)
    response = torch.zeros(cfg.batch, cfg.seq, dtype=torch.bool)
    response[:, -cfg.response :] = True
    instruction = ~response
    batch = {"input_ids": ids, "response_mask": response, "instruction_mask": instruction}
    diffusion = DiffusionConfig()
    total_base = sum(p.numel() for p in base.parameters())

    from ldp.models.precision import resolve_base_dtype

    base_dtype = resolve_base_dtype(cfg.base_dtype, "cpu")
    if method in FLOORS:
        from ldp.diffusion import training_loss

        dtype = torch.bfloat16 if base_dtype == "bf16" else torch.float32
        autocast = lambda: torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)  # noqa: E731
        for p in base.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(1)  # the same draws of t and masks as a method's steps

        def hidden_fn(x_t, t_norm, attention_mask):
            # As the adapter runs it: the base in its precision, the head on fp32 states.
            with autocast():
                return base.hidden_states(x_t, t_norm, attention_mask).float()

        def step() -> None:
            with torch.no_grad():
                if method == FROZEN:
                    training_loss(base, batch, diffusion, generator=gen, hidden_fn=hidden_fn)
                else:
                    hidden_fn(ids, torch.full((cfg.batch,), 0.5), None)

        result: dict[str, Any] = {"trainable_params": 0, "trainable_pct": 0.0, "adapter_bytes": 0}
        gen_latency = None
    else:
        method_cfg = {"base_dtype": base_dtype} if method == "lora-diffusion" else None
        model = attach(base, method, method_cfg)
        params = model.trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        gen = torch.Generator().manual_seed(1)

        def step() -> None:
            # The adapter recipe's own loss (regularisers included), as `ldp submit` trains it.
            loss, _ = adapter_loss(model, batch, diffusion, gen)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        n_train = sum(p.numel() for p in params)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_adapter(Path(tmp), base_name="bench", base_hash="bench")
            weights = [p for p in Path(tmp).iterdir() if p.suffix == ".safetensors"]
            adapter_bytes = sum(p.stat().st_size for p in weights)
        result = {
            "trainable_params": n_train,
            "trainable_pct": 100.0 * n_train / max(1, total_base + (n_train if method != "full" else 0)),
            "adapter_bytes": adapter_bytes,
        }
        gen_latency = model

    baseline = _rss_bytes()
    for _ in range(cfg.warmup):
        step()
    times = []
    for _ in range(cfg.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = _rss_bytes()
    result.update(step_s=statistics.median(times), peak_bytes=max(0, peak - baseline), peak_rss_bytes=peak)

    if gen_latency is not None:
        model = gen_latency
        model.eval()
        prompt = ids[:1, : cfg.seq - cfg.gen_length]
        instr = torch.cat([torch.ones_like(prompt, dtype=torch.bool), torch.zeros(1, cfg.gen_length, dtype=torch.bool)], 1)
        lat = []
        for _ in range(3):
            start = time.perf_counter()
            sample(model, prompt, cfg.gen_length, diffusion, steps=cfg.gen_steps, seed=0,
                   logits_fn=lambda x, t: model(x, t, None, instruction_mask=instr))
            lat.append(time.perf_counter() - start)
        result["gen_latency_s"] = statistics.median(lat)
    else:
        result["gen_latency_s"] = None
    return result


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The headline ratios of lora-diffusion against weight-lora and the frozen forward."""

    def r(a: str, b: str, key: str) -> float | None:
        x, y = results.get(a, {}).get(key), results.get(b, {}).get(key)
        return round(x / y, 4) if x is not None and y else None

    return {
        "step_vs_weight_lora": r("lora-diffusion", "weight-lora", "step_s"),
        "step_vs_frozen_forward": r("lora-diffusion", FROZEN, "step_s"),
        "step_vs_frozen_hidden": r("lora-diffusion", FROZEN_HIDDEN, "step_s"),
        "peak_vs_weight_lora": r("lora-diffusion", "weight-lora", "peak_bytes"),
        "bytes_vs_weight_lora": r("lora-diffusion", "weight-lora", "adapter_bytes"),
    }


def run_bench(methods: list[str], cfg: BenchConfig, *, log=print) -> dict[str, Any]:
    """Measure ``methods`` (plus the two floors) each in a fresh subprocess."""
    results: dict[str, dict[str, Any]] = {}
    for method in [*FLOORS, *methods]:
        log(f"measuring {method} ...")
        proc = subprocess.run(
            [sys.executable, "-m", "ldp.bench", method, json.dumps(asdict(cfg))],
            capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            from ldp.errors import LdpError

            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise LdpError(f"bench of {method} failed: {tail}")
        results[method] = json.loads(lines[-1])
    floors = {name: results.pop(name) for name in FLOORS}
    from ldp.models.precision import resolve_base_dtype

    out = {
        "config": asdict(cfg),
        "base_dtype": resolve_base_dtype(cfg.base_dtype, "cpu"),
        "frozen_forward_s": floors[FROZEN]["step_s"],
        "frozen_hidden_s": floors[FROZEN_HIDDEN]["step_s"],
        "methods": results,
    }
    out["ratios"] = ratios({**results, **floors})
    return out


def _main(argv: list[str]) -> None:
    from ldp.config import build

    method, raw = argv[0], json.loads(argv[1])
    print(json.dumps(measure_method(method, build(BenchConfig, raw))), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])

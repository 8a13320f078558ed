"""Task evaluation: generate with the sampler (or score verbalisers by ELBO) and compute metrics.

Works for a bare base and for any adapted model: the model is called through the ``Denoiser``
interface with the batch's ``instruction_mask`` passed when the model accepts it (adapters use
it for ``Enc(c)``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ldp.diffusion import DiffusionConfig, sample
from ldp.evaluation.padding import pad_left

__all__ = ["EvalResult", "evaluate_task", "decode_response", "generate_ids"]


@dataclass
class EvalResult:
    task: str
    split: str
    n: int
    metrics: dict[str, float]
    primary: str
    mode: str
    """``generate`` or ``likelihood`` (verbaliser ELBO comparison)."""
    seconds: float
    predictions: list[str] = field(default_factory=list)

    def to_dict(self, **extra: Any) -> dict[str, Any]:
        return {
            "task": self.task, "split": self.split, "n": self.n, "metrics": self.metrics,
            "primary": self.primary, "mode": self.mode, "seconds": round(self.seconds, 3), **extra,
        }


def _accepts_context(model: Any) -> bool:
    from ldp.methods import AdaptedModel

    return isinstance(model, AdaptedModel)


def decode_response(tokenizer: Any, ids: list[int], eos_id: int) -> str:
    """Text of a generated response, cut at the first EOS."""
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


@torch.no_grad()
def generate_ids(
    model, encoded: list[dict], gen_len: int, diffusion: DiffusionConfig, *,
    steps: int | None = None, batch_size: int = 16, seed: int = 0, bar=None,
) -> list[list[int]]:
    """Generated answer ids (``gen_len`` each) after every encoded prompt, in input order.

    Prompts are grouped by length and left-padded within a batch; the sampler's default
    (temperature 0, confidence-ordered reveal) is deterministic per row and the backbones count
    positions over attended tokens, so a row's answer does not depend on its batch mates.
    """
    # Default: T steps, but never more than 4 per generated token (finer steps add little).
    steps = steps or min(diffusion.num_steps, max(gen_len, 1) * 4)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["prompt_ids"]))
    out: dict[int, list[int]] = {}
    context = _accepts_context(model)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        prompts, keep = pad_left([encoded[i]["prompt_ids"] for i in idx], model.pad_token_id)
        instr, _ = pad_left([encoded[i]["instruction_mask"] for i in idx], 0)
        B, Lp = prompts.shape
        attn = torch.cat([keep, torch.ones(B, gen_len, dtype=torch.bool)], 1).long()
        instr = torch.cat([instr.bool(), torch.zeros(B, gen_len, dtype=torch.bool)], 1)

        def hidden_fn(x, t, a):
            if context:
                return model.hidden_states(x, t, a, instruction_mask=instr)
            return model.hidden_states(x, t, a)

        result = sample(
            model, prompts, gen_len, diffusion, steps=steps, seed=seed,
            hidden_fn=hidden_fn, attention_mask=attn,
        )
        for row, i in zip(result[:, Lp:].tolist(), idx):
            out[i] = row
        if bar is not None:
            bar.update(len(idx))
    return [out[i] for i in range(len(encoded))]


def _generate(model, tokenizer, encoded, spec, diffusion, steps, batch_size, seed, bar) -> list[str]:
    from ldp.data.collate import eos_token_id

    eos = eos_token_id(tokenizer)
    ids = generate_ids(
        model, encoded, spec.max_new_tokens, diffusion, steps=steps, batch_size=batch_size,
        seed=seed, bar=bar,
    )
    return [decode_response(tokenizer, row, eos) for row in ids]


def _likelihood(model, tokenizer, encoded, spec, n_samples, batch_size, seed, bar) -> list[str]:
    """Pick, per example, the verbaliser with the lowest any-order NLL of ``answer + EOS``
    (see :mod:`ldp.evaluation.verbalizer`; ``n_samples`` subsets per mask size)."""
    from ldp.data.collate import eos_token_id
    from ldp.evaluation.verbalizer import candidate_nll

    eos = eos_token_id(tokenizer)
    verbs = list(spec.label.verbalizers)
    cand = [tokenizer(v, add_special_tokens=False)["input_ids"] for v in verbs]
    # Every candidate is EOS-padded to the task's answer length: the shape training used.
    width = max(max(len(c) for c in cand) + 1, spec.max_new_tokens)
    answers = torch.tensor([c + [eos] * (width - len(c)) for c in cand], dtype=torch.long)
    context = _accepts_context(model)

    def hidden_fn(x, t, attn, instr):
        if context:
            return model.hidden_states(x, t, attn, instruction_mask=instr)
        return model.hidden_states(x, t, attn)

    preds: list[str] = []
    per_batch = max(1, batch_size // len(verbs))
    for start in range(0, len(encoded), per_batch):
        chunk = encoded[start : start + per_batch]
        nll = candidate_nll(
            hidden_fn, model.head, model.mask_token_id,
            [ex["prompt_ids"] for ex in chunk], [ex["instruction_mask"] for ex in chunk], answers,
            example_ids=list(range(start, start + len(chunk))), per_size=n_samples, seed=seed,
            pad_token_id=model.pad_token_id, max_rows=max(batch_size, 16) * 4,
        )
        preds.extend(verbs[j] for j in nll.argmin(dim=1).tolist())
        if bar is not None:
            bar.update(len(chunk))
    return preds


def evaluate_task(
    model: Any,
    tokenizer: Any,
    task: str,
    *,
    split: str = "validation",
    data_dir: str | None = None,
    limit: int | None = None,
    mode: str = "auto",
    steps: int | None = None,
    diffusion: DiffusionConfig | None = None,
    elbo_samples: int = 4,
    batch_size: int = 16,
    max_prompt_len: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> EvalResult:
    """Score ``model`` on ``task``/``split``; ``mode`` auto = likelihood for classification."""
    from ldp.data.collate import encode_example
    from ldp.data.loading import load_examples
    from ldp.data.metrics import compute_metrics
    from ldp.data.tasks import get_task
    from ldp.errors import UsageError

    spec = get_task(task)
    diffusion = diffusion or DiffusionConfig()
    if mode == "auto":
        mode = "likelihood" if spec.label is not None else "generate"
    if mode == "likelihood" and spec.label is None:
        raise UsageError(f"task {spec.name} has no verbalisers; use --mode generate")
    if mode not in ("generate", "likelihood"):
        raise UsageError(f"unknown eval mode {mode!r} (auto, generate, likelihood)")
    examples = load_examples(spec, split, data_dir, limit, unique_groups=spec.group_by is not None)
    encoded = [encode_example(ex, tokenizer, max_prompt_len, spec.max_new_tokens) for ex in examples]
    was_training = getattr(model, "training", False)
    model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(encoded), desc=f"eval {spec.name}/{split}", unit="ex")
    started = time.perf_counter()
    try:
        if mode == "generate":
            preds = _generate(model, tokenizer, encoded, spec, diffusion, steps, batch_size, seed, bar)
        else:
            preds = _likelihood(model, tokenizer, encoded, spec, elbo_samples, batch_size, seed, bar)
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    metrics = compute_metrics(spec, preds, [ex.references for ex in examples])
    return EvalResult(
        task=spec.name, split=split, n=len(examples), metrics=metrics, primary=spec.primary_metric,
        mode=mode, seconds=time.perf_counter() - started, predictions=preds,
    )

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

__all__ = ["EvalResult", "evaluate_task", "decode_response"]


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


def _pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a common length: ids (B, L) and a keep mask (B, L)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    keep = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        keep[i, width - len(s):] = True
    return ids, keep


def decode_response(tokenizer: Any, ids: list[int], eos_id: int) -> str:
    """Text of a generated response, cut at the first EOS."""
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


@torch.no_grad()
def _generate(model, tokenizer, encoded, spec, diffusion, steps, batch_size, seed, bar) -> list[str]:
    from ldp.data.collate import eos_token_id

    eos = eos_token_id(tokenizer)
    gen_len = spec.max_new_tokens
    # Default: T steps, but never more than 4 per generated token (finer steps add little).
    steps = steps or min(diffusion.num_steps, max(gen_len, 1) * 4)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["prompt_ids"]))
    out: dict[int, str] = {}
    context = _accepts_context(model)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        prompts, keep = _pad_left([encoded[i]["prompt_ids"] for i in idx], model.pad_token_id)
        instr, _ = _pad_left([encoded[i]["instruction_mask"] for i in idx], 0)
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
            out[i] = decode_response(tokenizer, row, eos)
        if bar is not None:
            bar.update(len(idx))
    return [out[i] for i in range(len(encoded))]


@torch.no_grad()
def paired_candidate_nll(
    model: Any,
    prompt_ids: torch.Tensor,
    keep: torch.Tensor,
    instruction: torch.Tensor,
    answers: torch.Tensor,
    diffusion: DiffusionConfig,
    *,
    n_samples: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """ELBO NLL of every candidate answer after every prompt, with paired noise.

    prompt_ids/keep/instruction: (E, Lp) left-padded prompts, their keep mask and instruction
    mask; answers: (K, W) candidate answers of equal width (EOS-padded). Returns (E, K).
    All K candidates of an example see the same steps t and the same masked positions, so their
    difference is not swamped by Monte-Carlo noise (a paired comparison).
    """
    from ldp.diffusion import corruption_prob, elbo_weight, token_nll
    from ldp.diffusion.elbo import elbo_steps

    E, Lp = prompt_ids.shape
    K, W = answers.shape
    T = diffusion.num_steps
    context = _accepts_context(model)
    rep = lambda x: x.repeat_interleave(K, dim=0)  # noqa: E731  (E, ...) -> (E*K, ...)
    x0 = torch.cat([rep(prompt_ids), answers.repeat(E, 1)], 1)  # (E*K, Lp+W)
    attn = torch.cat([rep(keep), torch.ones(E * K, W, dtype=torch.bool)], 1).long()
    instr = torch.cat([rep(instruction), torch.zeros(E * K, W, dtype=torch.bool)], 1)
    steps = elbo_steps(n_samples, E, T, generator)  # (n, E)
    total = torch.zeros(E * K)
    for j in range(n_samples):
        t = steps[j]
        beta = corruption_prob(t, T, diffusion.schedule).unsqueeze(1)  # (E, 1)
        masked = torch.rand(E, W, generator=generator) < beta  # (E, W) shared by candidates
        scored = torch.cat([torch.zeros(E * K, Lp, dtype=torch.bool), rep(masked)], 1)
        x_t = x0.masked_fill(scored, model.mask_token_id)
        t_rep = rep(t)

        def hidden_fn(x, tn, a):
            if context:
                return model.hidden_states(x, tn, attn, instruction_mask=instr)
            return model.hidden_states(x, tn, attn)

        nll = token_nll(model, x_t, t_rep.float() / T, x0, scored, hidden_fn=hidden_fn)
        total += (nll.sum(dim=1) * elbo_weight(t_rep, T, diffusion.schedule)).float()
    return (total / n_samples).view(E, K)


def _likelihood(model, tokenizer, encoded, spec, diffusion, n_samples, batch_size, seed, bar) -> list[str]:
    """Pick, per example, the verbaliser with the lowest ELBO NLL of ``answer + EOS``."""
    from ldp.data.collate import eos_token_id

    eos = eos_token_id(tokenizer)
    verbs = list(spec.label.verbalizers)
    cand = [tokenizer(v, add_special_tokens=False)["input_ids"] for v in verbs]
    # Every candidate is EOS-padded to the task's answer length: the shape training used.
    width = max(max(len(c) for c in cand) + 1, spec.max_new_tokens)
    answers = torch.tensor([c + [eos] * (width - len(c)) for c in cand], dtype=torch.long)
    preds: list[str] = []
    per_batch = max(1, batch_size // len(verbs))
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(encoded), per_batch):
        chunk = encoded[start : start + per_batch]
        prompts, keep = _pad_left([ex["prompt_ids"] for ex in chunk], model.pad_token_id)
        instr, _ = _pad_left([ex["instruction_mask"] for ex in chunk], 0)
        nll = paired_candidate_nll(
            model, prompts, keep, instr.bool(), answers, diffusion,
            n_samples=n_samples, generator=generator,
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
            preds = _likelihood(model, tokenizer, encoded, spec, diffusion, elbo_samples, batch_size, seed, bar)
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

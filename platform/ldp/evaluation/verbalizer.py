"""Scoring candidate answers (verbalisers) by their masked-diffusion likelihood, with low variance.

A classification example is scored by comparing ``-log p(answer + EOS padding | prompt)`` of each
candidate answer. A diffusion LM has no exact likelihood; its bound, for the absorbing
transition with a linear schedule and ELBO weights, equals in the limit of many steps the
*any-order* likelihood (MDLM, "any-order autoregressive" view)::

    NLL(x) = sum_{k=1..W} (1/k) E_{S: |S| = k} [ sum_{j in S} -log p(x_j | x with S masked) ]

over the W answer positions, S a uniformly random subset of size k, scored at the time
``t = k / W`` (the fraction of the answer masked). Compared with drawing ``t`` and a Bernoulli
mask (the Monte-Carlo ELBO, weights up to ``T/t``), this form has bounded weights (1/k) and is
*stratified* over the mask size, and for the short answers of classification tasks it is exact
or nearly so:

- every mask size k gets ``per_size`` subsets; sizes with at most that many subsets (always
  k = W, and every size for answers of a few tokens) are enumerated exactly;
- all candidates of an example see the same subsets (a paired comparison);
- the subsets drawn for an example depend only on ``(seed, example index)``, never on the batch
  it was scored in, so an example's score does not depend on its batch mates.

The estimator's cost is ``candidates x sum_k min(C(W, k), per_size)`` denoiser rows per example.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import combinations

import torch

__all__ = ["mask_plan", "candidate_nll"]


def mask_plan(width: int, per_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The masks one example is scored with: ``(masks (M, W) bool, weights (M,), t (M,))``.

    Each size k contributes ``min(C(W, k), per_size)`` distinct subsets, each weighted
    ``1 / (k * n_k)`` so that the weighted sum of the masked positions' NLL estimates the any-order
    NLL without bias; ``t = k / W``.
    """
    if width < 1 or per_size < 1:
        raise ValueError("width and per_size must be >= 1")
    masks, weights, times = [], [], []
    for k in range(1, width + 1):
        total = math.comb(width, k)
        if total <= per_size:
            chosen = [list(c) for c in combinations(range(width), k)]
        else:
            seen: set[tuple[int, ...]] = set()
            chosen = []
            while len(chosen) < per_size:
                pick = tuple(sorted(torch.randperm(width, generator=generator)[:k].tolist()))
                if pick not in seen:
                    seen.add(pick)
                    chosen.append(list(pick))
        for subset in chosen:
            row = torch.zeros(width, dtype=torch.bool)
            row[subset] = True
            masks.append(row)
            weights.append(1.0 / (k * len(chosen)))
            times.append(k / width)
    return torch.stack(masks), torch.tensor(weights, dtype=torch.float64), torch.tensor(times)


@torch.no_grad()
def candidate_nll(
    hidden_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
    mask_token_id: int,
    prompts: list[list[int]],
    instructions: list[list[bool]],
    answers: torch.Tensor,
    *,
    example_ids: list[int],
    per_size: int = 2,
    seed: int = 0,
    pad_token_id: int = 0,
    max_rows: int = 64,
) -> torch.Tensor:
    """Any-order NLL of every candidate answer after every prompt: (E, K).

    ``hidden_fn(x (N, L), t (N,), attention_mask (N, L), instruction_mask (N, L)) -> H``;
    ``head``: (n, d) -> (n, V). ``prompts``/``instructions``: E token lists and their instruction
    flags; ``answers``: (K, W) candidate answers of equal width. ``example_ids``: a stable index
    per example (seeds its subsets). Rows are left-padded to a common prompt length in chunks of
    at most ``max_rows``; the backbones count positions over attended tokens only, so padding
    does not change a row's result.
    """
    from ldp.evaluation.padding import pad_left

    K, W = answers.shape
    rows: list[tuple[int, int, torch.Tensor, float, float]] = []  # (example, cand, mask, w, t)
    for e, ex_id in enumerate(example_ids):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(ex_id))
        masks, weights, times = mask_plan(W, per_size, gen)
        for m in range(masks.shape[0]):
            for k in range(K):
                rows.append((e, k, masks[m], float(weights[m]), float(times[m])))
    total = torch.zeros(len(prompts), K, dtype=torch.float64)
    for start in range(0, len(rows), max_rows):
        chunk = rows[start : start + max_rows]
        ids, keep = pad_left([prompts[e] for e, *_ in chunk], pad_token_id)
        instr, _ = pad_left([instructions[e] for e, *_ in chunk], 0)
        N, Lp = ids.shape
        x0 = torch.cat([ids, answers[[k for _, k, *_ in chunk]]], dim=1)  # (N, Lp + W)
        masked = torch.stack([m for _, _, m, _, _ in chunk])  # (N, W)
        scored = torch.cat([torch.zeros(N, Lp, dtype=torch.bool), masked], dim=1)
        x_t = x0.masked_fill(scored, mask_token_id)
        attn = torch.cat([keep, torch.ones(N, W, dtype=torch.bool)], dim=1).long()
        inst = torch.cat([instr.bool(), torch.zeros(N, W, dtype=torch.bool)], dim=1)
        t = torch.tensor([tt for *_, tt in chunk], dtype=torch.float32)
        hidden = hidden_fn(x_t, t, attn, inst)
        logits = head(hidden[scored]).float()
        nll = torch.nn.functional.cross_entropy(logits, x0[scored], reduction="none")
        per_row = torch.zeros(N, dtype=torch.float64).index_add_(
            0, scored.nonzero(as_tuple=True)[0], nll.double()
        )
        for r, (e, k, _, w, _) in enumerate(chunk):
            total[e, k] += w * per_row[r]
    return total.float()


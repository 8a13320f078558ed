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

The estimator's cost is at most ``candidates x sum_k min(C(W, k), per_size)`` denoiser rows per
example; candidates that look the same outside a mask share that row.
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
    # The denoiser's input for (example, candidate, mask) is the prompt plus the candidate with
    # the mask applied. Candidates that agree outside the mask feed it the same input (always
    # for the fully masked answer; for verbalisers that differ in their first token and share
    # their EOS padding, for every mask over that token), so each distinct input runs once and
    # every candidate's NLL is read from its logits.
    feeds: dict[tuple, int] = {}
    feed_rows: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []  # (example, x answer, mask, t)
    uses: list[tuple[int, int, int, float]] = []  # (example, candidate, feed, weight)
    for e, ex_id in enumerate(example_ids):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(ex_id))
        masks, weights, times = mask_plan(W, per_size, gen)
        for m in range(masks.shape[0]):
            for k in range(K):
                visible = answers[k].masked_fill(masks[m], mask_token_id)
                key = (e, tuple(masks[m].tolist()), tuple(visible.tolist()))
                if key not in feeds:
                    feeds[key] = len(feed_rows)
                    feed_rows.append((e, visible, masks[m], float(times[m])))
                uses.append((e, k, feeds[key], float(weights[m])))
    feed_nll = torch.zeros(len(feed_rows), K, dtype=torch.float64)  # NLL of each candidate per input
    for start in range(0, len(feed_rows), max_rows):
        chunk = feed_rows[start : start + max_rows]
        ids, keep = pad_left([prompts[e] for e, *_ in chunk], pad_token_id)
        instr, _ = pad_left([instructions[e] for e, *_ in chunk], 0)
        N, Lp = ids.shape
        x_t = torch.cat([ids, torch.stack([v for _, v, _, _ in chunk])], dim=1)  # (N, Lp + W)
        masked = torch.stack([m for _, _, m, _ in chunk])  # (N, W)
        scored = torch.cat([torch.zeros(N, Lp, dtype=torch.bool), masked], dim=1)
        attn = torch.cat([keep, torch.ones(N, W, dtype=torch.bool)], dim=1).long()
        inst = torch.cat([instr.bool(), torch.zeros(N, W, dtype=torch.bool)], dim=1)
        t = torch.tensor([tt for *_, tt in chunk], dtype=torch.float32)
        hidden = hidden_fn(x_t, t, attn, inst)
        logp = torch.log_softmax(head(hidden[scored]).float(), dim=-1)  # (n, V)
        row, col = scored.nonzero(as_tuple=True)
        targets = answers[:, col - Lp].T  # (n, K): every candidate's token at each scored position
        nll = -logp.gather(1, targets).double()
        feed_nll[start : start + N] = torch.zeros(N, K, dtype=torch.float64).index_add_(0, row, nll)
    total = torch.zeros(len(prompts), K, dtype=torch.float64)
    for e, k, f, w in uses:
        total[e, k] += w * feed_nll[f, k]
    return total.float()


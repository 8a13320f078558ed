"""The verbaliser scorer: its value is the stratified any-order NLL, row by row, and candidates
that feed the denoiser the same input share one row."""

from __future__ import annotations

import torch
from ldp.evaluation.verbalizer import candidate_nll, mask_plan

MASK, PAD, V, D = 3, 0, 40, 16


class _Toy:
    """A context-dependent denoiser that ignores padding: H = E[x] + mean of the attended
    embeddings + t * u (so a row's result depends on its prompt, its visible answer and t)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(5)
        self.emb = torch.randn(V, D, generator=g)
        self.u = torch.randn(D, generator=g)
        self.out = torch.randn(D, V, generator=g)
        self.rows_seen = 0

    def hidden(self, x, t, attn, instr):
        self.rows_seen += x.shape[0]
        e = self.emb[x]
        a = attn.float().unsqueeze(-1)
        context = (e * a).sum(1, keepdim=True) / a.sum(1, keepdim=True)
        return e + context + t.view(-1, 1, 1) * self.u

    def head(self, h):
        return h @ self.out


PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
INSTR = [[True] * len(p) for p in PROMPTS]


def _reference(toy, answers, per_size, seed):
    """The estimator written out one (example, candidate, mask) row at a time."""
    K, W = answers.shape
    out = torch.zeros(len(PROMPTS), K, dtype=torch.float64)
    for e, prompt in enumerate(PROMPTS):
        masks, weights, times = mask_plan(W, per_size, torch.Generator().manual_seed(seed * 1_000_003 + e))
        for m in range(masks.shape[0]):
            for k in range(K):
                x0 = torch.tensor(prompt + answers[k].tolist())[None]
                scored = torch.cat([torch.zeros(len(prompt), dtype=torch.bool), masks[m]])[None]
                x_t = x0.masked_fill(scored, MASK)
                h = toy.hidden(x_t, times[m : m + 1].float(), torch.ones_like(x_t), None)
                nll = torch.nn.functional.cross_entropy(toy.head(h[scored]), x0[scored], reduction="sum")
                out[e, k] += weights[m] * nll.double()
    return out.float()


def _score(toy, answers, per_size=2, seed=1, max_rows=7):
    return candidate_nll(
        toy.hidden, toy.head, MASK, PROMPTS, INSTR, answers, example_ids=list(range(len(PROMPTS))),
        per_size=per_size, seed=seed, pad_token_id=PAD, max_rows=max_rows,
    )


def test_scores_equal_the_row_by_row_estimator():
    answers = torch.tensor([[20, 21, 2, 2], [22, 2, 2, 2], [20, 23, 24, 2]])
    toy = _Toy()
    got = _score(toy, answers, per_size=2, seed=4)
    want = _reference(_Toy(), answers, per_size=2, seed=4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_candidates_that_agree_outside_the_mask_share_one_row():
    # sst2-like verbalisers: they differ in the first token only, then EOS padding (2).
    answers = torch.tensor([[20, 2, 2, 2], [21, 2, 2, 2]])
    per_size, seed = 4, 0
    toy = _Toy()
    _score(toy, answers, per_size=per_size, seed=seed)
    expected = 0
    for e in range(len(PROMPTS)):
        masks, _, _ = mask_plan(4, per_size, torch.Generator().manual_seed(seed * 1_000_003 + e))
        # a mask over the first token hides the only difference: one row, else one per candidate
        expected += sum(1 if bool(m[0]) else 2 for m in masks)
        naive = 2 * masks.shape[0]
    assert toy.rows_seen == expected < naive * len(PROMPTS)
    torch.testing.assert_close(
        _score(_Toy(), answers, per_size=per_size, seed=seed),
        _reference(_Toy(), answers, per_size=per_size, seed=seed), rtol=1e-5, atol=1e-5,
    )

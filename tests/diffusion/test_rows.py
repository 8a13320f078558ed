"""sample_rows: a batch of independent rows gives each row what it gives alone."""

from __future__ import annotations

import pytest
import torch
from ldp.diffusion import DiffusionConfig, RowSpec, sample, sample_rows
from ldp.errors import UsageError
from ldp.models.native import DiffusionTransformer, build_config

from .conftest import MASK, VOCAB, Oracle, gen


@pytest.fixture(scope="module")
def native():
    """A random native transformer: attention honours the mask, RoPE positions."""
    torch.manual_seed(0)
    cfg = build_config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=64, mask_token_id=MASK,
                       pad_token_id=0, eos_token_id=2, tokenizer=None, time_conditioning=True)
    return DiffusionTransformer(cfg).eval()


def _prompt(n, seed):
    return torch.randint(4, VOCAB, (n,), generator=gen(seed)).tolist()


MIXED = [
    RowSpec(_prompt(5, 1), 8, steps=8, seed=1),
    RowSpec(_prompt(9, 2), 4, steps=2, temperature=0.8, seed=2),
    RowSpec(_prompt(3, 3), 12, steps=6, block_length=4, temperature=1.0, seed=3),
    RowSpec(_prompt(7, 4), 8, block_length=4, threshold=0.2, seed=4),
    RowSpec(_prompt(4, 5), 6, steps=12, threshold=0.05, temperature=0.5, seed=5),
]


def test_each_row_of_a_mixed_batch_matches_the_row_alone(native):
    cfg = DiffusionConfig(num_steps=16)
    together = sample_rows(native, MIXED, cfg)
    for spec, got in zip(MIXED, together):
        alone = sample_rows(native, [spec], cfg)[0]
        assert got.answer == alone.answer and got.steps == alone.steps
        assert len(got.answer) == spec.gen_length and MASK not in got.answer
    reordered = sample_rows(native, MIXED[::-1], cfg)[::-1]
    assert [r.answer for r in reordered] == [r.answer for r in together]


@pytest.mark.parametrize("spec", MIXED, ids=range(len(MIXED)))
def test_a_row_alone_follows_sample_exactly(native, spec):
    cfg = DiffusionConfig(num_steps=16)
    prompt = torch.tensor([spec.prompt_ids])
    ref = sample(native, prompt, spec.gen_length, cfg, steps=spec.steps, temperature=spec.temperature,
                 block_length=spec.block_length, threshold=spec.threshold, seed=spec.seed)
    calls = []
    sample(native, prompt, spec.gen_length, cfg, steps=spec.steps, temperature=spec.temperature,
           block_length=spec.block_length, threshold=spec.threshold, seed=spec.seed,
           on_step=lambda k, x: calls.append(k))
    got = sample_rows(native, [spec], cfg)[0]
    assert got.answer == ref[0, len(spec.prompt_ids):].tolist()
    assert got.steps == len(calls)


def test_threshold_steps_adapt_to_confidence():
    target = torch.randint(4, VOCAB, (1, 16), generator=gen(7))
    cfg = DiffusionConfig(num_steps=12)
    sure, unsure = Oracle(target, 0.99), Oracle(target, 0.3)
    spec = RowSpec(target[0, :4].tolist(), 12, block_length=4, threshold=0.9)
    fast = sample_rows(sure, [spec], cfg)[0]
    slow = sample_rows(unsure, [spec], cfg)[0]
    assert fast.steps == 3  # one step per block: every position clears the threshold
    assert slow.steps == 12  # none does: one (the most confident) per step
    assert fast.answer == slow.answer == target[0, 4:].tolist()


def test_on_step_sees_every_rows_progress(native):
    seen: dict[int, list[int]] = {}
    sample_rows(native, MIXED[:2], DiffusionConfig(num_steps=16),
                on_step=lambda i, k, ans: seen.setdefault(i, []).append(int((ans == MASK).sum())))
    assert seen[0] == [7, 6, 5, 4, 3, 2, 1, 0] and seen[1] == [2, 0]


@pytest.mark.parametrize("spec, words", [
    (RowSpec([5], 6, block_length=4), "multiple"),
    (RowSpec([5], 8, steps=1, block_length=4), "blocks"),
    (RowSpec([5], 4, threshold=1.5), "threshold"),
    (RowSpec([], 4), "empty"),
    (RowSpec([5], 4, temperature=-1), "temperature"),
])
def test_bad_rows_are_refused(native, spec, words):
    with pytest.raises(UsageError, match=words):
        sample_rows(native, [spec], DiffusionConfig(num_steps=8))


def test_hidden_fn_is_told_exactly_the_positions_it_must_get_right(native):
    """The positions hint is every masked position of each row's current block, nothing else:
    a hidden_fn that returns garbage everywhere else must not change any row's answer."""
    seen = []

    def hidden_fn(x, t, attn, rows, positions):
        h = native.hidden_states(x, t, attn)
        seen.append((x.clone(), positions.clone()))
        return torch.where(positions.unsqueeze(-1), h, torch.full_like(h, 1e4))

    cfg = DiffusionConfig(num_steps=16)
    got = sample_rows(native, MIXED, cfg, hidden_fn=hidden_fn)
    assert [r.answer for r in got] == [r.answer for r in sample_rows(native, MIXED, cfg)]
    x, positions = seen[0]
    assert torch.equal(positions, (x == MASK) & positions)  # only masked positions
    assert bool(positions.any(dim=1).all())  # every active row has some

import pytest
import torch
from ldp.diffusion import corrupt, sample_t, uniform_noise
from ldp.errors import UsageError

from .conftest import MASK, VOCAB, gen


def test_sample_t_range_and_antithetic_mirror():
    t = sample_t(4000, 10, gen())
    assert t.dtype == torch.long and t.min() == 1 and t.max() == 10
    assert torch.bincount(t, minlength=11)[1:].float().div(4000).sub(0.1).abs().max() < 0.03
    a = sample_t(9, 100, gen(), antithetic=True)
    assert a.shape == (9,) and torch.equal(a[5:], 101 - a[:4])
    assert torch.equal(sample_t(8, 100, gen(3)), sample_t(8, 100, gen(3)))


def _x0(B=64, L=20, prompt=8, seed=0):
    x0 = torch.randint(4, VOCAB, (B, L), generator=gen(seed))
    response = torch.zeros(B, L, dtype=torch.bool)
    response[:, prompt:] = True
    return x0, response


@pytest.mark.parametrize("transition", ["absorbing", "uniform"])
@pytest.mark.parametrize("t_value", [1, 50, 100])
def test_corruption_only_touches_response_positions(transition, t_value):
    x0, response = _x0()
    # ragged prompts: row i has a prompt of 8 + i % 5 tokens
    for i in range(x0.shape[0]):
        response[i, : 8 + i % 5] = False
    t = torch.full((x0.shape[0],), t_value)
    x_t, corrupted = corrupt(
        x0,
        t,
        response,
        num_steps=100,
        mask_token_id=MASK,
        vocab_size=VOCAB,
        transition=transition,
        generator=gen(),
    )
    assert torch.equal(x_t[~response], x0[~response])
    assert not corrupted[~response].any()
    assert torch.equal(x_t[~corrupted], x0[~corrupted])
    if t_value == 100:  # beta_T = 1: everything in the response is corrupted
        assert corrupted[response].all()
    if transition == "absorbing":
        assert (x_t[corrupted] == MASK).all()
    else:
        assert not (x_t == MASK).any()


def test_corruption_rate_follows_beta():
    x0 = torch.randint(4, VOCAB, (2000, 10), generator=gen(1))
    response = torch.ones_like(x0, dtype=torch.bool)
    for kind, expected in (("linear", 0.3), ("cosine", 0.1089935)):
        _, c = corrupt(
            x0,
            torch.full((2000,), 30),
            response,
            num_steps=100,
            mask_token_id=MASK,
            vocab_size=VOCAB,
            schedule=kind,
            generator=gen(2),
            min_one=False,
        )
        assert c.float().mean().item() == pytest.approx(expected, abs=0.01)


def test_min_one_corrupts_every_sequence_with_a_response():
    x0, response = _x0(B=500, L=6, prompt=4)
    response[0] = False  # a sequence without response tokens stays clean
    t = torch.ones(500, dtype=torch.long)  # beta = 1/100: most rows would draw nothing
    _, loose = corrupt(
        x0,
        t,
        response,
        num_steps=100,
        mask_token_id=MASK,
        vocab_size=VOCAB,
        generator=gen(),
        min_one=False,
    )
    _, c = corrupt(
        x0,
        t,
        response,
        num_steps=100,
        mask_token_id=MASK,
        vocab_size=VOCAB,
        generator=gen(),
        min_one=True,
    )
    assert not loose[1:].any(dim=1).all()
    assert c[1:].any(dim=1).all() and not c[0].any()
    assert not c[:, :4].any()
    # the forced position is spread over the response, not always the first one
    assert c[1:, 4].any() and c[1:, 5].any()


def test_corruption_is_deterministic_per_generator():
    x0, response = _x0()
    t = torch.full((x0.shape[0],), 40)
    kw = {"num_steps": 100, "mask_token_id": MASK, "vocab_size": VOCAB, "transition": "uniform"}
    a = corrupt(x0, t, response, generator=gen(5), **kw)[0]
    b = corrupt(x0, t, response, generator=gen(5), **kw)[0]
    c = corrupt(x0, t, response, generator=gen(6), **kw)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_uniform_noise_is_uniform_without_mask():
    noise = uniform_noise((20000,), 8, 3, gen())
    counts = torch.bincount(noise, minlength=8).float() / 20000
    assert counts[3] == 0
    assert (counts[torch.arange(8) != 3] - 1 / 7).abs().max() < 0.015


def test_corrupt_refuses_bad_shapes_and_transition():
    x0, response = _x0(B=2)
    with pytest.raises(UsageError, match="shape"):
        corrupt(
            x0,
            torch.ones(3, dtype=torch.long),
            response,
            num_steps=10,
            mask_token_id=MASK,
            vocab_size=VOCAB,
        )
    with pytest.raises(UsageError, match="transition"):
        corrupt(
            x0,
            torch.ones(2, dtype=torch.long),
            response,
            num_steps=10,
            mask_token_id=MASK,
            vocab_size=VOCAB,
            transition="gaussian",
        )

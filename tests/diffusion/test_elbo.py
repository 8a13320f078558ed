import math

import pytest
import torch
from ldp.diffusion import DiffusionConfig, elbo_nll, elbo_steps, perplexity, training_loss
from ldp.errors import UsageError

from .conftest import VOCAB, Oracle, gen, make_batch


def _nll(model, batch, cfg=None, **kw):
    kw.setdefault("generator", gen())
    return elbo_nll(
        model, batch["input_ids"], batch["response_mask"], cfg or DiffusionConfig(), **kw
    )


def test_elbo_steps_pair_t_with_T_plus_1_minus_t():
    t = elbo_steps(6, 5, 100, gen(), antithetic=True)
    assert t.shape == (6, 5) and torch.equal(t[3:], 101 - t[:3])
    assert t.min() >= 1 and t.max() <= 100
    with pytest.raises(UsageError, match="n_samples"):
        elbo_steps(0, 5, 100)


def test_elbo_finite_shape_and_deterministic(toy):
    batch = make_batch(B=3)
    a = _nll(toy, batch, n_samples=3)
    assert a.shape == (3,) and torch.isfinite(a).all() and (a > 0).all()
    assert torch.equal(a, _nll(toy, batch, n_samples=3))
    assert not torch.equal(a, _nll(toy, batch, n_samples=3, generator=gen(1)))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_elbo_of_perfect_and_uniform_models(schedule):
    batch = make_batch(B=6)
    cfg = DiffusionConfig(schedule=schedule)
    perfect = _nll(Oracle(batch["input_ids"]), batch, cfg, n_samples=4)
    assert torch.all(perfect.abs() < 1e-4)
    uniform = _nll(Oracle(batch["input_ids"], 1.0 / VOCAB), batch, cfg, n_samples=64)
    per_token = uniform.sum() / batch["response_mask"].sum()
    assert per_token.item() == pytest.approx(math.log(VOCAB), rel=0.1)


def test_elbo_ignores_the_prompt():
    batch = make_batch(B=4)
    target = batch["input_ids"].clone()
    target[~batch["response_mask"]] = 5  # wrong on every prompt token
    assert torch.all(_nll(Oracle(target), batch, n_samples=4).abs() < 1e-4)


def test_more_samples_lower_variance(toy):
    batch = make_batch(B=2)

    def spread(n):
        vals = torch.stack([_nll(toy, batch, n_samples=n, generator=gen(s)) for s in range(10)])
        return vals.std(dim=0).mean().item()

    assert spread(16) < 0.6 * spread(1)


def test_perplexity_is_exp_of_nll_per_response_token(toy):
    batches = [make_batch(B=2, seed=1), make_batch(B=3, L=10, prompt=3, seed=2)]
    ppl = perplexity(toy, batches, DiffusionConfig(), n_samples=2, generator=gen(7))
    g = gen(7)
    nll = sum(_nll(toy, b, n_samples=2, generator=g).sum().item() for b in batches)
    tokens = sum(b["response_mask"].sum().item() for b in batches)
    assert ppl == pytest.approx(math.exp(nll / tokens), rel=1e-6)
    big = make_batch(B=16, seed=1)
    uniform = perplexity(
        Oracle(big["input_ids"], 1.0 / VOCAB),
        [big],
        DiffusionConfig(),
        n_samples=32,
        generator=gen(),
    )
    assert math.log(uniform) == pytest.approx(math.log(VOCAB), rel=0.05)
    with pytest.raises(UsageError, match="no response tokens"):
        empty = {
            "input_ids": batches[0]["input_ids"],
            "response_mask": torch.zeros(2, 12, dtype=torch.bool),
        }
        perplexity(toy, [empty], DiffusionConfig())


def test_elbo_uses_hidden_fn(toy):
    batch = make_batch(B=2)
    plain = _nll(toy, batch, n_samples=2)
    shifted = _nll(
        toy, batch, n_samples=2, hidden_fn=lambda x, t, a: toy.hidden_states(x, t, a) * 3.0
    )
    assert not torch.allclose(plain, shifted)


def test_elbo_decreases_when_the_toy_model_trains(toy):
    batch = make_batch(B=8, seed=5)
    cfg = DiffusionConfig()
    before = _nll(toy, batch, cfg, n_samples=8).mean()
    opt = torch.optim.Adam(toy.parameters(), lr=3e-2)
    g = gen(1)
    for _ in range(25):
        loss, _ = training_loss(toy, batch, cfg, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _nll(toy, batch, cfg, n_samples=8).mean()
    assert after < 0.7 * before

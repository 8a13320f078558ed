import pytest
import torch

from ldp.diffusion import DiffusionConfig, corrupt, corruption_prob, elbo_weight, sample_t
from ldp.errors import UsageError
from ldp.config import build


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_endpoints_and_monotone(kind):
    T = 100
    beta = corruption_prob(torch.arange(0, T + 1), T, kind)
    assert beta[0] == 0.0 and beta[-1] == pytest.approx(1.0)
    assert torch.all(beta[1:] >= beta[:-1])


def test_linear_elbo_weight_is_T_over_t():
    t = torch.arange(1, 101)
    assert torch.allclose(elbo_weight(t, 100, "linear"), 100.0 / t.float(), rtol=1e-5)


def test_antithetic_steps_mirror():
    t = sample_t(8, 100, torch.Generator().manual_seed(0), antithetic=True)
    assert torch.equal(t[4:], 101 - t[:4])
    assert t.min() >= 1 and t.max() <= 100


@pytest.mark.parametrize("transition", ["absorbing", "uniform"])
def test_corruption_only_touches_response_positions(transition):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(4, 40, (64, 20), generator=g)
    response = torch.zeros(64, 20, dtype=torch.bool)
    response[:, 8:] = True
    t = torch.full((64,), 100)  # beta = 1: every response token corrupted
    x_t, corrupted = corrupt(x0, t, response, num_steps=100, mask_token_id=3, vocab_size=40,
                             transition=transition, generator=g)
    assert torch.equal(x_t[:, :8], x0[:, :8])
    assert not corrupted[:, :8].any() and corrupted[:, 8:].all()
    if transition == "absorbing":
        assert (x_t[:, 8:] == 3).all()
    else:
        assert not (x_t == 3).any()


def test_corruption_rate_follows_beta_and_min_one():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(4, 40, (2000, 10), generator=g)
    response = torch.ones_like(x0, dtype=torch.bool)
    _, c = corrupt(x0, torch.full((2000,), 30), response, num_steps=100, mask_token_id=3,
                   vocab_size=40, generator=g, min_one=False)
    assert c.float().mean().item() == pytest.approx(0.3, abs=0.02)
    _, c = corrupt(x0, torch.ones(2000, dtype=torch.long), response, num_steps=100,
                   mask_token_id=3, vocab_size=40, generator=g, min_one=True)
    assert c.any(dim=1).all()


def test_config_checks():
    with pytest.raises(UsageError):
        build(DiffusionConfig, {"num_steps": 0})
    with pytest.raises(UsageError):
        build(DiffusionConfig, {"transition": "gaussian"})

import pytest
import torch
from ldp.config import build, load
from ldp.diffusion import DiffusionConfig, corruption_prob, elbo_weight, loss_weight
from ldp.errors import UsageError


def test_config_builds_from_dict_with_defaults_and_overrides():
    cfg = build(
        DiffusionConfig, {"num_steps": 50, "schedule": "cosine", "loss_norm": "answer_length"}
    )
    assert (cfg.num_steps, cfg.schedule, cfg.loss_norm) == (50, "cosine", "answer_length")
    assert (cfg.transition, cfg.loss_weighting) == ("absorbing", "elbo")
    assert load(DiffusionConfig, None, ["loss_weighting=inv_t"]).loss_weighting == "inv_t"


@pytest.mark.parametrize(
    "data, words",
    [
        ({"num_steps": 0}, "num_steps"),
        ({"transition": "gaussian"}, "transition"),
        ({"loss_norm": "mean"}, "loss_norm"),
        ({"bogus": 1}, "bogus"),
        ({"transition": "uniform", "loss_norm": "corrupted"}, "absorbing"),
    ],
)
def test_config_refuses_bad_values_with_one_line(data, words):
    with pytest.raises(UsageError, match=words) as info:
        build(DiffusionConfig, data)
    assert "\n" not in str(info.value)


def test_config_post_init_checks_direct_construction():
    with pytest.raises(ValueError, match="schedule"):
        DiffusionConfig(schedule="sqrt")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_endpoints_and_monotone(kind):
    beta = corruption_prob(torch.arange(0, 101), 100, kind)
    assert beta[0] == 0.0 and beta[-1] == 1.0
    assert torch.all(beta[1:] > beta[:-1])


def test_schedule_values():
    assert corruption_prob(25, 100, "linear").item() == pytest.approx(0.25)
    # cosine corrupts more slowly early: 1 - cos(pi/8)
    assert corruption_prob(25, 100, "cosine").item() == pytest.approx(0.0761205, abs=1e-6)
    # fractional times with num_steps=1 (the sampler's use) agree with integer steps
    assert corruption_prob(0.3, 1, "cosine").item() == pytest.approx(
        corruption_prob(30, 100, "cosine").item()
    )
    with pytest.raises(UsageError, match="schedule"):
        corruption_prob(1, 10, "sqrt")


def test_linear_elbo_weight_is_T_over_t():
    t = torch.arange(1, 101)
    assert torch.allclose(elbo_weight(t, 100, "linear"), 100.0 / t.float(), rtol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_elbo_weight_times_beta_averages_to_one(kind):
    # E_t[w_t * beta_t] = sum_t (beta_t - beta_{t-1}) = 1: a model with NLL c per token gets a
    # bound of c per response token, whatever the schedule.
    t = torch.arange(1, 101)
    w = elbo_weight(t, 100, kind)
    assert (w * corruption_prob(t, 100, kind)).mean().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.all(w > 0)


def test_loss_weights():
    t = torch.tensor([1, 10, 50])
    assert torch.allclose(loss_weight(t, 100, "cosine", "inv_t"), torch.tensor([100.0, 10.0, 2.0]))
    assert torch.equal(loss_weight(t, 100, "cosine", "none"), torch.ones(3))
    assert torch.allclose(loss_weight(t, 100, "cosine", "elbo"), elbo_weight(t, 100, "cosine"))
    with pytest.raises(UsageError):
        loss_weight(t, 100, "linear", "sqrt")

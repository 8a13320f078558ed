import math

import pytest
import torch

from ldp.diffusion import DiffusionConfig, elbo_nll, sample, training_loss

from .conftest import MASK, VOCAB, Oracle


def _batch(B=4, L=12, prompt=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (B, L), generator=g)
    response = torch.zeros(B, L, dtype=torch.bool)
    response[:, prompt:] = True
    return {"input_ids": ids, "response_mask": response}


def test_loss_ignores_prompt_tokens(tiny_model):
    cfg = DiffusionConfig()
    batch = _batch()
    t = torch.tensor([10, 40, 70, 100])
    base, _ = training_loss(tiny_model, batch, cfg, generator=torch.Generator().manual_seed(0), t=t)

    # Recording which positions the head sees: never a prompt position.
    seen = []
    orig = tiny_model.head
    tiny_model.head = lambda h: (seen.append(h.shape[0]), orig(h))[1]
    training_loss(tiny_model, batch, cfg, generator=torch.Generator().manual_seed(0), t=t)
    tiny_model.head = orig
    assert seen[0] <= int(batch["response_mask"].sum())

    # Changing the loss weight of prompt tokens is impossible: a model that is perfect on the
    # response and arbitrarily wrong on the prompt has ~zero loss.
    target = batch["input_ids"].clone()
    target[:, :5] = (target[:, :5] + 1) % VOCAB  # wrong on the prompt
    loss, stats = training_loss(Oracle(target), batch, cfg, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-6 and stats["corrupted"] > 0
    assert base.item() > 0.5


@pytest.mark.parametrize("norm", ["tokens", "sequence", "corrupted", "batch"])
def test_uniform_model_loss_is_log_V_per_corrupted_token(norm):
    batch = _batch(B=8)
    cfg = DiffusionConfig(loss_weighting="none", loss_norm=norm)
    model = Oracle(batch["input_ids"], confidence=1.0 / VOCAB)
    loss, stats = training_loss(model, batch, cfg, generator=torch.Generator().manual_seed(0))
    assert stats["nll"] == pytest.approx(math.log(VOCAB), rel=1e-4)
    if norm == "corrupted":
        assert loss.item() == pytest.approx(math.log(VOCAB), rel=1e-4)


def test_loss_gradient_reaches_parameters(tiny_model):
    loss, _ = training_loss(tiny_model, _batch(), DiffusionConfig(), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert tiny_model.get_input_embeddings().weight.grad.abs().sum() > 0


@pytest.mark.parametrize("remasking", ["random", "low_confidence"])
@pytest.mark.parametrize("block", [None, 4])
def test_sampler_reveals_everything_and_keeps_prompt(tiny_model, remasking, block):
    prompt = torch.randint(4, VOCAB, (3, 6), generator=torch.Generator().manual_seed(0))
    out = sample(tiny_model, prompt, 8, DiffusionConfig(num_steps=16), remasking=remasking,
                 block_length=block, seed=0)
    assert out.shape == (3, 14)
    assert torch.equal(out[:, :6], prompt)
    assert not (out == MASK).any()


def test_sampler_is_deterministic_per_seed_and_temperature_varies(tiny_model):
    prompt = torch.randint(4, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    cfg = DiffusionConfig(num_steps=8)
    a = sample(tiny_model, prompt, 8, cfg, temperature=1.0, seed=1)
    b = sample(tiny_model, prompt, 8, cfg, temperature=1.0, seed=1)
    c = sample(tiny_model, prompt, 8, cfg, temperature=1.0, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_block_sampling_fills_blocks_left_to_right(tiny_model):
    prompt = torch.randint(4, VOCAB, (1, 4), generator=torch.Generator().manual_seed(0))
    states = []

    def spy(x, t):
        states.append(x.clone())
        return tiny_model(x, t)

    sample(tiny_model, prompt, 8, DiffusionConfig(num_steps=8), block_length=4, logits_fn=spy, seed=0)
    # While the second block is being denoised, the first is complete.
    second = [s for s in states if (s[0, 8:] == MASK).any() and not (s[0, 4:8] == MASK).any()]
    assert second, "second block never ran after the first completed"
    assert all(not (s[0, 4:8] == MASK).any() for s in states if (s[0, 8:] != MASK).any())


def test_oracle_sampler_recovers_target():
    target = torch.randint(4, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    out = sample(Oracle(target), target[:, :4], 6, DiffusionConfig(num_steps=10), seed=0)
    assert torch.equal(out, target)


def test_uniform_transition_sampler_runs(tiny_model):
    prompt = torch.randint(4, VOCAB, (2, 4), generator=torch.Generator().manual_seed(0))
    out = sample(tiny_model, prompt, 6, DiffusionConfig(num_steps=6, transition="uniform"), seed=0)
    assert torch.equal(out[:, :4], prompt) and not (out == MASK).any()


def test_elbo_perfect_and_uniform_models():
    batch = _batch(B=6)
    cfg = DiffusionConfig()
    perfect = elbo_nll(Oracle(batch["input_ids"]), batch["input_ids"], batch["response_mask"], cfg, n_samples=4,
                       generator=torch.Generator().manual_seed(0))
    assert torch.all(perfect < 1e-4)
    uniform = elbo_nll(Oracle(batch["input_ids"], 1.0 / VOCAB), batch["input_ids"], batch["response_mask"], cfg,
                       n_samples=64, generator=torch.Generator().manual_seed(0))
    per_token = uniform / batch["response_mask"].sum(1)
    assert torch.all(torch.isfinite(uniform))
    assert per_token.mean().item() == pytest.approx(math.log(VOCAB), rel=0.1)


def test_more_samples_lower_variance(tiny_model):
    batch = _batch(B=2)
    cfg = DiffusionConfig()

    def spread(n):
        vals = [elbo_nll(tiny_model, batch["input_ids"], batch["response_mask"], cfg, n_samples=n,
                         generator=torch.Generator().manual_seed(s))[0].item() for s in range(8)]
        return torch.tensor(vals).std().item()

    assert spread(16) < spread(1)


def test_elbo_decreases_with_training(tiny_model):
    batch = _batch(B=8, seed=5)
    cfg = DiffusionConfig()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    before = elbo_nll(tiny_model, batch["input_ids"], batch["response_mask"], cfg, n_samples=8, generator=gen()).mean()
    opt = torch.optim.AdamW(tiny_model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(120):
        loss, _ = training_loss(tiny_model, batch, cfg, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = elbo_nll(tiny_model, batch["input_ids"], batch["response_mask"], cfg, n_samples=8, generator=gen()).mean()
    assert after < 0.7 * before

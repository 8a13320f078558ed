import math

import pytest
import torch
import torch.nn.functional as F
from ldp.diffusion import (
    DiffusionConfig,
    diffusion_loss,
    masked_positions_nll,
    reduce_loss,
    training_loss,
)
from ldp.errors import UsageError

from .conftest import VOCAB, Oracle, gen, make_batch


def test_masked_positions_nll_runs_head_on_scored_rows_only(toy):
    batch = make_batch()
    x0 = batch["input_ids"]
    hidden = toy.hidden_states(x0)
    positions = torch.zeros_like(x0, dtype=torch.bool)
    positions[0, 6], positions[2, 9], positions[3, 11] = True, True, True
    toy.head_calls.clear()
    out = masked_positions_nll(toy.head, hidden, x0, positions)
    assert toy.head_calls == [3]
    full = F.cross_entropy(toy(x0).transpose(1, 2), x0, reduction="none")  # (B, L)
    assert torch.allclose(out[positions], full[positions], atol=1e-6)
    assert (out[~positions] == 0).all()


def test_loss_ignores_prompt_positions(toy):
    batch = make_batch()
    prompt = ~batch["response_mask"]
    cfg = DiffusionConfig()
    t = torch.tensor([10, 40, 70, 100])
    base, stats = training_loss(toy, batch, cfg, generator=gen(), t=t)

    # Garbage hidden states (hence logits) at prompt positions: the loss is unchanged.
    garbage = 50.0 * torch.randn(*batch["input_ids"].shape, toy.hidden_size, generator=gen(9))

    def perturbed(x, t_norm, attention_mask):
        return toy.hidden_states(x, t_norm, attention_mask) + garbage * prompt.unsqueeze(-1)

    same, _ = training_loss(toy, batch, cfg, generator=gen(), t=t, hidden_fn=perturbed)
    assert same.item() == base.item() and stats["corrupted"] > 0

    # Garbage at a response position does change it (the check above can fail).
    resp_only = batch["response_mask"].unsqueeze(-1)
    changed, _ = training_loss(
        toy,
        batch,
        cfg,
        generator=gen(),
        t=t,
        hidden_fn=lambda x, s, a: toy.hidden_states(x, s, a) + garbage * resp_only,
    )
    assert changed.item() != pytest.approx(base.item())

    # A model perfect on the response and wrong on every prompt token has zero loss.
    target = batch["input_ids"].clone()
    target[prompt] = (target[prompt] + 1) % VOCAB
    loss, _ = training_loss(Oracle(target), batch, cfg, generator=gen())
    assert loss.item() < 1e-6


def test_prompt_targets_are_not_labels(toy):
    batch = make_batch()
    positions = batch["response_mask"].clone()
    hidden = toy.hidden_states(batch["input_ids"])
    other = batch["input_ids"].clone()
    other[~positions] = 4  # different prompt labels, same response labels
    a = masked_positions_nll(toy.head, hidden, batch["input_ids"], positions)
    b = masked_positions_nll(toy.head, hidden, other, positions)
    assert torch.equal(a, b)


def test_head_sees_only_corrupted_positions(toy):
    batch = make_batch(B=6, L=16)
    toy.head_calls.clear()
    _, stats = training_loss(toy, batch, DiffusionConfig(), generator=gen(1))
    assert toy.head_calls == [int(stats["corrupted"])]
    assert 6 <= stats["corrupted"] < batch["response_mask"].sum()


def test_reduce_loss_normalisations_by_hand():
    weighted = torch.tensor([[0.0, 2.0, 4.0, 0.0], [0.0, 0.0, 6.0, 0.0]])
    response = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    scored = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 0]], dtype=torch.bool)
    assert reduce_loss(weighted, response, scored, "tokens").item() == pytest.approx(12 / 5)
    assert reduce_loss(weighted, response, scored, "answer_length").item() == pytest.approx(
        (6 / 3 + 6 / 2) / 2
    )
    assert reduce_loss(weighted, response, scored, "corrupted").item() == pytest.approx(12 / 3)
    assert reduce_loss(weighted, response, scored, "batch").item() == pytest.approx(12 / 2)
    with pytest.raises(UsageError, match="normalisation"):
        reduce_loss(weighted, response, scored, "mean")


def test_diffusion_loss_weights_by_step():
    nll = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    response = torch.tensor([[0, 1, 1], [0, 1, 1]], dtype=torch.bool)
    scored = nll > 0
    t = torch.tensor([10, 50])
    for weighting, expected in (("none", 3 / 4), ("inv_t", (2 * 10 + 1 * 2) / 4)):
        cfg = DiffusionConfig(loss_weighting=weighting)
        loss, stats = diffusion_loss(nll, t, response, scored, cfg)
        assert loss.item() == pytest.approx(expected)
        assert stats["nll"] == pytest.approx(1.0) and stats["corrupted"] == 3
        assert stats["t_mean"] == pytest.approx(0.3) and stats["denoising_loss"] == pytest.approx(
            expected
        )


@pytest.mark.parametrize("norm", ["tokens", "answer_length", "corrupted", "batch"])
def test_uniform_model_has_log_V_per_corrupted_token(norm):
    batch = make_batch(B=8)
    cfg = DiffusionConfig(loss_weighting="none", loss_norm=norm)
    loss, stats = training_loss(
        Oracle(batch["input_ids"], 1.0 / VOCAB), batch, cfg, generator=gen()
    )
    assert stats["nll"] == pytest.approx(math.log(VOCAB), rel=1e-5)
    n_resp, n_corr = batch["response_mask"].sum().item(), stats["corrupted"]
    expected = {"tokens": n_corr / n_resp, "corrupted": 1.0, "batch": n_corr / 8}.get(norm)
    if expected is not None:
        assert loss.item() == pytest.approx(math.log(VOCAB) * expected, rel=1e-5)


def test_uniform_transition_scores_every_response_token(toy):
    batch = make_batch()
    _, stats = training_loss(
        toy,
        batch,
        DiffusionConfig(transition="uniform"),
        generator=gen(),
        t=torch.tensor([1, 1, 1, 1]),
    )
    assert stats["corrupted"] == batch["response_mask"].sum().item()


def test_loss_gradient_reaches_model_and_adapter(toy):
    delta = torch.zeros(toy.hidden_size, requires_grad=True)  # stands in for an adapter on H
    loss, _ = training_loss(
        toy,
        make_batch(),
        DiffusionConfig(),
        generator=gen(),
        hidden_fn=lambda x, t, a: toy.hidden_states(x, t, a) + delta,
    )
    loss.backward()
    assert toy.embed.weight.grad.abs().sum() > 0 and toy.out.weight.grad.abs().sum() > 0
    assert delta.grad.abs().sum() > 0


def test_training_loss_is_deterministic_per_generator(toy):
    batch = make_batch()
    a, _ = training_loss(toy, batch, DiffusionConfig(), generator=gen(4))
    b, _ = training_loss(toy, batch, DiffusionConfig(), generator=gen(4))
    c, _ = training_loss(toy, batch, DiffusionConfig(), generator=gen(5))
    assert a.item() == b.item() != c.item()


def test_training_loss_refuses_incomplete_batch(toy):
    with pytest.raises(UsageError, match="response_mask"):
        training_loss(toy, {"input_ids": make_batch()["input_ids"]}, DiffusionConfig())


def test_stats_split_the_nll_into_answer_and_eos_padding(toy):
    # An oracle that is sure of the EOS padding and uniform on the answer's own tokens: the
    # mean NLL looks small, the answer's is log V.
    from ldp.diffusion.loss import split_nll

    from .conftest import EOS

    x0 = torch.tensor([[5, 6, 7, EOS, EOS, EOS], [8, 9, EOS, EOS, EOS, EOS]])
    scored = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 0, 1, 1, 1, 1]], dtype=torch.bool)
    nll = torch.where(x0 == EOS, 0.0, math.log(VOCAB)) * scored
    stats = split_nll(nll, x0, scored, EOS)
    assert stats == {"nll_answer": pytest.approx(math.log(VOCAB)), "nll_eos": 0.0, "answer_tokens": 3.0}

    batch = make_batch(B=8)
    batch["input_ids"][:, -4:] = EOS  # answers of 3 tokens padded with 4 EOS
    cfg = DiffusionConfig(loss_weighting="none")
    _, stats = training_loss(toy, batch, cfg, generator=gen())
    assert 0 < stats["answer_tokens"] < stats["corrupted"]
    assert stats["nll_answer"] != pytest.approx(stats["nll_eos"])
    n_answer = stats["answer_tokens"]
    n_eos = stats["corrupted"] - n_answer
    mixed = (stats["nll_answer"] * n_answer + stats["nll_eos"] * n_eos) / stats["corrupted"]
    assert mixed == pytest.approx(stats["nll"], rel=1e-5)


def test_reduce_loss_token_weights_count_in_the_denominator():
    weighted = torch.tensor([[0.0, 2.0, 4.0, 0.0], [0.0, 0.0, 6.0, 0.0]])
    response = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    scored = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 0]], dtype=torch.bool)
    w = torch.tensor([[1.0, 1.0, 0.5, 0.5], [1.0, 1.0, 1.0, 0.5]])
    tw = weighted * w  # 2, 2, 6
    assert reduce_loss(tw, response, scored, "tokens", w).item() == pytest.approx(10 / 3.5)
    assert reduce_loss(tw, response, scored, "answer_length", w).item() == pytest.approx(
        (4 / 2 + 6 / 1.5) / 2
    )
    assert reduce_loss(tw, response, scored, "corrupted", w).item() == pytest.approx(10 / 2.5)
    assert reduce_loss(tw, response, scored, "batch", w).item() == pytest.approx(10 / 2)
    ones = torch.ones_like(w)
    for norm in ("tokens", "answer_length", "corrupted", "batch"):
        assert reduce_loss(weighted, response, scored, norm, ones).item() == pytest.approx(
            reduce_loss(weighted, response, scored, norm).item()
        )


def test_eos_weight_moves_the_loss_onto_the_answer_tokens():
    # An oracle sure of the EOS padding and uniform on the answer: with eos_weight w the loss is
    # the answer's CE share of a weighted mean, so it rises as w falls, and is log V at w = 0.
    from .conftest import EOS

    batch = make_batch(B=8)
    batch["input_ids"][:, -4:] = EOS  # answers of 3 tokens padded with 4 EOS
    x0 = batch["input_ids"]
    oracle = Oracle(x0, 1.0)
    uniform_on_answer = Oracle(x0, 1.0 / VOCAB)

    class SureOfEos(torch.nn.Module):
        mask_token_id, pad_token_id, eos_token_id, vocab_size = 3, 0, EOS, VOCAB
        hidden_size = VOCAB

        def hidden_states(self, input_ids, t=None, attention_mask=None):
            eos = (x0[: input_ids.shape[0]] == EOS).unsqueeze(-1)
            return torch.where(eos, oracle.hidden_states(input_ids), uniform_on_answer.hidden_states(input_ids))

        def head(self, hidden):
            return hidden

    t = torch.full((8,), 100)  # t = T: every response token is corrupted and scored
    losses = {}
    for w in (1.0, 0.25, 0.0):
        cfg = DiffusionConfig(loss_weighting="none", eos_weight=w)
        losses[w], stats = training_loss(SureOfEos(), batch, cfg, generator=gen(), t=t)
        assert stats["corrupted"] == 8 * 7
    log_v = math.log(VOCAB)
    assert losses[1.0].item() == pytest.approx(log_v * 3 / 7, rel=1e-4)
    assert losses[0.25].item() == pytest.approx(log_v * 3 / (3 + 0.25 * 4), rel=1e-4)
    assert losses[0.0].item() == pytest.approx(log_v, rel=1e-4)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", True])
def test_eos_weight_refuses_values_outside_zero_one(bad):
    with pytest.raises((ValueError, TypeError), match="eos_weight"):
        DiffusionConfig(eos_weight=bad)

import pytest
import torch
from ldp.diffusion import DiffusionConfig, draw_tokens, reveal_count, sample
from ldp.errors import UsageError

from .conftest import MASK, VOCAB, Oracle, gen


def _prompt(B=3, Lp=6, seed=0):
    return torch.randint(4, VOCAB, (B, Lp), generator=gen(seed))


@pytest.mark.parametrize("transition", ["absorbing", "uniform"])
@pytest.mark.parametrize("remasking", ["random", "low_confidence"])
@pytest.mark.parametrize("block", [None, 4])
def test_sampler_reveals_everything_and_keeps_prompt(toy, transition, remasking, block):
    prompt = _prompt()
    out = sample(
        toy,
        prompt,
        8,
        DiffusionConfig(num_steps=16, transition=transition),
        remasking=remasking,
        block_length=block,
        seed=0,
    )
    assert out.shape == (3, 14) and out.dtype == prompt.dtype
    assert torch.equal(out[:, :6], prompt)
    assert not (out == MASK).any()


def test_sampler_never_predicts_mask():
    prompt = _prompt(B=2, Lp=3)
    favours_mask = Oracle(torch.full((2, 9), MASK))  # all mass on [MASK]
    for temperature in (0.0, 1.0):
        out = sample(
            favours_mask, prompt, 6, DiffusionConfig(num_steps=6), temperature=temperature, seed=0
        )
        assert not (out == MASK).any()
    tokens, conf = draw_tokens(
        torch.zeros(5, VOCAB).index_fill(1, torch.tensor([MASK]), 99.0), 0.0, MASK
    )
    assert not (tokens == MASK).any() and torch.allclose(conf, torch.full((5,), 1 / (VOCAB - 1)))


def test_temperature_zero_is_seed_free_and_temperature_varies_with_seed(toy):
    prompt = _prompt(B=2, Lp=5)
    cfg = DiffusionConfig(num_steps=8)
    assert torch.equal(sample(toy, prompt, 8, cfg, seed=1), sample(toy, prompt, 8, cfg, seed=2))
    a = sample(toy, prompt, 8, cfg, temperature=1.0, seed=1)
    b = sample(toy, prompt, 8, cfg, temperature=1.0, seed=1)
    c = sample(toy, prompt, 8, cfg, temperature=1.0, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1, g2 = gen(1), gen(1)
    assert torch.equal(
        sample(toy, prompt, 8, cfg, remasking="random", generator=g1),
        sample(toy, prompt, 8, cfg, remasking="random", generator=g2),
    )


@pytest.mark.parametrize("transition", ["absorbing", "uniform"])
def test_oracle_sampler_recovers_target(transition):
    target = torch.randint(4, VOCAB, (2, 10), generator=gen(3))
    out = sample(
        Oracle(target),
        target[:, :4],
        6,
        DiffusionConfig(num_steps=10, transition=transition),
        seed=0,
    )
    assert torch.equal(out, target)


def test_block_sampling_fills_blocks_left_to_right(toy):
    prompt = _prompt(B=1, Lp=4)
    states = []

    def spy(x, t):
        states.append(x.clone())
        return toy(x, t)

    sample(toy, prompt, 12, DiffusionConfig(num_steps=12), block_length=4, logits_fn=spy, seed=0)
    assert len(states) == 12  # 4 steps per block, 3 blocks
    blocks = [(4, 8), (8, 12), (12, 16)]
    for i, state in enumerate(states):
        current = i // 4
        lo, hi = blocks[current]
        assert not (state[0, 4:lo] == MASK).any(), "an earlier block was unfinished"
        assert (state[0, hi:] == MASK).all(), "a later block was touched"
        assert (state[0, lo:hi] == MASK).sum() == 4 - i % 4  # one revealed per step


def test_low_confidence_reveals_most_confident_first():
    B, Lp, G = 2, 3, 8
    target = torch.randint(4, VOCAB, (B, Lp + G), generator=gen(2))
    confidence = torch.linspace(0.2, 0.9, G)[torch.randperm(G, generator=gen(4))]  # per position
    states = []

    def logits_fn(x, t):
        states.append(x.clone())
        probs = torch.full((B, Lp + G, VOCAB), 1e-3)
        probs[:, Lp:].scatter_(
            -1, target[:, Lp:].unsqueeze(-1), confidence.view(1, G, 1).expand(B, G, 1)
        )
        return probs.log()

    out = sample(
        Oracle(target), target[:, :Lp], G, DiffusionConfig(num_steps=4), logits_fn=logits_fn, seed=0
    )
    order = confidence.argsort(descending=True)
    for step in range(1, 4):  # linear schedule, 8 positions, 4 steps: 2 revealed per step
        revealed = states[step][0, Lp:] != MASK
        assert revealed.sum() == 2 * step
        assert revealed[order[: 2 * step]].all()
    assert torch.equal(out, target)


def test_reveal_count_follows_schedule():
    masked = torch.tensor([8, 8])
    assert reveal_count(8, masked, 0.75, "linear").tolist() == [2, 2]
    assert reveal_count(8, masked, 0.0, "linear").tolist() == [8, 8]
    # cosine keeps more masked early: beta(0.75) = 1 - cos(3 pi / 8) = 0.617 -> keep 5
    assert reveal_count(8, masked, 0.75, "cosine").tolist() == [3, 3]


def test_random_remasking_follows_reverse_posterior(toy):
    B, G = 16, 48
    prompt = _prompt(B=B, Lp=2)
    states = []

    def spy(x, t):
        states.append(x.clone())
        return toy(x, t)

    sample(toy, prompt, G, DiffusionConfig(num_steps=4), remasking="random", logits_fn=spy, seed=0)
    # step 4 -> 3 of the linear schedule reveals each position with probability 1/4
    revealed = (states[1][:, 2:] != MASK).float().mean().item()
    assert revealed == pytest.approx(0.25, abs=0.04)


def test_default_path_runs_head_on_masked_positions_only(toy):
    prompt = _prompt(B=2, Lp=4)
    cfg = DiffusionConfig(num_steps=4)
    toy.head_calls.clear()
    fast = sample(toy, prompt, 8, cfg, seed=0)
    assert toy.head_calls == [16, 12, 8, 4]
    slow = sample(toy, prompt, 8, cfg, seed=0, logits_fn=lambda x, t: toy(x, t))
    assert torch.equal(fast, slow)


def test_attention_mask_reaches_the_model(toy):
    prompt = _prompt(B=2, Lp=4)
    seen = []

    def hidden_fn(x, t, attention_mask):
        seen.append(attention_mask)
        return toy.hidden_states(x, t, attention_mask)

    keep = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    sample(toy, prompt, 4, DiffusionConfig(num_steps=2), hidden_fn=hidden_fn, attention_mask=keep)
    assert all(torch.equal(m, torch.tensor([[0] + [1] * 7, [1] * 8])) for m in seen) and seen


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"block_length": 3}, "multiple"),
        ({"remasking": "greedy"}, "remasking"),
        ({"temperature": -1.0}, "temperature"),
        ({"steps": 1, "block_length": 4}, "blocks"),
        ({"seed": 1, "generator": torch.Generator()}, "not both"),
    ],
)
def test_sampler_refuses_bad_input(toy, kwargs, words):
    with pytest.raises(UsageError, match=words):
        sample(toy, _prompt(), 8, DiffusionConfig(num_steps=4), **kwargs)


def test_threshold_reveals_confident_positions_together():
    target = torch.randint(4, VOCAB, (2, 14), generator=gen(5))
    calls = []
    out = sample(Oracle(target, 0.95), target[:, :6], 8, DiffusionConfig(num_steps=8),
                 block_length=4, threshold=0.9, on_step=lambda k, x: calls.append(x.clone()))
    assert torch.equal(out, target) and len(calls) == 2  # one step per block
    calls.clear()
    out = sample(Oracle(target, 0.5), target[:, :6], 8, DiffusionConfig(num_steps=8),
                 block_length=4, threshold=0.9, on_step=lambda k, x: calls.append(x.clone()))
    assert torch.equal(out, target) and len(calls) == 8  # at least one per step
    assert [int((c[0, 6:] == MASK).sum()) for c in calls] == [7, 6, 5, 4, 3, 2, 1, 0]


def test_on_step_counts_steps(toy):
    seen = []
    sample(toy, _prompt(), 8, DiffusionConfig(num_steps=8), on_step=lambda k, x: seen.append(k))
    assert seen == list(range(1, 9))


def test_threshold_refuses_bad_values(toy):
    with pytest.raises(UsageError, match="threshold"):
        sample(toy, _prompt(), 8, DiffusionConfig(num_steps=4), threshold=0.0)
    with pytest.raises(UsageError, match="absorbing"):
        sample(toy, _prompt(), 8, DiffusionConfig(num_steps=4, transition="uniform"), threshold=0.5)

"""An example's evaluation score and generated text do not depend on its batch mates.

Evaluation left-pads prompts of different lengths into one batch; training right-pads. Every
backbone counts positions over attended tokens, and the verbaliser scorer draws each example's
masks from its own seed, so scoring or generating an example alone or beside others of other
lengths gives the same result, for every method on both real backbones.
"""

from __future__ import annotations

import pytest
import torch
from ldp.diffusion import DiffusionConfig
from ldp.evaluation.evaluate import generate_ids
from ldp.evaluation.verbalizer import candidate_nll
from ldp.methods import METHOD_NAMES

from .test_methods import _attach, _perturb

MASK, PAD = 3, 0


def _examples():
    g = torch.Generator().manual_seed(7)
    out = []
    for length in (5, 11, 8):
        ids = torch.randint(4, 64, (length,), generator=g).tolist()
        inst = [False] + [True] * (length - 2) + [False]
        out.append({"prompt_ids": ids, "instruction_mask": inst})
    return out


@pytest.mark.parametrize("backbone, method", [(b, m) for b in ("native", "bert") for m in METHOD_NAMES])
def test_scores_and_texts_do_not_depend_on_batch_mates(backbone, method):
    _, model = _attach(backbone, method)
    _perturb(model, seed=11)
    model.eval()
    examples = _examples()
    answers = torch.tensor([[10, 2, 2, 2], [11, 12, 2, 2]])

    def hidden_fn(x, t, a, i):
        return model.hidden_states(x, t, a, instruction_mask=i)

    def scores(chosen):
        return candidate_nll(
            hidden_fn, model.head, MASK, [examples[i]["prompt_ids"] for i in chosen],
            [examples[i]["instruction_mask"] for i in chosen], answers,
            example_ids=chosen, per_size=2, seed=3, pad_token_id=PAD,
        )

    together = scores([0, 1, 2])
    alone = torch.cat([scores([i]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)

    diffusion = DiffusionConfig(num_steps=30)
    batched = generate_ids(model, examples, 6, diffusion, steps=6, batch_size=3)
    single = [generate_ids(model, [ex], 6, diffusion, steps=6, batch_size=1)[0] for ex in examples]
    assert batched == single

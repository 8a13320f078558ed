"""Size presets, meta-device parameter counts and ``ldp sizes``."""

from __future__ import annotations

import json

import pytest
import torch

from ldp.cli.main import main
from ldp.errors import UsageError
from ldp.models.native import DiffusionTransformer
from ldp.models.sizes import SIZES, count_parameters, size_config


def _expected_total(c) -> int:
    """Closed-form count of the native model (tied head, no time conditioning)."""
    d, f, V, L = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers
    attention = 4 * (d * d + d)
    ffn = (d * f + f) + (f * d + d)
    norms = 2 * 2 * d
    return V * d + L * (attention + ffn + norms) + 2 * d + V  # + final norm + head bias


def test_presets_are_the_four_sizes():
    assert list(SIZES) == ["tiny", "350m", "1.3b", "7b"]


@pytest.mark.parametrize("name", list(SIZES))
def test_every_size_builds_on_meta_and_matches_the_formula(name):
    config = size_config(name)
    with torch.device("meta"):
        model = DiffusionTransformer(config)
    assert all(p.device.type == "meta" for p in model.parameters())
    counts = count_parameters(config)
    assert counts["total"] == _expected_total(config)
    assert counts["bf16_bytes"] == 2 * counts["total"]
    assert counts["embedding"] == config.vocab_size * config.hidden_size
    parts = counts["embedding"] + counts["head"] + counts["blocks"] + counts["other"]
    assert counts["total"] == parts
    assert counts["largest_layer"] >= counts["per_block"]


@pytest.mark.parametrize("name,target", [("7b", 7e9), ("1.3b", 1.3e9)])
def test_named_sizes_are_within_15_percent(name, target):
    total = count_parameters(name)["total"]
    assert abs(total - target) / target <= 0.15, total


def test_untied_head_and_time_conditioning_add_their_parameters():
    tied = count_parameters(size_config("tiny"))
    untied = count_parameters(size_config("tiny", tie_word_embeddings=False))
    assert untied["total"] - tied["total"] == 30522 * 256
    timed = count_parameters(size_config("tiny", time_conditioning=True))
    d, dc, dt = 256, 128, 256
    extra = (dt * dc + dc) + (dc * dc + dc) + 4 * (dc * 6 * d + 6 * d) + (dc * 2 * d + 2 * d)
    assert timed["total"] - tied["total"] == extra


def test_size_config_refuses_bad_input():
    with pytest.raises(UsageError, match="unknown size '13b'; known sizes: tiny, 350m, 1.3b, 7b"):
        size_config("13b")
    with pytest.raises(UsageError, match="unknown model config key"):
        size_config("tiny", layers=3)
    assert size_config("tiny", num_hidden_layers=2).num_hidden_layers == 2


def test_ldp_sizes_json(capsys):
    assert main(["sizes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {row["size"]: row for row in rows}
    assert list(by_name) == ["tiny", "350m", "1.3b", "7b"]
    assert by_name["7b"]["params"] == count_parameters("7b")["total"]
    assert by_name["tiny"]["layers"] == 4 and by_name["tiny"]["hidden"] == 256
    assert by_name["1.3b"]["bf16_bytes"] == 2 * by_name["1.3b"]["params"]


def test_ldp_sizes_table(capsys):
    assert main(["sizes"]) == 0
    out = capsys.readouterr().out
    for name in ("tiny", "350m", "1.3b", "7b"):
        assert name in out
    assert "6.57 B" in out and "13.1 GB" in out

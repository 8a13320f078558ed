"""``benchmarks/probe_base.py``: the linear probe fits what is separable and reports every readout
of a real base on real task data; bad arguments exit 2 with one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "probe_base.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("probe_base", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_logistic_probe_separates_separable_classes_and_not_noise(probe):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    y = (x[:, 3] - x[:, 7] > 0).long()
    fitted = probe.fit_logistic(x, y, 2)
    assert (fitted(x).argmax(1) == y).float().mean() > 0.97
    noise = torch.randint(0, 2, (200,), generator=g)
    held_out = torch.randn(200, 16, generator=g)
    fitted = probe.fit_logistic(x, noise, 2)
    assert (fitted(held_out).argmax(1) == torch.randint(0, 2, (200,), generator=g)).float().mean() < 0.65


def test_mlp_probe_reads_what_a_linear_probe_cannot(probe):
    # XOR of two signs: no linear readout beats chance, one hidden layer separates it.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
    held_out = torch.randn(400, 8, generator=g)
    y_held = ((held_out[:, 0] > 0) ^ (held_out[:, 1] > 0)).long()
    linear = probe.fit_logistic(x, y, 2)
    mlp = probe.fit_mlp(x, y, 2, hidden=16)
    with torch.no_grad():
        assert (linear(held_out).argmax(1) == y_held).float().mean() < 0.65
        assert (mlp(held_out).argmax(1) == y_held).float().mean() > 0.8


def test_standardise_uses_the_training_statistics_for_every_split(probe):
    train = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    tr, other = probe.standardise(train, torch.tensor([[2.0, 50.0]]))
    torch.testing.assert_close(tr.mean(0), torch.zeros(2))
    torch.testing.assert_close(other, torch.tensor([[0.0, 30.0 / train[:, 1].std().item()]]))


def test_probe_reports_every_readout_on_a_real_base(probe, small_base, data_dir, tmp_path, capsys):
    out = tmp_path / "probe.json"
    code = probe.main(["--base", str(small_base.folder), "--task", "sst2", "--data-dir", str(data_dir),
                       "--train-limit", "48", "--val-limit", "16", "--mlp", "8", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["n_train"] == 48 and result["n_val"] == 16 and result["split"] == "validation"
    keys = [f"{name}_{kind}accuracy" for name in probe.READOUTS for kind in ("", "mlp_")]
    for key in keys + ["majority"]:
        assert 0.0 <= result[key] <= 100.0
    # sst2's template: the instruction before the sentence and the answer cue after it.
    prefix, suffix = result["template_tokens"]
    assert prefix > 10 and suffix >= 1


def test_template_span_is_what_every_prompt_shares_and_leaves_each_its_own_token(probe):
    prompts = [[1, 2, 3, 7, 8, 9], [1, 2, 3, 5, 9], [1, 2, 3, 6, 6, 6, 8, 9]]
    assert probe.template_span(prompts) == (3, 1)
    # A prompt that is all template still keeps one token of its own.
    assert probe.template_span([[1, 2, 9], [1, 2, 9]]) == (2, 0)
    assert probe.template_span([[4, 9], [5, 9], [4, 9]]) == (0, 1)


@pytest.mark.parametrize("args, needle", [
    (["--task", "squad"], "not a classification task"),
    (["--task", "nope"], "nope"),
])
def test_bad_input_is_one_line_and_exit_2(probe, data_dir, capsys, args, needle):
    code = probe.main(["--base", "minilm", "--data-dir", str(data_dir), *args])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_negative_mlp_width_is_a_usage_error(probe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["--base", "minilm", "--data-dir", "x", "--mlp", "-1"])
    assert exit_info.value.code == 2 and "--mlp must be >= 0" in capsys.readouterr().err

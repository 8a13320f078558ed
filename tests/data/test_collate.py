"""Encoding and collation for diffusion SFT with a real BERT WordPiece tokenizer."""

from __future__ import annotations

import pytest
import torch

from ldp.data.collate import SFTCollator, build_sft_dataset, encode_example, eos_token_id
from ldp.data.loading import load_examples
from ldp.data.tasks import Example, task_names
from ldp.errors import UsageError

LOCAL_TASKS = [name for name in task_names() if name != "triviaqa"]


def _check_batch(batch, feats, eos):
    ids, resp, prompt, instr, plen = (
        batch["input_ids"], batch["response_mask"], batch["prompt_mask"],
        batch["instruction_mask"], batch["prompt_len"],
    )
    B, L = ids.shape
    assert ids.dtype == torch.long and plen.dtype == torch.long and plen.shape == (B,)
    for m in (resp, prompt, instr):
        assert m.dtype == torch.bool and m.shape == (B, L)
    for i, f in enumerate(feats):
        p, t = f["prompt_ids"], f["target_ids"]
        n = len(p)
        assert plen[i] == n
        assert ids[i, :n].tolist() == p  # prompt verbatim
        assert ids[i, n : n + len(t)].tolist() == t  # then target + EOS
        assert (ids[i, n + len(t) :] == eos).all()  # then EOS padding
        assert not resp[i, :n].any()  # prompt positions are never in the response
        assert resp[i, n:].all()  # target, its EOS and the EOS padding are
        assert prompt[i, :n].all() and not prompt[i, n:].any()
        assert not (instr[i] & ~prompt[i]).any()  # Enc(c) tokens lie inside the prompt


def test_eos_falls_back_to_sep(tokenizer):
    assert tokenizer.eos_token_id is None
    assert eos_token_id(tokenizer) == tokenizer.sep_token_id

    class NoEnd:
        eos_token_id = sep_token_id = None
        name_or_path = "toy"

    with pytest.raises(UsageError, match="neither an EOS nor a SEP"):
        eos_token_id(NoEnd())


def test_encode_example_bert_layout(tokenizer):
    ex = Example(prompt="Definition: say yes.\n\nQuestion: ok?\nAnswer:", target="yes", references=["yes"],
                 label=1, id="0")
    enc = encode_example(ex, tokenizer)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    body = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
    assert enc["prompt_ids"] == [cls, *body, sep]
    assert enc["instruction_mask"] == [False] + [True] * len(body) + [False]
    assert enc["target_ids"] == tokenizer("yes", add_special_tokens=False)["input_ids"] + [sep]


def test_truncation_keeps_head_tail_and_special_tokens(tokenizer):
    long_input = " ".join(f"w{i}" for i in range(400))
    ex = Example(prompt=f"Definition: summarise.\n\nArticle: {long_input}\nSummary:",
                 target=" ".join(["word"] * 50), references=[], label=None, id="x")
    enc = encode_example(ex, tokenizer, max_prompt_len=64, max_target_len=10)
    assert len(enc["prompt_ids"]) == 64 and len(enc["target_ids"]) == 10
    assert enc["prompt_ids"][0] == tokenizer.cls_token_id and enc["prompt_ids"][-1] == tokenizer.sep_token_id
    text = tokenizer.decode(enc["prompt_ids"], skip_special_tokens=True)
    assert text.startswith("definition : summarise.") and text.endswith("summary :")
    assert enc["target_ids"][-1] == eos_token_id(tokenizer)
    with pytest.raises(UsageError, match="no room"):
        encode_example(ex, tokenizer, max_prompt_len=2)


@pytest.mark.parametrize("name", LOCAL_TASKS)
def test_every_local_task_encodes_and_collates(data_dir, tokenizer, name):
    examples = load_examples(name, "train", data_dir, limit=3)
    feats = [encode_example(ex, tokenizer, 96, 24) for ex in examples]
    for f in feats:
        assert 2 < len(f["prompt_ids"]) <= 96 and 1 < len(f["target_ids"]) <= 24
    batch = SFTCollator(tokenizer, pad_to_multiple_of=8)(feats)
    assert batch["input_ids"].shape[1] % 8 == 0
    _check_batch(batch, feats, eos_token_id(tokenizer))


def test_collator_max_length_cuts_targets_not_prompts(tokenizer):
    ex = Example(prompt="Definition: x.\n\nInput: a b c\nOutput:", target="one two three four five six",
                 references=[], label=None, id="0")
    enc = encode_example(ex, tokenizer)
    n = len(enc["prompt_ids"])
    batch = SFTCollator(tokenizer, max_length=n + 3, pad_to_multiple_of=64)([enc, ex])  # Example encoded on the fly
    assert batch["input_ids"].shape == (2, n + 3)
    assert batch["input_ids"][0, :n].tolist() == enc["prompt_ids"]
    assert torch.equal(batch["input_ids"][0], batch["input_ids"][1])
    assert batch["response_mask"][0].sum() == 3
    with pytest.raises(UsageError, match="no room for an answer"):
        SFTCollator(tokenizer, max_length=n)([enc])
    with pytest.raises(UsageError, match="empty batch"):
        SFTCollator(tokenizer)([])


def test_build_sft_dataset_is_cached(data_dir, tokenizer, monkeypatch):
    ds = build_sft_dataset("sst2", "validation", tokenizer, data_dir, limit=40)
    assert set(ds.column_names) == {"id", "prompt_ids", "target_ids", "instruction_mask"}
    assert len(ds) == 40
    ref = encode_example(load_examples("sst2", "validation", data_dir, limit=1)[0], tokenizer, 128, 4)
    assert ds[0]["prompt_ids"] == ref["prompt_ids"] and ds[0]["target_ids"] == ref["target_ids"]
    assert ds[0]["id"] == "5"
    assert ds.cache_files and ds.cache_files[0]["filename"].endswith(f"cache-{ds._fingerprint}.arrow")

    # a second build with the same inputs must not encode again: it reads the cache
    from ldp.data import collate

    def boom(*args, **kwargs):
        raise AssertionError("re-encoded instead of reading the cache")

    monkeypatch.setattr(collate, "encode_examples", boom)
    again = build_sft_dataset("sst2", "validation", tokenizer, data_dir, limit=40)
    assert again._fingerprint == ds._fingerprint and again[5] == ds[5]
    with pytest.raises(AssertionError, match="re-encoded"):  # other budgets -> another fingerprint
        build_sft_dataset("sst2", "validation", tokenizer, data_dir, limit=40, max_prompt_len=32)

    batch = SFTCollator(tokenizer)([ds[i] for i in range(4)])
    _check_batch(batch, [ds[i] for i in range(4)], eos_token_id(tokenizer))

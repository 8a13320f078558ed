"""Pretraining corpora: names from the mirror, paths, hub fallback errors, fixed-length blocks."""

from __future__ import annotations

import pytest
import torch

from ldp.data.corpora import corpus_blocks, load_corpus, split_documents
from ldp.errors import NotFoundError, UsageError


def test_named_corpora_come_from_the_mirror(data_dir):
    wiki = load_corpus("wikitext", "validation", data_dir, limit=5)
    assert wiki[0] == split_documents((data_dir / "corpora/wikitext/validation.txt").read_text())[0]
    assert len(wiki) == 5 and all(doc == doc.strip() and doc for doc in wiki)
    code = load_corpus("code", "train", data_dir)
    assert code[0].startswith("def remove_Occ(s,ch):")
    assert len(load_corpus("arxiv", "train", data_dir, limit=3)) == 3
    with pytest.raises(NotFoundError, match=r"corpus code has no test split .*corpora/code/test\.txt"):
        load_corpus("code", "test", data_dir)


def test_paths_files_and_folders(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "b.txt").write_text("second doc\n\nthird\n")
    (tmp_path / "mine" / "a.txt").write_text("first doc\n  \n")
    assert load_corpus(str(tmp_path / "mine")) == ["first doc", "second doc", "third"]
    (tmp_path / "mine" / "validation.txt").write_text("held out")
    assert load_corpus(tmp_path / "mine", "validation") == ["held out"]
    assert load_corpus(str(tmp_path / "mine" / "b.txt"), "ignored") == ["second doc", "third"]
    with pytest.raises(NotFoundError, match="neither a known corpus"):
        load_corpus(str(tmp_path / "absent"))


def test_hub_fallback_only_for_wikitext():
    with pytest.raises(NotFoundError, match="corpus arxiv has no hub copy"):
        load_corpus("arxiv", "train", "hub")
    with pytest.raises(NotFoundError, match=r"could not load corpus wikitext from the hub \(Salesforce/wikitext"):
        load_corpus("wikitext", "train", "hub")  # tests run offline


def test_corpus_blocks_concatenate_with_separators(tokenizer):
    texts = ["the cat sat", "on the mat today", "a dog"]
    blocks = corpus_blocks(texts, tokenizer, block_len=4)
    sep = tokenizer.sep_token_id
    stream = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [sep]
    assert blocks.dtype == torch.long and blocks.shape == (len(stream) // 4, 4)
    assert blocks.flatten().tolist() == stream[: blocks.numel()]
    assert (blocks == sep).sum() >= 2
    with pytest.raises(UsageError, match="fewer than one block of 512"):
        corpus_blocks(texts, tokenizer, block_len=512)


def test_corpus_blocks_on_real_text(data_dir, tokenizer):
    docs = load_corpus("wikitext", "train", data_dir, limit=20)
    blocks = corpus_blocks(docs, tokenizer, block_len=64, batch_size=7)
    assert blocks.shape[1] == 64 and blocks.shape[0] > 10
    assert tokenizer.decode(blocks[0]).startswith("= homarus gammarus = [SEP] homarus gammarus, known as")
    assert blocks.max() < len(tokenizer)

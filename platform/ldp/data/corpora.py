"""Text corpora for pretraining a base and for forgetting checks, and their fixed-length blocks.

``load_corpus(name_or_path, split, data_dir)`` accepts

- a corpus name (``wikitext``, ``arxiv``, ``code``): read from the mirror,
  ``<data_dir>/corpora/<name>/<split>.txt`` (``data_dir`` default ``LDP_DATA_DIR``). With no
  mirror, ``wikitext`` comes from the hub (``Salesforce/wikitext``, the current id of
  ``wikitext``, config ``wikitext-103-raw-v1``); the others have no hub copy;
- a path or fsspec URL of a ``.txt`` file (``split`` is ignored) or of a folder holding
  ``<split>.txt`` (else every ``*.txt`` in it, in name order).

A corpus is returned as a list of documents: the text split at blank lines (WikiText paragraphs and
headings, arXiv abstracts, programs), each stripped, empty ones dropped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import torch

from ldp.errors import NotFoundError, UsageError

__all__ = ["CORPORA", "HUB_CORPORA", "corpus_blocks", "load_corpus", "split_documents"]

CORPORA = ("wikitext", "arxiv", "code")
"""Corpus names found in a data mirror under ``corpora/<name>/``."""
HUB_CORPORA = {"wikitext": ("Salesforce/wikitext", "wikitext-103-raw-v1")}
"""Corpus name -> (hub id, config), used when no mirror is configured."""

_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


def split_documents(text: str) -> list[str]:
    """Text -> documents at blank lines (stripped, empty ones dropped)."""
    return [doc.strip() for doc in _BLANK_LINE.split(text) if doc.strip()]


def load_corpus(
    name_or_path: str | os.PathLike,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
) -> list[str]:
    """Documents of a corpus (see the module docstring); ``limit`` keeps the first ``limit``."""
    from ldp.data.loading import resolve_data_dir

    if limit is not None and limit < 0:
        raise UsageError(f"limit must be >= 0, got {limit}")
    name = str(name_or_path)
    if name in CORPORA:
        location = resolve_data_dir(data_dir)
        if location is None:
            docs = _load_hub_corpus(name, split)
        else:
            url = f"{location.rstrip('/')}/corpora/{name}/{split}.txt"
            if not _exists(url):
                raise NotFoundError(f"corpus {name} has no {split} split in the data mirror: looked for {url}")
            docs = split_documents(_read_text(url))
    else:
        docs = [doc for url in _corpus_files(name, split) for doc in split_documents(_read_text(url))]
    if not docs:
        raise NotFoundError(f"corpus {name} ({split}) is empty")
    return docs[:limit] if limit is not None else docs


def corpus_blocks(
    texts: Sequence[str],
    tokenizer: Any,
    block_len: int,
    *,
    separator_id: int | None = None,
    batch_size: int = 1000,
) -> torch.Tensor:
    """Tokenise ``texts`` into one stream and cut it into blocks: LongTensor (N, block_len).

    Each document's ids (no special tokens) are followed by ``separator_id`` (default: EOS, else
    SEP, as in :func:`ldp.data.collate.eos_token_id`); the stream is cut into consecutive
    ``block_len`` blocks and the incomplete last block is dropped.
    """
    from ldp.data.collate import eos_token_id

    if block_len < 1:
        raise UsageError(f"block_len must be >= 1, got {block_len}")
    sep = eos_token_id(tokenizer) if separator_id is None else int(separator_id)
    stream: list[int] = []
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        for ids in enc["input_ids"]:
            stream.extend(ids)
            stream.append(sep)
    n_blocks = len(stream) // block_len
    if n_blocks == 0:
        raise UsageError(f"corpus has {len(stream)} tokens, fewer than one block of {block_len}")
    return torch.tensor(stream[: n_blocks * block_len], dtype=torch.long).view(n_blocks, block_len)


# -- helpers -------------------------------------------------------------------------------------


def _load_hub_corpus(name: str, split: str) -> list[str]:
    if name not in HUB_CORPORA:
        raise NotFoundError(
            f"corpus {name} has no hub copy; point --data-dir / LDP_DATA_DIR at a mirror with corpora/{name}/"
        )
    import datasets
    from datasets.exceptions import DatasetsError

    hub_id, config = HUB_CORPORA[name]
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except (OSError, ValueError, DatasetsError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotFoundError(f"could not load corpus {name} from the hub ({hub_id}, {config}): {reason}") from None
    return [line.strip() for line in ds["text"] if line.strip()]


def _fs(url: str):
    import fsspec

    from ldp.data.loading import storage_options

    return fsspec.core.url_to_fs(url, **storage_options(url))


def _exists(url: str) -> bool:
    fs, path = _fs(url)
    return fs.exists(path)


def _read_text(url: str) -> str:
    fs, path = _fs(url)
    with fs.open(path, "rb") as fh:
        return fh.read().decode("utf-8")


def _corpus_files(location: str, split: str) -> list[str]:
    fs, path = _fs(location)
    if fs.isfile(path):
        return [location]
    if not fs.isdir(path):
        raise NotFoundError(
            f"corpus {location!r} is neither a known corpus ({', '.join(CORPORA)}) nor an existing file or folder"
        )
    base = location.rstrip("/")
    if fs.isfile(f"{path.rstrip('/')}/{split}.txt"):
        return [f"{base}/{split}.txt"]
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if p.endswith(".txt"))
    if not names:
        raise NotFoundError(f"corpus folder {location} has no {split}.txt and no .txt files")
    return [f"{base}/{n}" for n in names]

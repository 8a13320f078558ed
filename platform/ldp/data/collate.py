"""Tokenisation and collation for diffusion SFT (LLaDA / dllm conventions: prompt
labels excluded, EOS padding trained as part of the answer; see docs/ARCHITECTURE.md).

A sequence is ``prompt ids (with the tokenizer's own special tokens, e.g. [CLS] .. [SEP])`` then
``target ids + EOS``, padded on the right with EOS. The padding counts as answer: the model learns
to fill the tail with EOS, which is how a diffusion LM ends a variable-length answer. Hence in a
batch:

- ``response_mask`` (B, L) bool: True on target tokens, their EOS and the EOS padding after them
  (the positions that may be corrupted and carry the loss);
- ``prompt_mask`` (B, L) bool: True on prompt positions (never corrupted);
- ``instruction_mask`` (B, L) bool: True on the prompt's text tokens (instruction + input, the
  tokenizer's special tokens excluded): the tokens ``Enc(c)`` mean-pools;
- ``prompt_len`` (B,) long; ``input_ids`` (B, L) long.

Over-long prompts keep their head and their last ``keep_tail`` text tokens (the input's end and
the answer cue such as ``Sentiment:``); over-long targets are cut and then get their EOS.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ldp.data.tasks import Example, TaskSpec, get_task
from ldp.errors import UsageError

__all__ = [
    "ENCODING_VERSION",
    "SFTCollator",
    "build_sft_dataset",
    "encode_example",
    "encode_examples",
    "eos_token_id",
]

ENCODING_VERSION = 1
"""Bumped whenever the encoding changes, so cached SFT datasets are rebuilt."""
DEFAULT_KEEP_TAIL = 16


def eos_token_id(tokenizer: Any) -> int:
    """The id that ends (and pads) an answer: ``eos_token_id``, else ``sep_token_id``."""
    for attr in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise UsageError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has neither an EOS nor a SEP token")


def _truncate(ids: list[int], budget: int, keep_tail: int) -> list[int]:
    if len(ids) <= budget:
        return ids
    tail = min(keep_tail, budget // 2)
    return ids[: budget - tail] + (ids[len(ids) - tail :] if tail else [])


def encode_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    max_prompt_len: int | None = None,
    max_target_len: int | None = None,
    *,
    keep_tail: int = DEFAULT_KEEP_TAIL,
) -> dict[str, list]:
    """Batched :func:`encode_example`: a dict of columns ``prompt_ids``, ``target_ids``,
    ``instruction_mask`` (one list per example)."""
    eos = eos_token_id(tokenizer)
    if max_target_len is not None and max_target_len < 1:
        raise UsageError(f"max_target_len must be >= 1 (room for EOS), got {max_target_len}")
    prompts = tokenizer(
        [ex.prompt for ex in examples],
        add_special_tokens=True,
        return_special_tokens_mask=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,  # long prompts are truncated below, not by the tokenizer
    )
    targets = tokenizer(
        [ex.target for ex in examples],
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    out: dict[str, list] = {"prompt_ids": [], "target_ids": [], "instruction_mask": []}
    for ids, special, target in zip(
        prompts["input_ids"], prompts["special_tokens_mask"], targets["input_ids"]
    ):
        # leading / trailing special tokens ([CLS] ... [SEP], <s> ...) stay; the text between is cut
        start = 0
        while start < len(ids) and special[start]:
            start += 1
        end = len(ids)
        while end > start and special[end - 1]:
            end -= 1
        prefix, body, suffix = ids[:start], ids[start:end], ids[end:]
        body_special = special[start:end]
        if max_prompt_len is not None:
            budget = max_prompt_len - len(prefix) - len(suffix)
            if budget < 1:
                raise UsageError(f"max_prompt_len={max_prompt_len} leaves no room for prompt text")
            keep = _truncate(list(range(len(body))), budget, keep_tail)
            body = [body[i] for i in keep]
            body_special = [body_special[i] for i in keep]
        if max_target_len is not None:
            target = target[: max_target_len - 1]
        out["prompt_ids"].append(list(prefix) + list(body) + list(suffix))
        out["instruction_mask"].append(
            [False] * len(prefix) + [not s for s in body_special] + [False] * len(suffix)
        )
        out["target_ids"].append(list(target) + [eos])
    return out


def encode_example(
    example: Example,
    tokenizer: Any,
    max_prompt_len: int | None = None,
    max_target_len: int | None = None,
    *,
    keep_tail: int = DEFAULT_KEEP_TAIL,
) -> dict[str, list]:
    """One example -> ``{"prompt_ids", "target_ids", "instruction_mask"}`` (plain lists).

    ``prompt_ids`` has the tokenizer's special tokens (``[CLS] prompt [SEP]`` for BERT) and at
    most ``max_prompt_len`` ids; ``target_ids`` is the target's ids followed by EOS, at most
    ``max_target_len`` ids in all; ``instruction_mask`` marks the prompt's text tokens.
    """
    cols = encode_examples([example], tokenizer, max_prompt_len, max_target_len, keep_tail=keep_tail)
    return {k: v[0] for k, v in cols.items()}


class SFTCollator:
    """Pads encoded examples into a diffusion-SFT batch (see the module docstring for the keys).

    Items are dicts with ``prompt_ids`` and ``target_ids`` (as produced by
    :func:`encode_example` / :func:`build_sft_dataset`, optional ``instruction_mask``) or
    :class:`Example` objects, which are encoded on the fly with ``max_prompt_len`` /
    ``max_target_len``. ``max_length`` caps the sequence length by cutting targets (never the
    prompt); the length is rounded up to ``pad_to_multiple_of`` (not past ``max_length``).
    """

    def __init__(
        self,
        tokenizer: Any = None,
        *,
        eos_id: int | None = None,
        pad_to_multiple_of: int | None = None,
        max_length: int | None = None,
        max_prompt_len: int | None = None,
        max_target_len: int | None = None,
        answer_length: int | None = None,
        pad_id: int | None = None,
    ) -> None:
        if answer_length is not None and answer_length < 1:
            raise UsageError(f"answer_length must be >= 1, got {answer_length}")
        if answer_length is not None and pad_id is None:
            pad_id = getattr(tokenizer, "pad_token_id", None)
            if pad_id is None:
                raise UsageError("answer_length needs a pad id (the tokenizer has none)")
        self.answer_length, self.pad_id = answer_length, pad_id
        if eos_id is None:
            if tokenizer is None:
                raise UsageError("SFTCollator needs a tokenizer or an eos_id")
            eos_id = eos_token_id(tokenizer)
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise UsageError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        if max_length is not None and max_length < 2:
            raise UsageError(f"max_length must be >= 2, got {max_length}")
        self.tokenizer, self.eos_id = tokenizer, int(eos_id)
        self.pad_to_multiple_of, self.max_length = pad_to_multiple_of, max_length
        self.max_prompt_len, self.max_target_len = max_prompt_len, max_target_len

    def _encoded(self, items: Sequence[Any]) -> list[Mapping[str, Any]]:
        todo = [i for i, item in enumerate(items) if isinstance(item, Example)]
        if not todo:
            return list(items)
        if self.tokenizer is None:
            raise UsageError("SFTCollator got Example objects but has no tokenizer to encode them")
        cols = encode_examples(
            [items[i] for i in todo], self.tokenizer, self.max_prompt_len, self.max_target_len
        )
        out = list(items)
        for j, i in enumerate(todo):
            out[i] = {k: v[j] for k, v in cols.items()}
        return out

    def __call__(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        if not items:
            raise UsageError("cannot collate an empty batch")
        feats = self._encoded(items)
        prompts = [list(f["prompt_ids"]) for f in feats]
        targets = [list(f["target_ids"]) for f in feats]
        if self.answer_length is not None:
            return self._fixed_answer(feats, prompts, targets)
        if self.max_length is not None:
            for i, (p, t) in enumerate(zip(prompts, targets)):
                if len(p) >= self.max_length:
                    raise UsageError(
                        f"prompt of {len(p)} tokens leaves no room for an answer in max_length={self.max_length}"
                    )
                targets[i] = t[: self.max_length - len(p)]
        length = max(len(p) + len(t) for p, t in zip(prompts, targets))
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            length = -(-length // m) * m
            if self.max_length is not None:
                length = min(length, self.max_length)
        batch = len(feats)
        input_ids = torch.full((batch, length), self.eos_id, dtype=torch.long)  # (B, L)
        instruction_mask = torch.zeros((batch, length), dtype=torch.bool)  # (B, L)
        prompt_len = torch.empty(batch, dtype=torch.long)  # (B,)
        for i, (f, p, t) in enumerate(zip(feats, prompts, targets)):
            seq = p + t
            input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            prompt_len[i] = len(p)
            imask = f.get("instruction_mask")
            if imask is None:
                instruction_mask[i, : len(p)] = True
            else:
                if len(imask) != len(p):
                    raise UsageError("instruction_mask and prompt_ids differ in length")
                instruction_mask[i, : len(p)] = torch.tensor(list(imask), dtype=torch.bool)
        positions = torch.arange(length).unsqueeze(0)  # (1, L)
        prompt_mask = positions < prompt_len.unsqueeze(1)  # (B, L)
        return {
            "input_ids": input_ids,
            "response_mask": ~prompt_mask,
            "prompt_mask": prompt_mask,
            "instruction_mask": instruction_mask,
            "prompt_len": prompt_len,
        }

    def _fixed_answer(self, feats, prompts, targets) -> dict[str, torch.Tensor]:
        """Each row: prompt, then exactly ``answer_length`` answer tokens (target + EOS padding,
        the same shape generation produces), then ``pad_id`` filler that is neither attended
        (``attention_mask`` 0) nor scored."""
        A = self.answer_length
        length = max(len(p) for p in prompts) + A
        batch = len(feats)
        input_ids = torch.full((batch, length), self.pad_id, dtype=torch.long)  # (B, L)
        response = torch.zeros((batch, length), dtype=torch.bool)
        attention = torch.zeros((batch, length), dtype=torch.long)
        prompt_mask = torch.zeros((batch, length), dtype=torch.bool)
        instruction_mask = torch.zeros((batch, length), dtype=torch.bool)
        prompt_len = torch.empty(batch, dtype=torch.long)
        for i, (f, p, t) in enumerate(zip(feats, prompts, targets)):
            answer = (t[:A] + [self.eos_id] * A)[:A]
            n = len(p)
            input_ids[i, : n + A] = torch.tensor(p + answer, dtype=torch.long)
            prompt_mask[i, :n] = True
            response[i, n : n + A] = True
            attention[i, : n + A] = 1
            prompt_len[i] = n
            imask = f.get("instruction_mask")
            instruction_mask[i, :n] = True if imask is None else torch.tensor(list(imask), dtype=torch.bool)
        return {
            "input_ids": input_ids,
            "response_mask": response,
            "prompt_mask": prompt_mask,
            "instruction_mask": instruction_mask,
            "attention_mask": attention,
            "prompt_len": prompt_len,
        }


def build_sft_dataset(
    task: str | TaskSpec,
    split: str,
    tokenizer: Any,
    data_dir: str | os.PathLike | None = None,
    *,
    max_prompt_len: int | None = None,
    max_target_len: int | None = None,
    keep_tail: int = DEFAULT_KEEP_TAIL,
    limit: int | None = None,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    load_from_cache_file: bool = True,
):
    """Load, format and encode a task split into a ``datasets.Dataset`` for :class:`SFTCollator`.

    Columns: ``id``, ``prompt_ids``, ``target_ids``, ``instruction_mask``. Length budgets default
    to the spec's ``max_prompt_tokens`` / ``max_new_tokens``. The batched ``datasets.map`` is
    cached by ``datasets`` next to the source's Arrow files under an explicit fingerprint of
    (source rows, task spec, tokenizer, budgets, :data:`ENCODING_VERSION`), so a second call
    with the same inputs reads the cache instead of re-tokenising.
    """
    from datasets.fingerprint import Hasher

    from ldp.data.loading import load_split

    spec = get_task(task)
    max_prompt_len = spec.max_prompt_tokens if max_prompt_len is None else max_prompt_len
    max_target_len = spec.max_new_tokens if max_target_len is None else max_target_len
    ds = load_split(spec, split, data_dir, limit, cache_dir=cache_dir)
    fingerprint = Hasher.hash(
        [
            ds._fingerprint,
            spec.as_dict(),
            Hasher.hash(tokenizer),
            max_prompt_len,
            max_target_len,
            keep_tail,
            ENCODING_VERSION,
        ]
    )

    def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        names = list(batch)
        rows = [dict(zip(names, values)) for values in zip(*(batch[n] for n in names))]
        examples = [spec.to_example(row, idx) for row, idx in zip(rows, indices)]
        cols = encode_examples(examples, tokenizer, max_prompt_len, max_target_len, keep_tail=keep_tail)
        cols["id"] = [ex.id for ex in examples]
        return cols

    return ds.map(
        encode,
        batched=True,
        batch_size=256,
        with_indices=True,
        remove_columns=ds.column_names,
        new_fingerprint=fingerprint,
        load_from_cache_file=load_from_cache_file,
        num_proc=num_proc,
        desc=f"encoding {spec.name}/{split}",
    )

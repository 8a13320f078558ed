"""Warm start: any Hugging Face encoder or masked LM turned into a masked-diffusion denoiser.

This is how real diffusion LMs are made from existing models (``ldp pretrain --init``).
:class:`WarmStartDenoiser` wraps the checkpoint unchanged as ``self.backbone`` and adds only what a
denoiser needs and the checkpoint lacks:

- an output head. A ``*ForMaskedLM`` checkpoint keeps its own MLM head (``inner_head:
  "checkpoint"``); a bare encoder (e.g. ``BertModel``) gets a BERT-style MLM head
  ``lm_head`` (dense -> GELU -> LayerNorm -> decoder, the decoder weight tied to the encoder's word
  embeddings unless ``tie_word_embeddings=False``; ``inner_head: "new"``);
- a step embedding ``step_embed``: sinusoid(t) -> MLP, added to the word embeddings before the
  encoder's own embedding layer (positions, LayerNorm). Its last layer starts at zero, so a fresh
  wrapper computes exactly the pretrained encoder's states.

Special tokens come from the tokenizer: ``[MASK]`` is the absorbing state, ``[PAD]`` the padding,
and the tokenizer's EOS or, for BERT tokenizers which have none, ``[SEP]``.

The wrapper's ``config.json`` (``model_type: ldp-warmstart``) holds the inner config as a dict, so
``save_pretrained`` / ``from_pretrained`` (or ``AutoModel.from_pretrained`` after
:func:`register_auto_classes`) round-trip it exactly without the original checkpoint.

**Prefix hook** (same contract as the native model's, see :mod:`ldp.models.native`):
``model.set_prefix_kv(block_index, fn)`` makes block ``block_index``'s self-attention
(``block_parts().self_attention``, ``attention.self`` for BERT) call ``fn(query)`` with its
queries (B, nh, L, hd) and prepend the returned ``(k, v)``, each (B, nh, P, hd), to its keys and
values. It works through a ``transformers`` attention function, :data:`PREFIX_ATTENTION` (SDPA
plus the prefix), which the first call registers and switches the encoder to; without a prefix
it computes exactly what ``sdpa`` does. Encoders whose attention does not go through
``transformers``' ``AttentionInterface`` are refused.

Block parts are known for the BERT family (bert, roberta, xlm-roberta, camembert, electra, ernie,
…: ``attention.self.query`` …) and DistilBERT; other encoders still work as denoisers, but
methods that attach inside blocks (weight LoRA, adapters, prefix) refuse them with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init

from ldp.errors import LdpError, UsageError, first_line
from ldp.models.denoiser import DenoiserAttributes, position_ids
from ldp.models.native import realign_parameters, sinusoidal_embedding, validate_inputs

__all__ = [
    "MODEL_TYPE",
    "WarmStartConfig",
    "WarmStartDenoiser",
    "MLMHead",
    "StepEmbedding",
    "EncoderBlockParts",
    "register_auto_classes",
    "warm_start",
    "special_token_ids",
    "PREFIX_ATTENTION",
]

MODEL_TYPE = "ldp-warmstart"

PREFIX_ATTENTION = "ldp_prefix_sdpa"
"""Name of the attention implementation that honours ``prefix_kv`` (registered on first use)."""

# Attribute paths of the MLM head inside known *ForMaskedLM classes, applied in order.
_MLM_HEADS: dict[str, tuple[str, ...]] = {
    "cls": ("cls",),  # BERT, ERNIE, MegatronBERT, DeBERTa-v2 (legacy), RoFormer, ...
    "lm_head": ("lm_head",),  # RoBERTa, XLM-R, CamemBERT, MPNet, Longformer, ...
    "predictions": ("predictions",),  # ALBERT
    "generator_predictions": ("generator_predictions", "generator_lm_head"),  # ELECTRA
    "vocab_transform": ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
    "head": ("head", "decoder"),  # ModernBERT
}


@dataclass(frozen=True)
class EncoderBlockParts:
    """Module names inside one encoder layer (see ``ldp.models.denoiser.BlockParts``).

    For BERT-style post-LN layers, ``attention``/``ffn`` name the dropout right after the output
    projection: its output is the sub-layer's output just before ``LayerNorm(x + sublayer)``.
    """

    q: str
    k: str
    v: str
    o: str
    up: str
    down: str
    attention: str
    ffn: str
    self_attention: str
    """The module that calls the attention function (carries the ``prefix_kv`` hook)."""


_BERT_PARTS = EncoderBlockParts(
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    up="intermediate.dense",
    down="output.dense",
    attention="attention.output.dropout",
    ffn="output.dropout",
    self_attention="attention.self",
)
_DISTILBERT_PARTS = EncoderBlockParts(
    q="attention.q_lin",
    k="attention.k_lin",
    v="attention.v_lin",
    o="attention.out_lin",
    up="ffn.lin1",
    down="ffn.lin2",
    attention="attention",
    ffn="ffn",
    self_attention="attention",
)


# --------------------------------------------------------------------------- config


@strict
class WarmStartConfig(PreTrainedConfig):
    """A wrapped HF checkpoint: its config as a dict plus the denoiser's own fields."""

    model_type = MODEL_TYPE

    inner_config: dict | None = None
    """The wrapped model's ``config.to_dict()`` (includes its ``model_type``)."""
    inner_head: str = "new"
    """``checkpoint``: the inner model is a ``*ForMaskedLM`` and its head is used; ``new``: the
    inner model is a bare encoder and ``lm_head`` is added."""
    step_embedding: bool = True
    """Add ``step_embed(t)`` to the word embeddings (zero at initialisation)."""
    step_embedding_dim: int = 256
    """Width of the sinusoidal embedding of t."""
    vocab_size: int = 30522
    """Mirrors the inner config."""
    hidden_size: int = 384
    """Mirrors the inner config."""
    mask_token_id: int = 103
    pad_token_id: int | None = 0
    eos_token_id: int | None = 102
    tie_word_embeddings: bool = True
    """Tie the new head's decoder to the encoder's word embeddings (``inner_head: new`` only)."""
    tokenizer: str | None = None
    """Hub id or path the checkpoint (and its tokenizer) came from."""
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.inner_head not in ("new", "checkpoint"):
            raise UsageError(f"inner_head must be 'new' or 'checkpoint', got {self.inner_head!r}")
        if self.inner_config is not None and "model_type" not in self.inner_config:
            raise UsageError("inner_config has no 'model_type'")
        if self.step_embedding_dim < 2 or self.step_embedding_dim % 2:
            raise UsageError(f"step_embedding_dim must be even, got {self.step_embedding_dim}")


# --------------------------------------------------------------------------- added modules


class MLMHead(nn.Module):
    """BERT-style MLM head: ``decoder(LayerNorm(gelu(dense(h))))`` -> (..., V)."""

    def __init__(self, hidden_size: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size, bias=True)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=True)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))


class StepEmbedding(nn.Module):
    """t (B,) in [0, 1] -> (B, d): ``fc2(SiLU(fc1(sinusoid(t))))``; ``fc2`` starts at zero."""

    def __init__(self, dim: int, hidden_size: int) -> None:
        super().__init__()
        self.dim = dim
        self.fc1 = nn.Linear(dim, hidden_size, bias=True)
        self.fc2 = nn.Linear(hidden_size, hidden_size, bias=True)
        self.fc2._ldp_zero_init = True

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.dim).to(self.fc1.weight.dtype)
        return self.fc2(F.silu(self.fc1(emb)))


def _mlm_head_path(model: nn.Module) -> tuple[str, ...] | None:
    for first, path in _MLM_HEADS.items():
        if isinstance(getattr(model, first, None), nn.Module) and all(
            callable(getattr(model, p, None)) for p in path
        ):
            return path
    return None


def _prefix_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """``transformers``' SDPA attention with ``module.prefix_kv`` (if set) prepended to k/v.

    query/key/value (B, nh, L, hd); the mask, when given, is boolean (True = attend) or additive
    float, and gets P leading columns that let every query see the prefix.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix_kv = getattr(module, "prefix_kv", None)
    if prefix_kv is not None:
        k_prefix, v_prefix = prefix_kv(query)
        B, nh, _, hd = key.shape
        expected = (B, nh, k_prefix.shape[2], hd)
        if tuple(k_prefix.shape) != expected or tuple(v_prefix.shape) != expected:
            raise UsageError(
                f"prefix_kv returned {tuple(k_prefix.shape)} / {tuple(v_prefix.shape)}, "
                f"expected (B, heads, P, head_dim) = {expected}"
            )
        key = torch.cat([k_prefix.to(key.dtype), key], dim=2)
        value = torch.cat([v_prefix.to(value.dtype), value], dim=2)
        if attention_mask is not None:
            shape = (*attention_mask.shape[:-1], k_prefix.shape[2])
            if attention_mask.dtype == torch.bool:
                pad = attention_mask.new_ones(shape)
            else:
                pad = attention_mask.new_zeros(shape)
            attention_mask = torch.cat([pad, attention_mask], dim=-1)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register_prefix_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PREFIX_ATTENTION, _prefix_sdpa_attention)
    AttentionMaskInterface.register(PREFIX_ATTENTION, sdpa_mask)


def _drop_pooler(model: nn.Module) -> None:
    """Remove an unused pooler (BertModel's): the denoiser only reads token states."""
    if isinstance(getattr(model, "pooler", None), nn.Module):
        model.pooler = None


def _qualified_name(root: nn.Module, target: nn.Parameter) -> str:
    for name, param in root.named_parameters(remove_duplicate=False):
        if param is target:
            return name
    raise LdpError("could not locate the encoder's word-embedding weight")


# --------------------------------------------------------------------------- the model


class WarmStartDenoiser(DenoiserAttributes, PreTrainedModel):
    """A HF encoder / masked LM as a masked-diffusion denoiser (``Denoiser`` protocol)."""

    config: WarmStartConfig
    config_class = WarmStartConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True

    def __init__(self, config: WarmStartConfig, backbone: PreTrainedModel | None = None) -> None:
        """Build from ``config`` (random inner weights, as ``from_pretrained`` needs) or around an
        already loaded ``backbone`` whose config must equal ``config.inner_config``."""
        super().__init__(config)
        register_auto_classes()
        if config.inner_config is None:
            raise UsageError(
                "a warm-start config needs inner_config (use WarmStartDenoiser.from_encoder)"
            )
        if backbone is None:
            inner = dict(config.inner_config)
            inner_config = AutoConfig.for_model(inner.pop("model_type"), **inner)
            auto = AutoModelForMaskedLM if config.inner_head == "checkpoint" else AutoModel
            backbone = auto.from_config(inner_config)
        _drop_pooler(backbone)
        self.backbone = backbone
        self._head_path: tuple[str, ...] | None = None
        self.lm_head = None
        if config.inner_head == "checkpoint":
            self._head_path = _mlm_head_path(backbone)
            if self._head_path is None:
                raise UsageError(f"{type(backbone).__name__}: no known MLM head to reuse")
        else:
            self.lm_head = MLMHead(config.hidden_size, config.vocab_size, config.layer_norm_eps)
            if config.tie_word_embeddings:
                emb = _qualified_name(self.backbone, backbone.get_input_embeddings().weight)
                self._tied_weights_keys = {"lm_head.decoder.weight": f"backbone.{emb}"}
        self.step_embed = (
            StepEmbedding(config.step_embedding_dim, config.hidden_size)
            if config.step_embedding
            else None
        )
        self.post_init()

    # -- construction from a checkpoint
    @classmethod
    def from_encoder(
        cls,
        name_or_path: str,
        *,
        tokenizer: Any = None,
        head: str = "auto",
        step_embedding: bool = True,
        tie_word_embeddings: bool = True,
        dtype: torch.dtype | None = None,
    ) -> WarmStartDenoiser:
        """Wrap the checkpoint ``name_or_path`` (hub id or local folder) as a denoiser.

        ``head``: ``auto`` reuses the checkpoint's MLM head when it is a known ``*ForMaskedLM``
        (or ``*ForPreTraining``) and adds a new tied head otherwise; ``checkpoint`` insists on
        reuse; ``new`` always adds a fresh head on the bare encoder. ``tokenizer`` defaults to the
        checkpoint's own. Returned in eval mode.
        """
        if head not in ("auto", "checkpoint", "new"):
            raise UsageError(f"head must be auto, checkpoint or new, got {head!r}")
        name_or_path = str(name_or_path)
        if tokenizer is None:
            tokenizer = _load_tokenizer(name_or_path)
        mask_id, pad_id, eos_id = special_token_ids(tokenizer, name_or_path)
        try:
            inner_config = AutoConfig.from_pretrained(name_or_path)
        except (OSError, ValueError) as exc:
            raise LdpError(f"cannot load config of {name_or_path!r}: {first_line(exc)}") from None
        archs = inner_config.architectures or []
        has_mlm = any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in archs)
        if head == "checkpoint" and not has_mlm:
            raise UsageError(
                f"{name_or_path!r} has no masked-LM head "
                f"(architectures: {', '.join(archs) or '?'});"
                " use head='new'"
            )
        kwargs = {"dtype": dtype} if dtype is not None else {}
        backbone = None
        inner_head = "new"
        if head != "new" and has_mlm:
            backbone = _load_model(AutoModelForMaskedLM, name_or_path, kwargs)
            if _mlm_head_path(backbone) is not None:
                inner_head = "checkpoint"
            elif head == "checkpoint":
                raise UsageError(f"{type(backbone).__name__}: its MLM head layout is not known")
            else:
                backbone = None
        if backbone is None:
            backbone = _load_model(AutoModel, name_or_path, kwargs)
        inner = backbone.config
        vocab = len(tokenizer)
        if vocab > inner.vocab_size:
            raise UsageError(
                f"tokenizer of {name_or_path!r} has {vocab} tokens but the model only "
                f"{inner.vocab_size} embeddings"
            )
        config = WarmStartConfig(
            inner_config=inner.to_dict(),
            inner_head=inner_head,
            step_embedding=step_embedding,
            vocab_size=inner.vocab_size,
            hidden_size=inner.hidden_size,
            mask_token_id=mask_id,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            tie_word_embeddings=tie_word_embeddings,
            tokenizer=name_or_path,
            initializer_range=getattr(inner, "initializer_range", 0.02),
            layer_norm_eps=float(getattr(inner, "layer_norm_eps", 1e-12)),
        )
        model = cls(config, backbone=backbone)
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()

    # -- HF plumbing
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then ``realign_parameters`` (bit-exact reloads)."""
        loaded = super().from_pretrained(*args, **kwargs)
        realign_parameters(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "_ldp_zero_init", False):
                init.zeros_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        if self.lm_head is not None:
            return self.lm_head.decoder
        return self.backbone.get_output_embeddings()

    def encoder_model(self) -> PreTrainedModel:
        """The bare encoder (``backbone`` itself, or the base model inside a ``*ForMaskedLM``)."""
        return self.backbone.base_model

    # -- Denoiser attributes
    def _attribute_source(self) -> PreTrainedConfig:
        return self.config

    # -- Denoiser methods
    def hidden_states(
        self,
        input_ids: torch.Tensor,
        t: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The encoder's last hidden states (B, L, d); ``t`` None means t = 0 (clean input)."""
        max_len = getattr(self.encoder_model().config, "max_position_embeddings", None)
        t, mask = validate_inputs(input_ids, t, attention_mask, max_len)
        embeds = self.get_input_embeddings()(input_ids)  # (B, L, d)
        if self.step_embed is not None:
            if t is None:
                t = torch.zeros(input_ids.shape[0], device=input_ids.device)
            embeds = embeds + self.step_embed(t)[:, None, :].to(embeds.dtype)
        kwargs = {}
        if mask is not None:
            mask = mask.long()
            # Absolute position tables: count attended tokens only, so left padding (evaluation)
            # and batch mates never shift a row's positions.
            B, L = input_ids.shape
            kwargs["position_ids"] = position_ids(mask, B, L, input_ids.device) + self._position_offset
        out = self.encoder_model()(
            inputs_embeds=embeds, attention_mask=mask, return_dict=True, **kwargs
        )
        return out.last_hidden_state

    @property
    def _position_offset(self) -> int:
        """First position id of a sequence: 0 for BERT-like models; RoBERTa-like ones number
        positions from ``padding_idx + 1``."""
        config = self.encoder_model().config
        if "roberta" in str(getattr(config, "model_type", "")) or "camembert" in str(
            getattr(config, "model_type", "")
        ):
            return int(config.pad_token_id) + 1
        return 0

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., V) logits through the checkpoint's MLM head or the added one."""
        if self.lm_head is not None:
            return self.lm_head(hidden)
        for name in self._head_path:
            hidden = getattr(self.backbone, name)(hidden)
        return hidden

    def forward(
        self,
        input_ids: torch.Tensor,
        t: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, V) = head(hidden_states(input_ids, t, attention_mask))."""
        return self.head(self.hidden_states(input_ids, t, attention_mask))

    def blocks(self) -> nn.ModuleList:
        """The encoder's layers: the ``nn.ModuleList`` holding ``num_hidden_layers`` modules."""
        n = getattr(self.encoder_model().config, "num_hidden_layers", None)
        for _, module in self.encoder_model().named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == n:
                return module
        raise UsageError(
            f"cannot find the {n} layers of {type(self.encoder_model()).__name__} "
            "(shared or grouped layers are not supported)"
        )

    def set_prefix_kv(self, index: int, fn) -> None:
        """Install (None: remove) the key/value prefix callable of block ``index`` (module doc)."""
        if fn is not None and not callable(fn):
            raise UsageError("prefix_kv must be a callable returning (k_prefix, v_prefix) or None")
        attention = self.blocks()[index].get_submodule(self.block_parts().self_attention)
        if fn is not None and self.encoder_model().config._attn_implementation != PREFIX_ATTENTION:
            if not self.backbone._can_set_attn_implementation():
                raise UsageError(
                    f"{type(self.backbone).__name__} does not use transformers' attention "
                    "interface; prefix_kv is not supported on it"
                )
            _register_prefix_attention()
            self.backbone.set_attn_implementation(PREFIX_ATTENTION)
        attention._modules.pop("prefix_kv", None)
        object.__setattr__(attention, "prefix_kv", fn)

    def block_parts(self) -> EncoderBlockParts:
        """Names inside one encoder layer; BERT family and DistilBERT are known."""
        block = self.blocks()[0]
        for parts in (_BERT_PARTS, _DISTILBERT_PARTS):
            try:
                for name in (parts.q, parts.k, parts.v, parts.o, parts.up, parts.down, parts.attention, parts.ffn):
                    block.get_submodule(name)
            except AttributeError:
                continue
            return parts
        raise UsageError(
            f"block parts of {type(block).__name__} ({self.config.inner_config.get('model_type')})"
            " are not known; methods that attach inside blocks cannot use this base"
        )


# --------------------------------------------------------------------------- helpers



def _load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise LdpError(f"cannot load tokenizer of {name_or_path!r}: {first_line(exc)}") from None


def _load_model(auto, name_or_path: str, kwargs: dict) -> PreTrainedModel:
    try:
        return auto.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as exc:
        raise LdpError(f"cannot load weights of {name_or_path!r}: {first_line(exc)}") from None


def special_token_ids(tokenizer: Any, name: str = "tokenizer") -> tuple[int, int, int]:
    """``(mask, pad, eos)`` ids of a tokenizer; EOS falls back to [SEP] (BERT), pad to EOS."""
    mask = tokenizer.mask_token_id
    if mask is None:
        raise UsageError(f"{name} has no mask token; a masked-diffusion LM needs one")
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = tokenizer.sep_token_id
    if eos is None:
        raise UsageError(f"{name} has neither an EOS nor a [SEP] token")
    pad = tokenizer.pad_token_id
    return int(mask), int(pad if pad is not None else eos), int(eos)


def warm_start(name_or_path: str, **kwargs: Any) -> tuple[WarmStartDenoiser, Any]:
    """``(model, tokenizer)`` for the checkpoint ``name_or_path``; see ``from_encoder``."""
    tokenizer = kwargs.pop("tokenizer", None) or _load_tokenizer(str(name_or_path))
    model = WarmStartDenoiser.from_encoder(name_or_path, tokenizer=tokenizer, **kwargs)
    return model, tokenizer


def register_auto_classes() -> None:
    """Make ``AutoConfig``/``AutoModel.from_pretrained`` know ``model_type: ldp-warmstart``."""
    AutoConfig.register(MODEL_TYPE, WarmStartConfig, exist_ok=True)
    AutoModel.register(WarmStartConfig, WarmStartDenoiser, exist_ok=True)


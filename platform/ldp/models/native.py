"""The native base denoiser: a bidirectional pre-norm transformer for masked diffusion.

Reads top to bottom: config, small building blocks (norm, RoPE, attention, feed-forward, time
embedding), one block, the model. Shapes are written ``(B, L, d)``: batch, length, hidden;
``nh`` heads of ``hd`` channels; ``P`` prefix positions.

- Non-causal self-attention through ``torch.nn.functional.scaled_dot_product_attention`` with
  rotary position embeddings (no absolute position table), separate ``q_proj``/``k_proj``/
  ``v_proj``/``o_proj`` ``nn.Linear`` layers so peft LoRA can target them by name.
- Pre-norm blocks; LayerNorm and every Linear keep their bias terms (BitFit has something to train).
- Optional adaLN time conditioning (``time_conditioning=True``): a sinusoidal embedding of
  ``t`` in [0, 1] -> MLP -> per-block shift/scale/gate for both sub-layers plus shift/scale for the
  final norm. The modulation layers start at zero and gates enter as ``(1 + gate)``, so a freshly
  built conditioned model computes exactly what the unconditioned one does; ``t`` starts to matter
  once those layers train.
- Output head: ``lm_head`` Linear d -> V (weight tied to ``embed_tokens`` unless
  ``tie_word_embeddings=False``); frozen by convention when adapting.

**Prefix hook for prefix tuning** (the same contract as the warm-start backbone's). Every
:class:`SelfAttention` has an attribute ``prefix_kv`` (None by default). When set to a callable,
attention calls ``prefix_kv(query)`` with the block's queries (B, nh, L, hd) (use their batch size,
dtype and device) and expects ``(k_prefix, v_prefix)``, each (B, nh, P, hd), used as given (no
rotary embedding is applied to them): they join the sequence's keys/values and every query may
attend to them (padding masks are extended with ones). A third element ``gate`` (nh,) selects the
gated form instead (``ldp.models.prefix_attention``). Install it with
``model.set_prefix_kv(block_index, fn)`` (or :meth:`SelfAttention.set_prefix_kv`), which never
registers the callable as a submodule, so prefix weights stay out of the base's ``state_dict``;
``block_parts().self_attention`` names the module that carries the attribute.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from ldp.errors import UsageError
from ldp.models.denoiser import DenoiserAttributes, position_ids
from ldp.models.prefix_attention import attend_with_prefix

__all__ = [
    "MODEL_TYPE",
    "DiffusionTransformerConfig",
    "DiffusionTransformer",
    "DiffusionBlock",
    "SelfAttention",
    "FeedForward",
    "TimeEmbedding",
    "NativeBlockParts",
    "build_config",
    "register_auto_classes",
    "sinusoidal_embedding",
    "validate_inputs",
    "realign_parameters",
]

MODEL_TYPE = "ldp-diffusion"

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
}
_NORMS = ("layernorm", "rmsnorm")
_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


# --------------------------------------------------------------------------- config


@strict
class DiffusionTransformerConfig(PreTrainedConfig):
    """Shape and behaviour of the native denoiser (saved as ``config.json``)."""

    model_type = MODEL_TYPE

    vocab_size: int = 30522
    """Output classes = embedding rows; must cover the tokenizer (30522: BERT WordPiece)."""
    hidden_size: int = 256
    """Model width d."""
    num_hidden_layers: int = 4
    """Number of transformer blocks."""
    num_attention_heads: int = 4
    """Heads nh; ``hidden_size / nh`` must be an even integer (RoPE rotates channel pairs)."""
    intermediate_size: int = 1024
    """FFN width (the up-projection's output size)."""
    max_position_embeddings: int = 512
    """Longest accepted input; RoPE itself has no table, this is a guard."""
    hidden_act: str = "gelu"
    """FFN activation: gelu, gelu_tanh, silu, relu."""
    gated_ffn: bool = False
    """SwiGLU-style FFN ``down(act(gate(x)) * up(x))`` (three matrices) instead of a 2-layer MLP."""
    norm_type: str = "layernorm"
    """``layernorm`` (with bias, default) or ``rmsnorm`` (no bias)."""
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    """RoPE frequency base (theta)."""
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    time_conditioning: bool = False
    """adaLN conditioning on t; False ignores t (as LLaDA does)."""
    time_embedding_dim: int = 256
    """Width of the sinusoidal embedding of t."""
    time_cond_dim: int = 128
    """Width of the conditioning vector c fed to each block's modulation layer."""
    initializer_range: float = 0.02
    mask_token_id: int = 103
    """The absorbing-state token ([MASK] of the paired tokenizer)."""
    pad_token_id: int | None = 0
    eos_token_id: int | None = 102
    """End of text; BERT tokenizers use [SEP]."""
    tie_word_embeddings: bool = True
    """Share ``lm_head.weight`` with ``embed_tokens.weight``."""
    tokenizer: str | None = "sentence-transformers/all-MiniLM-L6-v2"
    """Hub id or path of the paired tokenizer (resolved by ``ldp.models.default_tokenizer``)."""

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        problem = _config_problem(self)
        if problem:
            raise UsageError(f"invalid {MODEL_TYPE} config: {problem}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def _config_problem(c: DiffusionTransformerConfig) -> str | None:
    for f in fields(c):  # types first, so the range checks below compare numbers
        annotation = str(f.type).replace(" ", "")
        optional = annotation.endswith("|None")
        tp = _SCALARS.get(annotation.removesuffix("|None"))
        value = getattr(c, f.name)
        if tp is None or (optional and value is None):
            continue
        ok = isinstance(value, tp) and (tp is bool or not isinstance(value, bool))
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            return f"{f.name} must be {tp.__name__}, got {value!r}"
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "max_position_embeddings", "time_embedding_dim",
                 "time_cond_dim"):
        if getattr(c, name) < 1:
            return f"{name} must be >= 1, got {getattr(c, name)}"
    if c.hidden_size % c.num_attention_heads:
        return (f"hidden_size {c.hidden_size} is not a multiple of num_attention_heads "
                f"{c.num_attention_heads}")
    if c.head_dim % 2:
        return f"head dim {c.head_dim} must be even for rotary embeddings"
    if c.time_embedding_dim % 2:
        return f"time_embedding_dim must be even, got {c.time_embedding_dim}"
    if c.hidden_act not in _ACTIVATIONS:
        return f"hidden_act must be one of {', '.join(_ACTIVATIONS)}, got {c.hidden_act!r}"
    if c.norm_type not in _NORMS:
        return f"norm_type must be one of {', '.join(_NORMS)}, got {c.norm_type!r}"
    for name in ("mask_token_id", "pad_token_id", "eos_token_id"):
        value = getattr(c, name)
        if value is not None and not 0 <= value < c.vocab_size:
            return f"{name} {value} is outside the vocabulary (0..{c.vocab_size - 1})"
    for name in ("attention_dropout", "hidden_dropout"):
        if not 0.0 <= getattr(c, name) < 1.0:
            return f"{name} must be in [0, 1), got {getattr(c, name)}"
    return None


def build_config(**kwargs) -> DiffusionTransformerConfig:
    """A :class:`DiffusionTransformerConfig`; unknown keys or bad values -> one-line UsageError."""
    known = {f.name for f in fields(DiffusionTransformerConfig)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise UsageError(f"unknown model config key {unknown[0]!r}")
    try:
        return DiffusionTransformerConfig(**kwargs)
    except UsageError:
        raise
    except Exception as exc:  # huggingface_hub strict validation errors (multi-line)
        if isinstance(exc.__cause__, UsageError):
            raise exc.__cause__ from None
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise UsageError(f"invalid {MODEL_TYPE} config: {lines[-1] if lines else exc}") from None


# --------------------------------------------------------------------------- building blocks


def _norm(config: DiffusionTransformerConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, dim) fp32 ``[cos(scale t f_i), sin(scale t f_i)]``.

    Frequencies ``f_i = 10000^(-i / (dim/2))`` as in DDPM/DiT; ``scale`` maps [0, 1] onto the
    familiar 0..1000 step range so neighbouring steps get distinguishable embeddings.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = (t.float() * scale)[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rotary_cos_sin(
    positions: int | torch.Tensor, head_dim: int, base: float, device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables for rotate-half RoPE, computed in fp32 then cast to ``dtype``.

    ``positions``: a length L (tables (L, hd) for positions 0..L-1) or per-row positions (B, L)
    (tables (B, 1, L, hd), broadcast over heads)."""
    inv_freq = 1.0 / base ** (
        torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    )
    if isinstance(positions, int):
        pos = torch.arange(positions, device=device, dtype=torch.float32)
    else:
        pos = positions.to(device=device, dtype=torch.float32)[:, None]  # (B, 1, L)
    angles = pos[..., None] * inv_freq  # (..., L, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (..., L, hd)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, nh, L, hd) rotated by position: ``x cos + rotate_half(x) sin``."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


PrefixKV = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention with RoPE and an optional learned key/value prefix."""

    def __init__(self, config: DiffusionTransformerConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(d, d, bias=True)
        self.k_proj = nn.Linear(d, d, bias=True)
        self.v_proj = nn.Linear(d, d, bias=True)
        self.o_proj = nn.Linear(d, d, bias=True)
        self.o_proj._ldp_residual_out = True  # scaled init (GPT-2)
        self.prefix_kv: PrefixKV | None = None

    def set_prefix_kv(self, fn: PrefixKV | None) -> None:
        """Install (or with None remove) the prefix callable without registering it as a submodule.

        ``fn(query)`` gets the queries (B, nh, L, hd) and returns ``(k, v)``, each (B, nh, P, hd),
        or ``(k, v, gate)`` with ``gate`` (nh,) for the gated form.
        """
        if fn is not None and not callable(fn):
            raise UsageError("prefix_kv must be a callable returning (k_prefix, v_prefix[, gate]) or None")
        self._modules.pop("prefix_kv", None)
        object.__setattr__(self, "prefix_kv", fn)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, L, d), cos/sin (L, hd) or (B, 1, L, hd), attn_mask bool (B, 1, 1, L) True = attend -> (B, L, d)."""
        B, L, d = x.shape
        shape = (B, L, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)  # (B, nh, L, hd)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        q = _apply_rotary(q, cos, sin)
        k = _apply_rotary(k, cos, sin)
        dropout = self.dropout if self.training else 0.0
        if self.prefix_kv is not None:
            k_prefix, v_prefix, *gate = self.prefix_kv(q)
            expected = (B, self.num_heads, k_prefix.shape[2], self.head_dim)
            if tuple(k_prefix.shape) != expected or tuple(v_prefix.shape) != expected:
                raise UsageError(
                    f"prefix_kv returned {tuple(k_prefix.shape)} / {tuple(v_prefix.shape)}, "
                    f"expected (B, heads, P, head_dim) = {expected}"
                )
            y = attend_with_prefix(
                q, k, v, k_prefix, v_prefix, gate[0] if gate else None, attn_mask, dropout_p=dropout
            )  # (B, nh, L, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.o_proj(y.transpose(1, 2).reshape(B, L, d))


class FeedForward(nn.Module):
    """``down(act(up(x)))``, or SwiGLU-style ``down(act(gate(x)) * up(x))`` when gated."""

    def __init__(self, config: DiffusionTransformerConfig) -> None:
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.act = _ACTIVATIONS[config.hidden_act]
        self.gate_proj = nn.Linear(d, f, bias=True) if config.gated_ffn else None
        self.up_proj = nn.Linear(d, f, bias=True)
        self.down_proj = nn.Linear(f, d, bias=True)
        self.down_proj._ldp_residual_out = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is not None:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act(self.up_proj(x)))


class TimeEmbedding(nn.Module):
    """t (B,) in [0, 1] -> conditioning vector c (B, time_cond_dim) = SiLU(MLP(sinusoid(t)))."""

    def __init__(self, config: DiffusionTransformerConfig) -> None:
        super().__init__()
        self.dim = config.time_embedding_dim
        self.fc1 = nn.Linear(config.time_embedding_dim, config.time_cond_dim, bias=True)
        self.fc2 = nn.Linear(config.time_cond_dim, config.time_cond_dim, bias=True)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.dim).to(self.fc1.weight.dtype)
        return F.silu(self.fc2(F.silu(self.fc1(emb))))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiffusionBlock(GradientCheckpointingLayer):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``, adaLN-modulated if asked.

    With conditioning c: ``x + (1 + gate) * attn(norm(x) * (1 + scale) + shift)`` (likewise for
    the FFN), the six vectors from ``modulation(c)``, which starts at zero.
    """

    def __init__(self, config: DiffusionTransformerConfig) -> None:
        super().__init__()
        self.attn_norm = _norm(config)
        self.attn = SelfAttention(config)
        self.ffn_norm = _norm(config)
        self.mlp = FeedForward(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.modulation = None
        if config.time_conditioning:
            self.modulation = nn.Linear(config.time_cond_dim, 6 * config.hidden_size, bias=True)
            self.modulation._ldp_zero_init = True

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, L, d), cond (B, d_c) or None -> (B, L, d). Arguments are positional so that
        gradient checkpointing (which wraps ``forward``) sees every tensor."""
        if self.modulation is None or cond is None:
            x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, attn_mask))
            return x + self.dropout(self.mlp(self.ffn_norm(x)))
        mods = self.modulation(cond)[:, None, :].chunk(6, dim=-1)  # 6 x (B, 1, d)
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = mods
        h = self.attn(_modulate(self.attn_norm(x), shift_a, scale_a), cos, sin, attn_mask)
        x = x + (1 + gate_a) * self.dropout(h)
        h = self.mlp(_modulate(self.ffn_norm(x), shift_f, scale_f))
        return x + (1 + gate_f) * self.dropout(h)


@dataclass(frozen=True)
class NativeBlockParts:
    """Module names inside one :class:`DiffusionBlock` (see ``ldp.models.denoiser.BlockParts``)."""

    q: str = "attn.q_proj"
    k: str = "attn.k_proj"
    v: str = "attn.v_proj"
    o: str = "attn.o_proj"
    up: str = "mlp.up_proj"
    down: str = "mlp.down_proj"
    attention: str = "attn"
    ffn: str = "mlp"
    self_attention: str = "attn"
    """The module carrying the ``prefix_kv`` hook."""


# --------------------------------------------------------------------------- inputs


def validate_inputs(
    input_ids: torch.Tensor,
    t: torch.Tensor | float | None,
    attention_mask: torch.Tensor | None,
    max_length: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Check the Denoiser inputs; returns ``t`` as (B,) float (or None) and the mask as (B, L) bool.

    Bad shapes or types raise :class:`UsageError` with one line.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)
        raise UsageError(f"input_ids must be a (batch, length) tensor, got {shape}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise UsageError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
    B, L = input_ids.shape
    if L == 0:
        raise UsageError("input_ids is empty (length 0)")
    if max_length is not None and L > max_length:
        raise UsageError(f"input length {L} exceeds max_position_embeddings {max_length}")
    if t is not None:
        t = torch.as_tensor(t, device=input_ids.device).reshape(-1).float()
        if t.numel() == 1 and B != 1:
            t = t.expand(B)
        if t.numel() != B:
            raise UsageError(f"t must have one value per batch row ({B}), got {t.numel()}")
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (B, L):
            raise UsageError(
                f"attention_mask must have the shape of input_ids {(B, L)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        attention_mask = attention_mask.to(device=input_ids.device) != 0
    return t, attention_mask


# --------------------------------------------------------------------------- loading


def realign_parameters(module: nn.Module, alignment: int = 64) -> int:
    """Give every CPU parameter/buffer not starting on an ``alignment``-byte boundary its own copy.

    ``from_pretrained`` hands out tensors that are views into the safetensors file at 8- or
    32-byte offsets; CPU matmul kernels pick different code paths (and round differently) for
    unaligned operands, so a reloaded model's logits would differ from the saved model's in the
    last bit. Fresh allocations are 64-byte aligned. Tied parameters stay tied (the shared
    ``Parameter`` gets new data once). Returns how many tensors were copied.
    """
    copied = 0
    seen: set[int] = set()
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen or tensor.device.type != "cpu" or tensor.numel() == 0:
            continue
        seen.add(id(tensor))
        if tensor.data_ptr() % alignment or not tensor.is_contiguous():
            tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)
            copied += 1
    return copied


# --------------------------------------------------------------------------- the model


class DiffusionTransformer(DenoiserAttributes, PreTrainedModel):
    """The native masked-diffusion denoiser; implements ``ldp.models.denoiser.Denoiser``."""

    config: DiffusionTransformerConfig
    config_class = DiffusionTransformerConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DiffusionBlock"]
    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}

    def __init__(self, config: DiffusionTransformerConfig) -> None:
        super().__init__(config)
        register_auto_classes()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.time_embed = TimeEmbedding(config) if config.time_conditioning else None
        self.layers = nn.ModuleList(DiffusionBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = _norm(config)
        self.final_modulation = None
        if config.time_conditioning:
            self.final_modulation = nn.Linear(config.time_cond_dim, 2 * config.hidden_size)
            self.final_modulation._ldp_zero_init = True
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.post_init()

    # -- HF plumbing
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained`` + :func:`realign_parameters` (bit-exact reloads)."""
        loaded = super().from_pretrained(*args, **kwargs)
        realign_parameters(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "_ldp_zero_init", False):
                init.zeros_(module.weight)
            else:
                if getattr(module, "_ldp_residual_out", False):
                    std = std / math.sqrt(2 * self.config.num_hidden_layers)
                init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            if module.weight is not None:
                init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

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
        """Final (normalised) hidden states H: (B, L) ids -> (B, L, d).

        ``t`` (B,) in [0, 1]; None means t = 0 (clean input). Ignored unless time-conditioned.
        """
        t, mask = validate_inputs(input_ids, t, attention_mask, self.config.max_position_embeddings)
        x = self.embed_tokens(input_ids)  # (B, L, d)
        B, L, _ = x.shape
        positions = L if mask is None else position_ids(mask, B, L, x.device)
        cos, sin = rotary_cos_sin(
            positions, self.config.head_dim, self.config.rope_base, x.device, x.dtype
        )
        attn_mask = mask[:, None, None, :] if mask is not None else None  # (B, 1, 1, L)
        cond = None
        if self.time_embed is not None:
            if t is None:
                t = torch.zeros(B, device=x.device)
            cond = self.time_embed(t)  # (B, d_c)
        for block in self.layers:
            x = block(x, cos, sin, attn_mask, cond)
        x = self.norm(x)
        if cond is not None:
            shift, scale = self.final_modulation(cond)[:, None, :].chunk(2, dim=-1)
            x = _modulate(x, shift, scale)
        return x

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., V) logits."""
        return self.lm_head(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        t: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, V) = head(hidden_states(input_ids, t, attention_mask))."""
        return self.head(self.hidden_states(input_ids, t, attention_mask))

    def blocks(self) -> nn.ModuleList:
        return self.layers

    def set_prefix_kv(self, index: int, fn: PrefixKV | None) -> None:
        """Install (None: remove) the key/value prefix callable of block ``index`` (module doc)."""
        self.layers[index].attn.set_prefix_kv(fn)

    def block_parts(self) -> NativeBlockParts:
        return NativeBlockParts()


def register_auto_classes() -> None:
    """Make ``AutoConfig``/``AutoModel.from_pretrained`` know ``model_type: ldp-diffusion``.

    Idempotent; called by the model's constructor and by ``ldp.models.load_base``.
    """
    AutoConfig.register(MODEL_TYPE, DiffusionTransformerConfig, exist_ok=True)
    AutoModel.register(DiffusionTransformerConfig, DiffusionTransformer, exist_ok=True)

"""Prefix tuning (Li & Liang, 2021) for bidirectional denoisers, written by hand.

Every block's self-attention gets P learned key/value vectors prepended to the sequence's keys and
values; every query may attend to them. The weights are two tensors owned by this model,
``prefix_keys`` and ``prefix_values``, each (layers, P, d) with d = heads x head_dim (the
projected key/value space); with ``reparam_hidden`` they are instead computed, layer by layer,
by Li & Liang's re-parameterisation MLP (:meth:`PrefixModel._build_reparam`). How they reach
the attention:

- native backbone (``ldp.models.native``): through its hook, ``SelfAttention.set_prefix_kv(fn)``
  with ``fn(x) -> (k, v)`` of shape (B, heads, P, head_dim); the keys get no rotary embedding;
- Hugging Face BERT-family encoders (the warm-started backbone): each self-attention module is
  replaced by :class:`~ldp.methods.prefix.layer.PrefixSelfAttention`, which reuses the original
  ``query``/``key``/``value`` Linear layers (the base's ``state_dict`` keys are unchanged).

The self-attention module is the parent of ``base.block_parts().q``. The base is frozen.
In the default (joint) form a fresh prefix is not the identity; with ``attention: gated`` it is,
through ``prefix_gates`` (layers, heads) starting at zero (see
:class:`~ldp.methods.prefix.config.PrefixConfig`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ldp.errors import UsageError
from ldp.methods.base import AdaptedModel
from ldp.methods.prefix.config import PrefixConfig
from ldp.methods.prefix.layer import PrefixSelfAttention, is_hf_self_attention

__all__ = ["PrefixModel", "attach"]


class PrefixModel(AdaptedModel):
    method_name = "prefix"
    peft_type = "PREFIX_LDP"

    def __init__(self, base: nn.Module, config: PrefixConfig, *, base_hash: str) -> None:
        super().__init__(base, config, base_hash=base_hash)
        for p in base.parameters():
            p.requires_grad_(False)
        device = next(base.parameters()).device
        blocks = base.blocks()
        d = base.hidden_size
        shape = (len(blocks), config.num_virtual_tokens, d)
        token_init = config.init == "tokens" and device.type != "meta"
        if token_init:  # drawn first: P random vocabulary ids, never [MASK]
            ids = torch.randint(0, base.vocab_size - 1, (1, config.num_virtual_tokens))
            ids = (ids + (ids >= base.mask_token_id).long()).to(device)
        self.prefix_keys = self.prefix_values = None
        self.prefix_embedding = self.prefix_mlp_in = self.prefix_mlp_out = None
        if config.reparam_hidden:
            self._build_reparam(len(blocks), d, config, device)
        else:
            self.prefix_keys = nn.Parameter(
                torch.empty(shape, device=device).normal_(0.0, config.init_std)
            )
            self.prefix_values = nn.Parameter(
                torch.empty(shape, device=device).normal_(0.0, config.init_std)
            )
        self._undo: list = []
        parts = base.block_parts()
        parent_path = parts.q.rpartition(".")[0]
        if token_init:
            self._init_from_tokens(base, ids, parent_path, parts.k, parts.v)
        attentions = [block.get_submodule(parent_path) if parent_path else block for block in blocks]
        self.prefix_gates = None
        if config.attention == "gated":
            heads = getattr(attentions[0], "num_heads", None) or getattr(attentions[0], "num_attention_heads")
            self.prefix_gates = nn.Parameter(torch.zeros(len(blocks), heads, device=device))
        for index, (block, attention) in enumerate(zip(blocks, attentions)):
            if hasattr(attention, "set_prefix_kv"):  # native hook
                attention.set_prefix_kv(self._native_prefix(index, attention))
                self._undo.append(lambda a=attention: a.set_prefix_kv(None))
            elif is_hf_self_attention(attention):
                owner_path, _, leaf = parent_path.rpartition(".")
                owner = block.get_submodule(owner_path) if owner_path else block
                replacement = PrefixSelfAttention(attention, self._hf_prefix(index))
                setattr(owner, leaf, replacement)
                self._undo.append(lambda o=owner, n=leaf, a=attention: setattr(o, n, a))
            else:
                raise UsageError(
                    f"prefix: block {index}'s attention ({type(attention).__name__} at "
                    f"{parent_path!r}) has neither a prefix_kv hook nor BERT-style query/key/value"
                )

    @torch.no_grad()
    def _init_from_tokens(
        self, base: nn.Module, ids: torch.Tensor, attention_path: str, k_path: str, v_path: str
    ) -> None:
        """Prefix k/v := the base's k/v projections of the attention inputs of tokens ``ids``."""
        inputs: dict[int, torch.Tensor] = {}
        handles = []
        for index, block in enumerate(base.blocks()):
            attention = block.get_submodule(attention_path) if attention_path else block

            def grab(module, args, kwargs, index=index):
                inputs[index] = args[0] if args else kwargs["hidden_states"]

            handles.append(attention.register_forward_pre_hook(grab, with_kwargs=True))
        was_training = base.training
        base.eval()
        try:
            base.hidden_states(ids)
        finally:
            base.train(was_training)
            for handle in handles:
                handle.remove()
        for index, block in enumerate(base.blocks()):
            x = inputs[index].to(self.prefix_keys.dtype)  # (1, P, d)
            self.prefix_keys[index].copy_(block.get_submodule(k_path)(x)[0])
            self.prefix_values[index].copy_(block.get_submodule(v_path)(x)[0])

    def _native_prefix(self, index: int, attention: nn.Module):
        heads, head_dim = attention.num_heads, attention.head_dim

        def prefix_kv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            b = x.shape[0]
            p = self.config.num_virtual_tokens

            def split(w: torch.Tensor) -> torch.Tensor:  # (P, d) -> (B, heads, P, head_dim)
                return w.view(p, heads, head_dim).transpose(0, 1).unsqueeze(0).expand(b, -1, -1, -1)

            keys, values = self.layer_prefix(index)
            return split(keys), split(values), *self._gate(index)

        return prefix_kv

    def _hf_prefix(self, index: int):
        def prefix() -> tuple[torch.Tensor, ...]:
            return *self.layer_prefix(index), *self._gate(index)

        return prefix

    def _build_reparam(self, layers: int, d: int, config: PrefixConfig, device) -> None:
        """Li & Liang's MLP: (P, d) embedding -> tanh(Linear d -> N) -> Linear N -> (L, 2, d).

        The output layer starts at N(0, init_std / sqrt(N)) with a zero bias, so a fresh
        prefix has about the scale of the direct form's N(0, init_std) init."""
        hidden = config.reparam_hidden
        self.prefix_embedding = nn.Parameter(
            torch.randn(config.num_virtual_tokens, d, device=device)
        )
        self.prefix_mlp_in = nn.Linear(d, hidden, device=device)
        self.prefix_mlp_out = nn.Linear(hidden, layers * 2 * d, device=device)
        with torch.no_grad():
            self.prefix_mlp_out.weight.normal_(0.0, config.init_std / hidden**0.5)
            self.prefix_mlp_out.bias.zero_()

    def layer_prefix(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``index``'s prefix keys and values, (P, d) each."""
        if self.prefix_mlp_out is None:
            return self.prefix_keys[index], self.prefix_values[index]
        hidden = torch.tanh(self.prefix_mlp_in(self.prefix_embedding))  # (P, N)
        d = self.prefix_embedding.shape[1]
        rows = slice(2 * d * index, 2 * d * (index + 1))  # this layer's keys, then its values
        kv = F.linear(hidden, self.prefix_mlp_out.weight[rows], self.prefix_mlp_out.bias[rows])
        return kv[:, :d], kv[:, d:]  # (P, d) each

    def _gate(self, index: int) -> tuple[torch.Tensor, ...]:
        """``(tanh(g),)`` of one layer's heads in the gated form; ``()`` in the joint one."""
        return () if self.prefix_gates is None else (torch.tanh(self.prefix_gates[index]),)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self._adapter_tensors().values())

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        if self.prefix_mlp_out is None:
            tensors = {"prefix_keys": self.prefix_keys, "prefix_values": self.prefix_values}
        else:
            tensors = {
                "prefix_embedding": self.prefix_embedding,
                "prefix_mlp_in.weight": self.prefix_mlp_in.weight,
                "prefix_mlp_in.bias": self.prefix_mlp_in.bias,
                "prefix_mlp_out.weight": self.prefix_mlp_out.weight,
                "prefix_mlp_out.bias": self.prefix_mlp_out.bias,
            }
        if self.prefix_gates is not None:
            tensors["prefix_gates"] = self.prefix_gates
        return tensors

    def detach_from_base(self) -> None:
        """Undo the hooks / replacements: the base computes exactly as before attaching."""
        for undo in self._undo:
            undo()
        self._undo = []


def attach(base: nn.Module, config: PrefixConfig, *, base_hash: str) -> PrefixModel:
    return PrefixModel(base, config, base_hash=base_hash)

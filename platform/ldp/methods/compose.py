"""Composition of task adapters over one frozen base (paper Eqs. 21-23).

A composed denoising step runs the frozen base **once** and adds every task adapter's
perturbation with its weight::

    H  = f(x_t, t)                                   # one base forward, no autograd
    H' = H + sum_j w_j * sum_i sigma(t) g_ij(H, t, c)  # each adapter's perturbation() on H
    logits = head(H')

Weights are given per request row (``(B, J)``: rows of one batch may use different mixes), for
the whole batch (``(J,)``), per denoising phase (``(B, P, J)``: the row's phase is picked from
its step), by an attached :class:`~ldp.methods.router.Router` (``weights="auto"``, computed from
``Enc(c)`` of the same base states, so it costs no extra forward), or uniform (``None``).
A row whose weight for adapter ``j`` is zero does not run adapter ``j`` at all.

Only final-state adapters compose this way (lora-diffusion without ``inject_layers``): they
freeze the base and add no hooks to it, so any number of them can share one base object without
interfering. Every adapter must have been trained on this base (same fingerprint).

A single adapter as the mix ``{task: 1.0}`` reproduces that adapter alone bit for bit: the base
runs under the same precision context, and ``H + 1.0 * p == H + p`` exactly in floating point.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ldp.errors import UsageError
from ldp.methods.base import AdaptedModel, OnABase, base_fingerprint, resolve_steps

__all__ = ["BaseStates", "Composition", "load_composition", "weights_from_mapping"]


class BaseStates(NamedTuple):
    """The one frozen-base forward of a composed step."""

    hidden: torch.Tensor
    """H (B, L, d) fp32, the final states."""
    steps: torch.Tensor
    """(B,) integer steps."""
    blocks: dict[int, torch.Tensor]
    """Outputs (B, L, d) of the blocks some adapter's Enc(c) reads (``context: blocks``), by
    block index; empty when no adapter reads any."""


def _check_composable(name: str, adapter: Any) -> None:
    if not callable(getattr(adapter, "perturbation", None)):
        method = getattr(adapter, "method_name", type(adapter).__name__)
        raise UsageError(
            f"adapter {name!r} ({method}) cannot be composed: composition needs final-state "
            "adapters (lora-diffusion); weight-lora adapters merge with peft instead"
        )
    if getattr(adapter, "inject_layers", None):
        raise UsageError(
            f"adapter {name!r} injects into base layers {adapter.inject_layers}: only final-state "
            "adapters compose over one shared base forward"
        )


class Composition(OnABase):
    """A frozen base plus named final-state adapters mixed by weights; a ``Denoiser``.

    ``names`` is the adapter order, which is also the column order of every weight tensor.
    """

    def __init__(
        self,
        base: nn.Module,
        adapters: Mapping[str, AdaptedModel] | None = None,
        *,
        base_hash: str | None = None,
    ) -> None:
        super().__init__()
        self.base = base
        self.base_hash = base_hash or base_fingerprint(base)
        self.adapters = nn.ModuleDict()  # keys are slot ids: task names may contain '.'
        self._slots: dict[str, str] = {}  # name -> ModuleDict key, in insertion (= column) order
        self._next_slot = 0
        self.router: nn.Module | None = None
        for p in base.parameters():
            p.requires_grad_(False)
        base.eval()
        for name, adapter in (adapters or {}).items():
            self.add(name, adapter)

    # -- membership
    @property
    def names(self) -> list[str]:
        return list(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, name: object) -> bool:
        return name in self._slots

    def adapter(self, name: str) -> AdaptedModel:
        if name not in self._slots:
            raise UsageError(f"no adapter {name!r} in this composition (have: {', '.join(self.names) or 'none'})")
        return self.adapters[self._slots[name]]

    def add(self, name: str, adapter: AdaptedModel) -> None:
        """Add ``adapter`` as the last weight column. Refuses another base, a duplicate name, an
        adapter that cannot compose, or one whose step count T differs from the others'."""
        if not isinstance(name, str) or not name:
            raise UsageError(f"adapter names must be non-empty strings, got {name!r}")
        if name in self._slots:
            raise UsageError(f"adapter {name!r} is already in this composition")
        _check_composable(name, adapter)
        theirs = getattr(adapter, "base_hash", None)
        if theirs != self.base_hash:
            raise UsageError(
                f"adapter {name!r} was trained on another base (hash {str(theirs)[:12]}), "
                f"not this composition's base (hash {self.base_hash[:12]})"
            )
        if self._slots:
            first = self.adapter(self.names[0]).config
            if adapter.config.num_steps != first.num_steps:
                raise UsageError(
                    f"adapter {name!r} uses T={adapter.config.num_steps} diffusion steps, the "
                    f"others T={first.num_steps}"
                )
        key = f"a{self._next_slot}"
        self._next_slot += 1
        self.adapters[key] = adapter
        self._slots[name] = key
        adapter.train(self.training)

    def remove(self, name: str) -> None:
        """Drop ``name``; the remaining adapters keep their relative order."""
        key = self._slots.pop(name, None)
        if key is None:
            raise UsageError(f"no adapter {name!r} in this composition")
        del self.adapters[key]

    def set_router(self, router: nn.Module | None) -> None:
        """Attach a router (its task order must equal :attr:`names`) for ``weights="auto"``."""
        if router is not None and list(router.tasks) != self.names:
            raise UsageError(
                f"the router's tasks {list(router.tasks)} differ from the composition's "
                f"adapters {self.names} (same names in the same order are needed)"
            )
        self.router = router

    # -- nn.Module
    def train(self, mode: bool = True) -> Composition:
        super().train(mode)
        self.base.eval()  # a fixed feature extractor, as inside each adapter
        return self

    # -- Denoiser attributes: the base's (OnABase), and T
    @property
    def num_steps(self) -> int:
        """T shared by the adapters (the diffusion step count they were trained with)."""
        if not self._slots:
            raise UsageError("this composition has no adapters")
        return self.adapter(self.names[0]).config.num_steps

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.base.head(hidden)

    def blocks(self) -> nn.ModuleList:
        return self.base.blocks()

    def block_parts(self):
        return self.base.block_parts()

    # -- weights
    def phase_of_steps(self, steps: torch.Tensor) -> torch.Tensor:
        """Phase index (B,) of each row's step, by the first adapter's phase plan."""
        return self.adapter(self.names[0])._phase_of_step[steps]

    def resolve_weights(
        self,
        weights: torch.Tensor | str | None,
        batch: int,
        steps: torch.Tensor,
        *,
        encoding: torch.Tensor | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """Weights as a (B, J) fp32 tensor from any accepted form (see the module docstring).

        ``encoding``: Enc(c) (B, d), needed for ``"auto"``."""
        J = len(self._slots)
        if isinstance(weights, str):
            if weights == "uniform":
                weights = None
            elif weights == "auto":
                if self.router is None:
                    raise UsageError("weights='auto' needs a router (set_router)")
                if encoding is None:
                    raise UsageError("weights='auto' needs Enc(c)")
                weights = self.router(encoding)  # (B, J) or (B, P, J)
            else:
                raise UsageError(f"weights must be a tensor, 'auto', 'uniform' or None, got {weights!r}")
        if weights is None:
            return torch.full((batch, J), 1.0 / J, device=device)
        w = torch.as_tensor(weights, device=device)
        if not w.is_floating_point():
            w = w.float()
        if w.ndim == 1:
            w = w.unsqueeze(0).expand(batch, -1)
        elif w.ndim == 3:
            phases = len(self.adapter(self.names[0]).config.phase_names)
            if w.shape[0] != batch or w.shape[1] != phases:
                raise UsageError(
                    f"per-phase weights must be (B={batch}, P={phases}, J={J}), got {tuple(w.shape)}"
                )
            rows = torch.arange(batch, device=w.device)
            w = w[rows, self.phase_of_steps(steps).to(w.device)]
        if w.ndim != 2 or w.shape[0] != batch or w.shape[1] != J:
            raise UsageError(
                f"weights must be (J={J},), (B={batch}, J={J}) or (B, P, J), got {tuple(w.shape)}"
            )
        if not bool(torch.isfinite(w).all()):
            raise UsageError("weights must be finite")
        return w

    # -- forward
    def _base_context(self, device: torch.device):
        """bf16 autocast for the base only when every adapter asked for it (then a single adapter
        sees exactly the base states it sees alone)."""
        from ldp.models.precision import resolve_base_dtype

        dtypes = {resolve_base_dtype(self.adapters[k].config.base_dtype, device) for k in self._slots.values()}
        if dtypes == {"bf16"}:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return nullcontext()

    @property
    def context_blocks(self) -> list[int]:
        """Blocks whose outputs some adapter's Enc(c) reads (see :class:`BaseStates`)."""
        adapters = [self.adapters[key] for key in self._slots.values()]
        return sorted({i for a in adapters for i in getattr(a, "context_blocks", [])})

    def base_states(
        self,
        input_ids: torch.Tensor,
        t: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        steps: torch.Tensor | None = None,
    ) -> BaseStates:
        """The one frozen-base forward of a composed step."""
        from ldp.methods.lora_diffusion.model import run_base

        T = self.num_steps
        steps = resolve_steps(t, steps, T, input_ids.shape[0], device=input_ids.device)
        if t is None:
            t = steps.to(torch.float32) / T
        with torch.no_grad(), self._base_context(input_ids.device):
            hidden, blocks = run_base(self.base, input_ids, t, attention_mask, self.context_blocks)
        return BaseStates(hidden.float(), steps, blocks)

    def encoding(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        instruction_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mean final state over the instruction tokens (B, d): the router's input, and Enc(c)
        of the adapters with ``context: final``."""
        from ldp.methods.lora_diffusion.layer import instruction_encoding

        return instruction_encoding(
            hidden.detach(), instruction_mask, input_ids=input_ids,
            mask_token_id=self.base.mask_token_id, attention_mask=attention_mask,
        )

    def mix(
        self,
        hidden: torch.Tensor,
        steps: torch.Tensor,
        weights: torch.Tensor,
        *,
        input_ids: torch.Tensor,
        instruction_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        encoding: torch.Tensor | None = None,
        block_states: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``H + sum_j w[:, j] * perturbation_j(H)`` for given base states and (B, J) weights.

        Enc(c) is taken once for every adapter that reads the same states: from H (``encoding``
        (B, d) if the caller already has it, as the router's input) and, for adapters with
        ``context: blocks``, from ``block_states`` (:attr:`BaseStates.blocks` of the same pass).

        Adapter ``j`` runs only on the rows where ``w[:, j] != 0``; with ``positions`` (B, L)
        bool, only at those positions (the others keep the base's H), which is what makes a
        composed sampling step cost about one base forward."""
        out = hidden
        # (blocks read, the adapter for attention pooling, else None) -> Enc(c): adapters that
        # pool by the mean over the same blocks share one encoding; a learned query is private.
        encodings: dict[tuple[tuple[int, ...], str | None], torch.Tensor] = {}
        if encoding is not None:
            encodings[(), None] = encoding

        def encoding_for(adapter, name: str) -> torch.Tensor | None:
            if not adapter.config.conditioning:
                return None
            private = name if adapter.context_queries is not None else None
            key = (tuple(adapter.context_blocks), private)
            if key not in encodings:
                encodings[key] = adapter.encode_context(
                    hidden, block_states, instruction_mask, input_ids, attention_mask
                )
            return encodings[key]

        for j, key in enumerate(self._slots.values()):
            adapter = self.adapters[key]
            col = weights[:, j].to(hidden.dtype)
            active = col != 0
            if not bool(active.any()):
                continue
            enc = encoding_for(adapter, key)
            if bool(active.all()):
                delta = adapter.perturbation(
                    hidden, steps, input_ids=input_ids, instruction_mask=instruction_mask,
                    attention_mask=attention_mask, positions=positions, encoding=enc,
                )
                out = out + col.view(-1, 1, 1) * delta
                continue
            rows = active.nonzero(as_tuple=True)[0]
            part = adapter.perturbation(
                hidden[rows], steps[rows], input_ids=input_ids[rows],
                instruction_mask=None if instruction_mask is None else instruction_mask[rows],
                attention_mask=None if attention_mask is None else attention_mask[rows],
                positions=None if positions is None else positions[rows],
                encoding=None if enc is None else enc[rows],
            )
            out = out.index_add(0, rows, col[rows].view(-1, 1, 1) * part)
        return out

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        t: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        steps: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        weights: torch.Tensor | str | None = None,
    ) -> torch.Tensor:
        """Composed final states H' (B, L, d) fp32; ``weights`` as in :meth:`resolve_weights`."""
        if not self._slots:
            raise UsageError("this composition has no adapters")
        hidden, steps, blocks = self.base_states(input_ids, t, attention_mask, steps=steps)
        enc = None
        if isinstance(weights, str) and weights == "auto":
            enc = self.encoding(hidden, input_ids, instruction_mask, attention_mask)
        w = self.resolve_weights(weights, input_ids.shape[0], steps, encoding=enc, device=hidden.device)
        return self.mix(
            hidden, steps, w, input_ids=input_ids, instruction_mask=instruction_mask,
            attention_mask=attention_mask, encoding=enc, block_states=blocks,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        t: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        steps: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        weights: torch.Tensor | str | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, V) = head(hidden_states(...))."""
        hidden = self.hidden_states(
            input_ids, t, attention_mask, steps=steps, instruction_mask=instruction_mask,
            weights=weights,
        )
        return self.head(hidden)


def weights_from_mapping(names: list[str], mix: Mapping[str, float]) -> torch.Tensor:
    """A (J,) weight vector in ``names`` order from ``{name: weight}`` (absent names get 0)."""
    unknown = sorted(set(mix) - set(names))
    if unknown:
        raise UsageError(f"unknown adapter(s) in the mix: {', '.join(unknown)} (have: {', '.join(names)})")
    values = []
    for name in names:
        value = mix.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise UsageError(f"weight of {name!r} must be a number, got {value!r}")
        values.append(float(value))
    return torch.tensor(values, dtype=torch.float32)


def load_composition(
    base: nn.Module,
    adapter_folders: Mapping[str, str | Path],
    base_hash: str | None = None,
) -> Composition:
    """Load every adapter folder onto ``base`` (one shared object) and compose them in order.

    A folder trained on another base is refused with a one-line :class:`UsageError`, before any
    weights are read."""
    from ldp.methods import load_adapter
    from ldp.methods.base import read_adapter_config

    if not adapter_folders:
        raise UsageError("a composition needs at least one adapter")
    base_hash = base_hash or base_fingerprint(base)
    for name, folder in adapter_folders.items():  # check all before loading any
        meta = read_adapter_config(folder)
        if meta.get("base_hash") != base_hash:
            raise UsageError(
                f"adapter {name!r} ({folder}) was trained on base "
                f"{meta.get('base_model_name_or_path')!r} (hash {str(meta.get('base_hash'))[:12]}), "
                f"not on this base (hash {base_hash[:12]}); adapters of a mix must share one base"
            )
    adapters = {
        name: load_adapter(base, folder, base_hash=base_hash)
        for name, folder in adapter_folders.items()
    }
    return Composition(base, adapters, base_hash=base_hash)

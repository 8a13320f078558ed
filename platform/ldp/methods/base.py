"""The one interface every adaptation method implements (one config, one ``attach``; see docs/METHOD.md).

A method is selected by name (:func:`ldp.methods.get_method`) and is a :class:`Method`: a typed
config dataclass plus ``attach(base, config) -> AdaptedModel``. An :class:`AdaptedModel` is an
``nn.Module`` that itself satisfies the :class:`~ldp.models.denoiser.Denoiser` protocol, so the
diffusion loss and sampler use it unchanged, and additionally takes keyword-only context:

- ``steps``: LongTensor (B,) with the integer diffusion step in ``1..T`` (or None: derived from
  ``t`` as ``ceil(t * T)``, see :func:`resolve_steps`);
- ``instruction_mask``: BoolTensor (B, L), True on the conditioning tokens ``c`` (the prompt:
  instruction + input), or None.

Methods that do not use the step or the instruction accept and ignore them; they pass ``t``
through to the base unchanged (so a time-conditioned base needs ``t``, not only ``steps``).

Artifacts (the registry's adapter layout): ``save_adapter(folder, base_name=..., base_hash=...)`` writes peft's file
names, ``adapter_config.json`` (our own ``peft_type``, the method name, its config, the base's
name and hash) and ``adapter_model.safetensors`` with the adapter's own tensors only. Never
pickles. :func:`ldp.methods.load_adapter` refuses a base whose :func:`base_fingerprint` differs
from the recorded one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ldp.config import build, to_dict
from ldp.errors import IntegrityError, LdpError, UsageError
from ldp.models.denoiser import DenoiserAttributes, parameter_count

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "AdaptedModel",
    "Method",
    "OnABase",
    "base_fingerprint",
    "copy_into",
    "module_paths",
    "parameter_count",
    "read_adapter_config",
    "resolve_steps",
]

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- fingerprint


def base_fingerprint(base: nn.Module) -> str:
    """sha256 (hex) over the base's ``state_dict``: every entry's name, dtype, shape and bytes.

    Entries are visited in sorted name order, so the hash does not depend on module registration
    order, device or process. Tied weights appear under each of their names. Cost: one pass over
    every byte of the weights (hashlib runs at roughly 1-2 GB/s on one core: milliseconds for
    ``tiny``, ~3-5 s for ``1.3b`` in fp32); tensors on another device are copied to the CPU one at
    a time. Tensors on the ``meta`` device have no bytes: only their name, dtype and shape enter
    the hash (which is then marked ``meta``), so a meta base never matches a materialised one.
    """
    digest = hashlib.sha256()
    digest.update(f"ldp-base-fingerprint-v{FORMAT_VERSION}\n".encode())
    state = base.state_dict(keep_vars=False)
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):  # extra_state objects
            continue
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        if tensor.device.type == "meta":
            digest.update(b"meta\n")
            continue
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


# --------------------------------------------------------------------------- step context


def resolve_steps(
    t: torch.Tensor | None,
    steps: torch.Tensor | None,
    num_steps: int,
    batch_size: int,
    device: torch.device | None = None,
) -> torch.Tensor:
    """The integer diffusion step (B,) in ``1..T`` from ``steps`` or, failing that, ``t``.

    ``steps`` wins when given (a scalar is broadcast). Otherwise ``t`` (normalised time ``k / T``
    or any float in [0, 1]) maps to ``ceil(t * T - 1e-3)`` clamped to ``[1, T]``: exactly ``k``
    for ``t = k / T`` despite float rounding, and ``k`` for continuous ``t`` in ``((k-1)/T, k/T]``.
    """
    if steps is not None:
        steps = torch.as_tensor(steps, device=device)
        if steps.is_floating_point():
            raise UsageError("steps must be an integer tensor (the diffusion step 1..T)")
        steps = steps.long().reshape(-1)
        if steps.numel() == 1 and batch_size != 1:
            steps = steps.expand(batch_size)
        if steps.numel() != batch_size:
            raise UsageError(f"steps has {steps.numel()} entries for a batch of {batch_size}")
        lo, hi = int(steps.min()), int(steps.max())
        if lo < 1 or hi > num_steps:
            raise UsageError(f"steps must lie in 1..{num_steps}, got values in {lo}..{hi}")
        return steps
    if t is None:
        raise UsageError("this adapter needs the diffusion step: pass t (in [0, 1]) or steps")
    t = torch.as_tensor(t, device=device, dtype=torch.float64).reshape(-1)
    if t.numel() == 1 and batch_size != 1:
        t = t.expand(batch_size)
    if t.numel() != batch_size:
        raise UsageError(f"t has {t.numel()} entries for a batch of {batch_size}")
    return torch.ceil(t * num_steps - 1e-3).clamp(1, num_steps).long()


# --------------------------------------------------------------------------- helpers


def module_paths(root: nn.Module) -> dict[int, str]:
    """``id(module) -> qualified name`` for every submodule of ``root`` ("" for root itself)."""
    return {id(m): name for name, m in root.named_modules(remove_duplicate=False)}



def copy_into(live: dict[str, torch.Tensor], state: dict[str, torch.Tensor], *, what: str) -> None:
    """Copy ``state`` into the ``live`` tensors in place; key sets and shapes must match exactly."""
    missing = sorted(set(live) - set(state))
    unexpected = sorted(set(state) - set(live))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        raise IntegrityError(f"{what}: adapter weights do not fit this model: {', '.join(detail)}")
    with torch.no_grad():
        for name, target in live.items():
            source = state[name]
            if tuple(source.shape) != tuple(target.shape):
                raise IntegrityError(
                    f"{what}: {name!r} has shape {tuple(source.shape)}, "
                    f"the model expects {tuple(target.shape)}"
                )
            target.copy_(source.to(device=target.device, dtype=target.dtype))


def _to_safetensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; tied (storage-sharing) entries become separate copies."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of an adapter folder (UsageError when absent/invalid)."""
    path = Path(folder) / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise UsageError(f"{folder}: not an adapter folder (no {ADAPTER_CONFIG_NAME})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict) or "ldp_method" not in meta:
        raise UsageError(f"{path}: not an LDP adapter config (no 'ldp_method' key)")
    return meta


# --------------------------------------------------------------------------- the model


class OnABase(DenoiserAttributes, nn.Module):
    """A module wrapping a base denoiser ``self.base``: the Denoiser attributes are the base's."""

    base: nn.Module

    def _attribute_source(self) -> nn.Module:
        return self.base


class AdaptedModel(OnABase):
    """A base denoiser plus one method's adapter; satisfies the ``Denoiser`` protocol.

    Subclasses implement :meth:`hidden_states`, :meth:`trainable_parameters` and
    :meth:`_adapter_tensors` (the live tensors that make up the adapter, by saved name); the
    rest (``forward``, ``head``, the Denoiser attributes, state-dict I/O, saving) lives here.
    ``attach`` mutates the base in place (``requires_grad`` flags, hooks, injected layers), as
    peft does; the adapted model owns it as ``self.base``.
    """

    method_name: ClassVar[str] = ""
    peft_type: ClassVar[str] = ""

    def __init__(self, base: nn.Module, config: Any, *, base_hash: str) -> None:
        super().__init__()
        self.base = base
        self.config = config
        self.base_hash = base_hash

    # -- Denoiser methods
    def hidden_states(
        self,
        input_ids: torch.Tensor,
        t: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        steps: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states H' (B, L, d) of the adapted model.

        Methods that change the base's own modules (weight-lora, prefix, adapters, bitfit, full)
        act inside this call; methods that perturb H itself (lora-diffusion) override it.
        ``positions`` (B, L) bool is a hint: the caller reads H' only there, and a method may
        skip work elsewhere (lora-diffusion does); the methods here ignore it."""
        return self.base.hidden_states(input_ids, t, attention_mask)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The base's output head: (..., d) -> (..., V)."""
        return self.base.head(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        t: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        steps: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, V) = head(hidden_states(...))."""
        hidden = self.hidden_states(
            input_ids, t, attention_mask, steps=steps, instruction_mask=instruction_mask
        )
        return self.head(hidden)

    def blocks(self) -> nn.ModuleList:
        return self.base.blocks()

    def block_parts(self):
        return self.base.block_parts()

    def merge_for_inference(self) -> AdaptedModel:
        """Make inference cheaper without changing its results (up to float rounding); returns
        self. Most methods have nothing to fold; weight LoRA folds its updates into the base's
        layers. Called on models loaded for evaluation, never on one being trained."""
        return self

    # -- the adapter's own weights
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters this method trains, asked of its own modules (never by name)."""
        raise NotImplementedError

    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        """:meth:`trainable_parameters` keyed by their qualified names in this model (for
        checkpoints and logs; the selection itself is never made by name)."""
        names = {id(p): n for n, p in self.named_parameters()}
        return {names[id(p)]: p for p in self.trainable_parameters()}

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        """Live tensors of the adapter keyed by their saved names."""
        raise NotImplementedError

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter's own weights only (detached, sharing storage with the live ones)."""
        return {name: t.detach() for name, t in self._adapter_tensors().items()}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy adapter weights in place; the key set and shapes must match exactly."""
        copy_into(self._adapter_tensors(), state, what=self.method_name)

    def parameter_counts(self) -> dict[str, float]:
        """``trainable``, ``total`` (base + adapter, tied counted once) and ``percent``."""
        trainable = parameter_count(self.trainable_parameters())
        total = parameter_count(self.parameters())
        return {
            "trainable": trainable,
            "total": total,
            "percent": 100.0 * trainable / max(total, 1),
        }

    # -- artifacts
    def adapter_config(self, *, base_name: str, base_hash: str | None = None) -> dict[str, Any]:
        """The JSON written as ``adapter_config.json``."""
        from ldp import __version__

        return {
            "peft_type": self.peft_type,
            "task_type": None,
            "base_model_name_or_path": base_name,
            "base_hash": base_hash or self.base_hash,
            "ldp_method": self.method_name,
            "ldp_config": to_dict(self.config),
            "ldp_format": FORMAT_VERSION,
            "ldp_version": __version__,
        }

    def save_adapter(
        self, folder: str | Path, *, base_name: str, base_hash: str | None = None
    ) -> Path:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` into ``folder``.

        ``base_hash`` defaults to the fingerprint taken when the adapter was attached.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            _to_safetensors(self.adapter_state_dict()),
            str(folder / ADAPTER_WEIGHTS_NAME),
            metadata={"format": "pt", "ldp_method": self.method_name},
        )
        meta = self.adapter_config(base_name=base_name, base_hash=base_hash)
        (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return folder


# --------------------------------------------------------------------------- the method record


def _load_generic(method: Method, base: nn.Module, folder: Path, meta: dict, base_hash: str):
    """Attach ``method`` with the saved config and copy the saved adapter weights in."""
    model = method.attach(base, method.build_config(method.saved_config(meta)), base_hash=base_hash)
    weights = folder / ADAPTER_WEIGHTS_NAME
    if not weights.is_file():
        raise LdpError(f"{folder}: no {ADAPTER_WEIGHTS_NAME}")
    model.load_adapter_state_dict(load_file(str(weights)))
    return model


@dataclass(frozen=True)
class Method:
    """One adaptation method: its name, peft_type, typed config and ``attach``."""

    name: str
    """The ``--method`` name, e.g. ``lora-diffusion``."""
    peft_type: str
    """The ``peft_type`` written into ``adapter_config.json``."""
    config_cls: type
    """Typed config dataclass (build it with :meth:`build_config` / ``ldp.config.build``)."""
    attach_fn: Callable[..., AdaptedModel]
    """``attach_fn(base, config, *, base_hash) -> AdaptedModel``."""
    load_fn: Callable[..., AdaptedModel] | None = None
    """Optional custom loader ``(method, base, folder, meta, base_hash)`` (weight-lora: peft)."""
    default_lr: float = 1e-3
    """The peak learning rate a job uses unless told otherwise (``optim.lr``): methods differ
    by an order of magnitude (full fine-tuning diverges from the task at the adapters' 1e-3), so
    ``--method M`` alone must give a fair baseline. Where each value comes from is written
    beside it in the method's ``__init__``."""
    legacy_defaults: dict[str, Any] = field(default_factory=dict)
    """Config fields added after adapters were already being saved, with the value that gives
    those adapters' behaviour (their saved config lacks the key; today's default may differ)."""

    def build_config(self, data: dict[str, Any] | None = None) -> Any:
        """The method's config from a plain dict (unknown keys / bad values -> UsageError)."""
        return build(self.config_cls, data)

    def saved_config(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Every field of the config an adapter was trained with, from its ``adapter_config.json``
        (``meta``): the saved ``ldp_config``, with :attr:`legacy_defaults` for keys it predates."""
        return to_dict(self.build_config({**self.legacy_defaults, **(meta.get("ldp_config") or {})}))

    def attach(
        self, base: nn.Module, config: Any = None, *, base_hash: str | None = None
    ) -> AdaptedModel:
        """Attach a fresh adapter to ``base`` (mutated in place) and return the adapted model.

        ``config``: an instance of :attr:`config_cls`, a dict, or None (defaults).
        ``base_hash``: the base's :func:`base_fingerprint` if already known (else computed now,
        before the base is modified).
        """
        if config is None or isinstance(config, dict):
            config = self.build_config(config)
        if not isinstance(config, self.config_cls):
            raise UsageError(
                f"method {self.name!r} expects a {self.config_cls.__name__}, "
                f"got {type(config).__name__}"
            )
        if base_hash is None:
            base_hash = base_fingerprint(base)
        return self.attach_fn(base, config, base_hash=base_hash)

    def load(self, base: nn.Module, folder: Path, meta: dict, base_hash: str) -> AdaptedModel:
        fn = self.load_fn or _load_generic
        return fn(self, base, folder, meta, base_hash)


def floor_cutoff(num_steps: int, fraction: float) -> int:
    """``floor(T * fraction)`` robust to float rounding (2/3 * 30 -> 20, not 19)."""
    return math.floor(num_steps * fraction + 1e-9)

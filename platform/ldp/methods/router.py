"""The router over task adapters (paper Eqs. 21-22): ``w = softmax(MLP(Enc(c)))``.

``Enc(c)`` is the mean frozen-base state over the instruction tokens (the same encoding the
adapters' FiLM conditioning uses), so the router needs no model of its own. The MLP has two
layers (``d -> hidden -> J``, 512 hidden by default) over the ``J`` tasks of a bundle; the input
is standardised per feature with statistics of the training prompts (saved with the router), so
one learning rate suits bases whose hidden states have very different scales.

``per_phase`` (beyond the paper): the last layer emits one weight vector per denoising phase
(early / middle / late), ``(B, P, J)``; :class:`~ldp.methods.compose.Composition` then uses, at
each step, the vector of that step's phase.

Saved as ``router_config.json`` (task order, base hash, sizes) + ``router.safetensors``; loading
refuses another base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from ldp.errors import IntegrityError, UsageError

__all__ = [
    "ROUTER_CONFIG_NAME",
    "ROUTER_WEIGHTS_NAME",
    "Router",
    "load_router",
    "read_router_config",
    "task_id_loss",
]

ROUTER_CONFIG_NAME = "router_config.json"
ROUTER_WEIGHTS_NAME = "router.safetensors"
FORMAT_VERSION = 1


class Router(nn.Module):
    """``Enc(c) (B, d) -> weights (B, J)``, or ``(B, P, J)`` with ``phases`` set."""

    def __init__(
        self,
        tasks: list[str],
        input_dim: int,
        *,
        hidden: int = 512,
        phases: list[str] | None = None,
        base_hash: str = "",
    ) -> None:
        super().__init__()
        if not tasks or len(set(tasks)) != len(tasks):
            raise UsageError(f"a router needs distinct task names, got {tasks}")
        if input_dim < 1 or hidden < 1:
            raise UsageError("router input_dim and hidden must be >= 1")
        self.tasks = list(tasks)
        self.phases = list(phases) if phases else None
        self.input_dim, self.hidden = int(input_dim), int(hidden)
        self.base_hash = base_hash
        outputs = len(self.tasks) * (len(self.phases) if self.phases else 1)
        # Per-feature standardisation of Enc(c), fitted on training prompts (fit_input_stats):
        # the task signal lives in small differences between mean-pooled states.
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_scale", torch.ones(input_dim))
        self.fc1 = nn.Linear(input_dim, hidden)
        self.fc2 = nn.Linear(hidden, outputs)

    @property
    def per_phase(self) -> bool:
        return self.phases is not None

    @torch.no_grad()
    def fit_input_stats(self, encodings: torch.Tensor) -> None:
        """Set the input standardisation from sample encodings (N, d) of the training prompts."""
        encodings = encodings.float()
        self.input_mean.copy_(encodings.mean(0))
        self.input_scale.copy_(encodings.std(0).clamp_min(1e-6) if len(encodings) > 1 else torch.ones_like(self.input_scale))

    def logits(self, encoding: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores (B, J) or (B, P, J)."""
        x = (encoding.float() - self.input_mean) / self.input_scale
        z = self.fc2(F.gelu(self.fc1(x)))
        if self.phases:
            return z.view(z.shape[0], len(self.phases), len(self.tasks))
        return z

    def forward(self, encoding: torch.Tensor) -> torch.Tensor:
        """Weights: softmax over the tasks, (B, J) or (B, P, J)."""
        return self.logits(encoding).softmax(dim=-1)

    def task_scores(self, encoding: torch.Tensor) -> torch.Tensor:
        """(B, J) log-weights for identifying the task (mean over phases when per phase)."""
        logp = self.logits(encoding).log_softmax(dim=-1)
        return logp.mean(dim=1) if self.phases else logp

    # -- artifacts
    def config_dict(self, *, base_name: str = "") -> dict[str, Any]:
        from ldp import __version__

        return {
            "ldp_kind": "router",
            "tasks": self.tasks,
            "input_dim": self.input_dim,
            "hidden": self.hidden,
            "phases": self.phases,
            "base_model_name_or_path": base_name,
            "base_hash": self.base_hash,
            "ldp_format": FORMAT_VERSION,
            "ldp_version": __version__,
        }

    def save(self, folder: str | Path, *, base_name: str = "", extra: dict | None = None) -> Path:
        """Write ``router_config.json`` (+ ``extra`` keys) and ``router.safetensors``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / ROUTER_WEIGHTS_NAME), metadata={"format": "pt", "ldp_kind": "router"})
        meta = {**(extra or {}), **self.config_dict(base_name=base_name)}
        (folder / ROUTER_CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return folder


def task_id_loss(router: Router, encoding: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
    """``-log w_task`` averaged over the batch (and over the phases of a per-phase router)."""
    logp = router.logits(encoding).log_softmax(dim=-1)
    if router.per_phase:
        idx = task_index.view(-1, 1, 1).expand(-1, logp.shape[1], 1)
        return -logp.gather(-1, idx).mean()
    return F.nll_loss(logp, task_index)


def read_router_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / ROUTER_CONFIG_NAME
    if not path.is_file():
        raise UsageError(f"{folder}: not a router folder (no {ROUTER_CONFIG_NAME})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict) or meta.get("ldp_kind") != "router":
        raise UsageError(f"{path}: not an LDP router config")
    return meta


def load_router(folder: str | Path, *, base_hash: str | None = None) -> Router:
    """The router saved in ``folder``; refuses a base whose fingerprint differs (when given)."""
    folder = Path(folder)
    meta = read_router_config(folder)
    if base_hash is not None and meta.get("base_hash") != base_hash:
        raise UsageError(
            f"router {folder} was trained on base {meta.get('base_model_name_or_path')!r} "
            f"(hash {str(meta.get('base_hash'))[:12]}), not on this base (hash {base_hash[:12]})"
        )
    router = Router(
        list(meta["tasks"]), int(meta["input_dim"]), hidden=int(meta["hidden"]),
        phases=meta.get("phases"), base_hash=str(meta.get("base_hash") or ""),
    )
    weights = folder / ROUTER_WEIGHTS_NAME
    if not weights.is_file():
        raise IntegrityError(f"{folder}: no {ROUTER_WEIGHTS_NAME}")
    state = load_file(str(weights))
    missing = set(router.state_dict()) ^ set(state)
    if missing:
        raise IntegrityError(f"{weights}: tensors do not fit the router config ({sorted(missing)[0]!r})")
    try:
        router.load_state_dict(state)
    except RuntimeError as exc:  # shape mismatch: a config edited by hand, or a damaged file
        raise IntegrityError(f"{weights}: tensors do not fit the router config ({str(exc).splitlines()[-1].strip()})") from None
    return router.eval()

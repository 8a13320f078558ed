"""Recipe: train the router over frozen task adapters (paper Eqs. 21-23).

Data: a mixture of every task's training examples (``train_limit`` per task, so each task weighs
the same), each row tagged with its task index. Loss per batch::

    task_weight * -log w_task  +  denoise_weight * L_diffusion(composed model)

where the composed model is ``H + sum_j w_j perturbation_j(H)`` with ``w = router(Enc(c))`` and
``Enc(c)`` taken from the same frozen-base states (one base forward per step). By default the
adapters stay frozen and only the router trains; with ``train_adapters`` the adapters are
fine-tuned jointly at their own small learning rate (``adapter_lr``) and exported beside the
router (``adapters/<task>/``) to be published as new adapter versions. Every row keeps its own
task's answer shape (the task's generation length, EOS padded), as its adapter was trained.

The same ``build``/``export`` pair runs in one process (:func:`ldp.jobs.recipe.train_locally`)
and in Ray Train workers (``ldp.jobs.runner``); the artifact is a router folder
(:meth:`ldp.methods.router.Router.save`) that also records the adapters it routes over.
"""

from __future__ import annotations

import json
from itertools import zip_longest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldp.config import build as build_config
from ldp.config import to_dict
from ldp.diffusion import DiffusionConfig, training_loss
from ldp.errors import UsageError
from ldp.training.loader import ResumableLoader
from ldp.training.optim import OptimConfig
from ldp.training.trainer import LoopConfig

__all__ = ["RouterConfig", "RoutedModel", "MixedTaskCollator", "TUNED_ADAPTERS_DIR", "validate", "build", "export",
           "load_parts"]

TUNED_ADAPTERS_DIR = "adapters"
"""Subfolder of the exported router folder holding the jointly fine-tuned adapters, one per task."""


@dataclass
class RouterConfig:
    tasks: list[str] = field(default_factory=list)
    """The bundle's tasks, in weight-column order."""
    adapters: dict[str, str] = field(default_factory=dict)
    """Task -> adapter (registry reference ``adapters/T/M@V`` or folder); one per task."""
    base: str = "bases/tiny@latest"
    """The frozen base every adapter was trained on (registry reference or folder)."""
    registry: str | None = None
    data_dir: str | None = None
    hidden: int = 512
    """Hidden width of the router's two-layer MLP."""
    per_phase: bool = False
    """One weight vector per denoising phase (early/middle/late) instead of one per request."""
    task_weight: float = 1.0
    """Weight of the task-identification loss ``-log w_task``."""
    denoise_weight: float = 1.0
    """Weight of the composed model's denoising loss (Eq. 23)."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(max_steps=200, batch_size=16))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-3, warmup_steps=10))
    train_limit: int | None = 256
    """Training examples per task."""
    val_limit: int | None = 16
    """Validation examples per task (validation loss and task accuracy)."""
    max_prompt_len: int | None = None
    """Prompt token budget (default: each task's)."""
    train_adapters: bool = False
    """Fine-tune the adapters jointly with the router (exported as new adapter folders)."""
    adapter_lr: float = 1e-4
    """Peak learning rate of the adapters when ``train_adapters`` (the router uses ``optim.lr``)."""

    def __post_init__(self) -> None:
        from ldp.data.tasks import get_task

        if not self.tasks:
            raise ValueError("router.tasks must name at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"router.tasks has duplicates: {self.tasks}")
        for task in self.tasks:
            get_task(task)
        if set(self.adapters) != set(self.tasks):
            missing = sorted(set(self.tasks) - set(self.adapters))
            extra = sorted(set(self.adapters) - set(self.tasks))
            raise ValueError(
                f"router.adapters must give one adapter per task (missing: {missing or '-'}, "
                f"unknown: {extra or '-'})"
            )
        if self.hidden < 1:
            raise ValueError("router.hidden must be >= 1")
        if not 0 < self.adapter_lr < float("inf"):
            raise ValueError(f"adapter_lr must be a positive finite number, got {self.adapter_lr}")
        if self.task_weight < 0 or self.denoise_weight < 0 or self.task_weight + self.denoise_weight == 0:
            raise ValueError("task_weight and denoise_weight must be >= 0 and not both 0")
        for name in ("train_limit", "val_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")


def validate(config: dict[str, Any]) -> RouterConfig:
    return build_config(RouterConfig, config)


class RoutedModel(nn.Module):
    """A :class:`~ldp.methods.compose.Composition` whose weights come from its router."""

    def __init__(self, composition, router) -> None:
        super().__init__()
        self.composition = composition
        self.router = router

    def train(self, mode: bool = True) -> RoutedModel:
        super().train(mode)
        # The base and the adapters run as at inference (no dropout), also when the adapters'
        # weights are being fine-tuned (train_adapters): only their parameters change.
        self.composition.train(False)
        return self

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """Every adapter's trainable parameters keyed by their names in this model."""
        names = {id(p): n for n, p in self.named_parameters()}
        out = {}
        for task in self.composition.names:
            for p in self.composition.adapter(task).trainable_parameters():
                out[names[id(p)]] = p
        return out

    def routed_hidden(self, x_t, t_norm, attention_mask, instruction_mask):
        """``(H' (B, L, d), Enc(c) (B, d))`` of one composed step weighted by the router."""
        comp = self.composition
        hidden, steps, blocks = comp.base_states(x_t, t_norm, attention_mask)
        enc = comp.encoding(hidden, x_t, instruction_mask, attention_mask)
        weights = comp.resolve_weights(self.router(enc), x_t.shape[0], steps)
        mixed = comp.mix(hidden, steps, weights, input_ids=x_t, instruction_mask=instruction_mask,
                         attention_mask=attention_mask, encoding=enc, block_states=blocks)
        return mixed, enc


class MixedTaskCollator:
    """Rows of different tasks in one batch: prompt, then the row's task answer length (target +
    EOS), then unattended ``pad`` filler; plus ``task_index`` (B,)."""

    def __init__(self, eos_id: int, pad_id: int, answer_lengths: list[int]) -> None:
        self.eos_id, self.pad_id, self.answer_lengths = int(eos_id), int(pad_id), answer_lengths

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lens = [self.answer_lengths[r["task_index"]] for r in rows]
        width = max(len(r["prompt_ids"]) + a for r, a in zip(rows, lens))
        B = len(rows)
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        response = torch.zeros((B, width), dtype=torch.bool)
        attention = torch.zeros((B, width), dtype=torch.long)
        prompt = torch.zeros((B, width), dtype=torch.bool)
        instruction = torch.zeros((B, width), dtype=torch.bool)
        for i, (r, A) in enumerate(zip(rows, lens)):
            p = list(r["prompt_ids"])
            answer = (list(r["target_ids"])[:A] + [self.eos_id] * A)[:A]
            n = len(p)
            ids[i, : n + A] = torch.tensor(p + answer, dtype=torch.long)
            prompt[i, :n] = True
            response[i, n : n + A] = True
            attention[i, : n + A] = 1
            imask = r.get("instruction_mask")
            instruction[i, :n] = True if imask is None else torch.tensor(list(imask), dtype=torch.bool)
        return {
            "input_ids": ids, "response_mask": response, "prompt_mask": prompt,
            "instruction_mask": instruction, "attention_mask": attention,
            "task_index": torch.tensor([r["task_index"] for r in rows], dtype=torch.long),
        }


def _adapter_folder(ref: str, registry: str | None) -> tuple[Path, str]:
    if ref.startswith("adapters/"):
        from ldp.store import Registry

        reg = Registry(registry)
        concrete = reg.resolve(ref)
        return Path(reg.pull(concrete)), str(concrete)
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        raise UsageError(f"adapter {ref!r} is neither a registry reference nor a folder")
    return folder.resolve(), str(folder.resolve())


def load_parts(cfg: RouterConfig):
    """``(composition, tokenizer, base source, adapter refs)``: the base and every adapter."""
    from ldp.bases import resolve_base
    from ldp.methods import base_fingerprint
    from ldp.methods.compose import load_composition
    from ldp.models.loading import load_base

    source = resolve_base(cfg.base, cfg.registry)
    base, tokenizer = load_base(source.folder)
    base_hash = base_fingerprint(base)
    folders, refs = {}, {}
    for task in cfg.tasks:
        folders[task], refs[task] = _adapter_folder(cfg.adapters[task], cfg.registry)
    comp = load_composition(base, folders, base_hash=base_hash)
    for p in comp.parameters():
        p.requires_grad_(False)
    if comp.num_steps != cfg.diffusion.num_steps:
        raise UsageError(f"the adapters use T={comp.num_steps}, diffusion.num_steps is {cfg.diffusion.num_steps}")
    return comp, tokenizer, source, refs


def _rows(cfg: RouterConfig, tokenizer: Any, split: str, limit: int | None) -> list[dict[str, Any]]:
    from ldp.data.collate import build_sft_dataset

    rows = []
    for index, task in enumerate(cfg.tasks):
        ds = build_sft_dataset(task, split, tokenizer, cfg.data_dir, limit=limit,
                               max_prompt_len=cfg.max_prompt_len)
        for r in ds:
            rows.append({"prompt_ids": r["prompt_ids"], "target_ids": r["target_ids"],
                         "instruction_mask": r["instruction_mask"], "task_index": index})
    return rows


@torch.no_grad()
def _sample_encodings(comp, collate, rows: list[dict[str, Any]], n: int = 512, batch: int = 32) -> torch.Tensor:
    """Enc(c) (N, d) of up to ``n`` training prompts (spread over the tasks) with the answer fully
    masked at t = T, for the router's input standardisation (deterministic: same on every rank)."""
    step = max(1, len(rows) // n)
    picked = rows[::step][:n]
    out = []
    for i in range(0, len(picked), batch):
        b = collate(picked[i : i + batch])
        ids = b["input_ids"].masked_fill(b["response_mask"], comp.mask_token_id)
        steps = torch.full((ids.shape[0],), comp.num_steps)
        hidden = comp.base_states(ids, attention_mask=b["attention_mask"], steps=steps).hidden
        out.append(comp.encoding(hidden, ids, b["instruction_mask"], b["attention_mask"]))
    return torch.cat(out)


def make_loss_fn(cfg: RouterConfig):
    def loss_fn(model, batch, generator):
        inner: RoutedModel = getattr(model, "module", model)
        instruction = batch["instruction_mask"]
        seen: dict[str, torch.Tensor] = {}

        def hidden_fn(x_t, t_norm, attention_mask):
            mixed, enc = inner.routed_hidden(x_t, t_norm, attention_mask, instruction)
            seen["enc"] = enc
            return mixed

        denoise, stats = training_loss(inner.composition, batch, cfg.diffusion, generator=generator,
                                       hidden_fn=hidden_fn)
        from ldp.methods.router import task_id_loss

        task = batch["task_index"]
        tid = task_id_loss(inner.router, seen["enc"], task)
        with torch.no_grad():
            acc = (inner.router.task_scores(seen["enc"]).argmax(-1) == task).float().mean()
        stats = {**stats, "denoise": float(denoise.detach()), "task_nll": float(tid.detach()),
                 "task_acc": float(acc)}
        return cfg.denoise_weight * denoise + cfg.task_weight * tid, stats

    return loss_fn


def build(config: dict[str, Any], rank: int, world_size: int):
    """The recipe's ``build`` (see ``ldp.jobs.recipe``)."""
    from ldp.data.collate import eos_token_id
    from ldp.data.tasks import get_task
    from ldp.jobs.recipe import Built
    from ldp.methods.router import Router

    cfg = validate(config)
    comp, tokenizer, source, refs = load_parts(cfg)
    torch.manual_seed(cfg.loop.seed)  # the same router init on every rank
    phases = comp.adapter(comp.names[0]).config.phase_names if cfg.per_phase else None
    router = Router(cfg.tasks, comp.hidden_size, hidden=cfg.hidden, phases=phases, base_hash=comp.base_hash)
    model = RoutedModel(comp, router)
    collate = MixedTaskCollator(
        eos_token_id(tokenizer), tokenizer.pad_token_id,
        [get_task(t).max_new_tokens for t in cfg.tasks],
    )
    train = _rows(cfg, tokenizer, "train", cfg.train_limit)
    val = _rows(cfg, tokenizer, "validation", cfg.val_limit)
    router.fit_input_stats(_sample_encodings(comp, collate, train))
    named = {f"router.{n}": p for n, p in router.named_parameters()}
    if cfg.train_adapters:
        from ldp.training.optim import set_lr_scale

        tuned = model.adapter_parameters()
        for p in tuned.values():
            p.requires_grad_(True)
        # One optimiser, two rates: the router at optim.lr, the adapters at adapter_lr.
        set_lr_scale(tuned.values(), cfg.adapter_lr / (cfg.optim.lr or cfg.adapter_lr))
        named.update(tuned)
    loader = ResumableLoader(train, cfg.loop.batch_size, collate, seed=cfg.loop.seed, rank=rank,
                             world_size=world_size)
    # Round-robin over the tasks so that every validation batch holds several of them.
    by_task = [[r for r in val if r["task_index"] == j] for j in range(len(cfg.tasks))]
    val = [r for group in zip_longest(*by_task) for r in group if r is not None]
    val_batches = [collate(val[i : i + cfg.loop.batch_size]) for i in range(0, len(val), cfg.loop.batch_size)]
    return Built(
        model=model,
        named_trainable=named,
        loss_fn=make_loss_fn(cfg),
        train_loader=loader,
        loop=cfg.loop,
        optim=cfg.optim,
        val_batches=lambda: val_batches,
        extra={"cfg": cfg, "tokenizer": tokenizer, "source": source, "refs": refs},
    )


def export(built, trainable_state: dict[str, torch.Tensor], folder: Path) -> None:
    """Write the router folder from the gathered router weights."""
    model: RoutedModel = built.model
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name in built.named_trainable:
            if name not in trainable_state:
                raise UsageError(f"gathered state lacks {name!r}")
            value = trainable_state[name]
            named[name].copy_(value.reshape(named[name].shape).to(named[name].dtype))
    cfg: RouterConfig = built.extra["cfg"]
    source = built.extra["source"]
    folder = Path(folder)
    model.router.save(folder, base_name=source.ref, extra={"adapters": built.extra["refs"]})
    if cfg.train_adapters:
        for task in cfg.tasks:
            model.composition.adapter(task).save_adapter(folder / TUNED_ADAPTERS_DIR / task, base_name=source.ref)
    (folder / "job_config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    if source.digest:
        (folder / "base.json").write_text(json.dumps({"ref": source.ref, "digest": source.digest}))

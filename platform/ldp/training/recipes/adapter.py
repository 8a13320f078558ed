"""Recipe: train one task adapter (any ``--method``) on a frozen base.

The same ``build``/``export`` pair runs in one plain process (``ldp.jobs.recipe.train_locally``,
the unit tests) and inside every Ray Train worker under DeepSpeed (``ldp.jobs.runner``). Every
input is in :class:`AdapterConfig`, so a job is fully described by one YAML document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch

from ldp.config import build as build_config
from ldp.config import to_dict
from ldp.diffusion import DiffusionConfig, training_loss
from ldp.errors import UsageError
from ldp.training.loader import ResumableLoader
from ldp.training.optim import OptimConfig
from ldp.training.trainer import LoopConfig

__all__ = ["DEFAULT_STEPS", "AdapterConfig", "EvalConfig", "validate", "scoring_settings", "build", "export", "make_loss_fn", "adapter_loss", "load_model"]


DEFAULT_STEPS = 900
"""Optimiser steps of a task job unless told otherwise (at batch 16, about 7 passes over a
2000-example training split). Chosen on sst2 validation on the tiny base (docs/METHOD.md):
lora-diffusion 72.9 at 300 steps, 76.5 at 900 (n = 300, mean over seeds); weight LoRA 50.0 and
83.5 (n = 200, an earlier base build); full fine-tuning is still collapsed to one label at 300."""


@dataclass
class EvalConfig:
    split: str = "validation"
    """Split scored after training (``validation`` or ``test``)."""
    limit: int | None = 200
    """Examples scored (None: the whole split)."""
    mode: Literal["auto", "generate", "likelihood"] = "auto"
    """auto: verbaliser likelihood (ELBO) for classification, generation otherwise."""
    steps: int | None = None
    """Sampling steps for generation (default: the diffusion T, capped by the answer length)."""
    elbo_samples: int = 4
    """Monte-Carlo samples per candidate in likelihood mode."""
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.split not in ("train", "validation", "test"):
            raise ValueError(f"eval.split must be train, validation or test, got {self.split!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError("eval.limit must be >= 1")


@dataclass
class AdapterConfig:
    task: str = "sst2"
    """Task key (``ldp tasks``)."""
    method: str = "lora-diffusion"
    """Adaptation method: lora-diffusion, weight-lora, prefix, adapters, bitfit, full."""
    base: str = "bases/tiny@latest"
    """The frozen base: a registry reference or a local folder."""
    registry: str | None = None
    """Registry URL for ``base`` (default LDP_REGISTRY or the local one)."""
    data_dir: str | None = None
    """Data mirror (default LDP_DATA_DIR, else the hub)."""
    method_config: dict[str, Any] = field(default_factory=dict)
    """The method's own config (validated by the method's config class)."""
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(loss_weighting="none"))
    """The diffusion process. Task training scores masked answer tokens without the ELBO's
    ``T/t`` weight (the paper's Eq. 8 as written): with it, a rare masked answer token at small
    ``t`` weighs up to T times the others, Adam's second moment is dominated by those spikes and
    every method learns the input-to-answer mapping several times more slowly (measured: weight
    LoRA fitted 20/32 sst2 examples in 150 steps with the weight, 27/32 without). Base
    pretraining keeps the ELBO weight, so its loss is a perplexity bound."""
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(max_steps=DEFAULT_STEPS, batch_size=16))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=None, warmup_steps=20))
    """``optim.lr`` unset: the method's own default learning rate (``Method.default_lr``)."""
    max_prompt_len: int | None = None
    """Prompt token budget (default: the task's)."""
    max_target_len: int | None = None
    """Answer token budget (default: the task's generation length)."""
    train_limit: int | None = None
    """Use at most this many training examples."""
    answer_padding: Literal["task", "batch"] = "task"
    """task: every answer is exactly the task's generation length (target + EOS), the shape
    evaluation generates, and rows are padded past it with unattended [PAD]; batch: LLaDA's
    convention, EOS padding up to the longest sequence in the batch (many more easy EOS tokens
    dilute the answer's share of the loss)."""
    val_limit: int | None = 64
    """Validation examples for the periodic validation loss."""
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        from ldp.data.tasks import get_task
        from ldp.methods import get_method

        get_task(self.task)  # raises UsageError for an unknown task
        method = get_method(self.method)
        if "num_steps" in {f.name for f in fields(method.config_cls)}:
            # Step-adaptive methods must see the same T as the diffusion process.
            given = self.method_config.get("num_steps", self.diffusion.num_steps)
            if given != self.diffusion.num_steps:
                raise ValueError(
                    f"method_config.num_steps={given} differs from diffusion.num_steps="
                    f"{self.diffusion.num_steps}"
                )
            self.method_config = {**self.method_config, "num_steps": self.diffusion.num_steps}
        method.build_config(self.method_config)
        if self.optim.lr is None:
            self.optim.lr = method.default_lr


def validate(config: dict[str, Any]) -> AdapterConfig:
    """Build and check the whole config before anything runs (raises UsageError)."""
    return build_config(AdapterConfig, config)


def scoring_settings(cfg: AdapterConfig) -> dict[str, Any]:
    """How an adapter of this recipe is scored: :func:`ldp.evaluation.evaluate_task` keywords
    (mode, sampling steps, ELBO samples, batch, prompt budget, diffusion process). The split and
    the number of examples are left to the caller."""
    ev = cfg.eval
    return {
        "mode": ev.mode, "steps": ev.steps, "elbo_samples": ev.elbo_samples,
        "batch_size": ev.batch_size, "max_prompt_len": cfg.max_prompt_len, "diffusion": cfg.diffusion,
    }


def adapter_loss(
    model, batch, diffusion: DiffusionConfig, generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """One training step's loss: the diffusion loss with the batch's instruction context bound,
    plus the method's regularisers (lora-diffusion's Eq. 17 terms). ``ldp bench`` times this."""
    inner = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    instruction = batch.get("instruction_mask")

    def hidden_fn(x_t, t_norm, attention_mask):
        # The loss reads H' on the answer only: a final-state adapter computes it there.
        return inner.hidden_states(
            x_t, t_norm, attention_mask, instruction_mask=instruction,
            positions=batch["response_mask"],
        )

    loss, stats = training_loss(
        inner, batch, diffusion, generator=generator, hidden_fn=hidden_fn,
        t=batch.get("steps"),  # fixed steps per row (tests); drawn uniformly otherwise
    )
    regularization = getattr(inner, "regularization", None)
    if regularization is not None:
        terms = regularization()
        for name, value in terms.items():
            loss = loss + value
            stats[f"reg_{name}"] = float(value.detach())
    return loss, stats


def make_loss_fn(cfg: AdapterConfig):
    """``loss_fn(model, batch, generator)``: :func:`adapter_loss` with the recipe's diffusion."""

    def loss_fn(model, batch, generator):
        return adapter_loss(model, batch, cfg.diffusion, generator)

    return loss_fn


def load_model(cfg: AdapterConfig):
    """``(adapted model, tokenizer, base source, base hash)`` with a fresh adapter attached."""
    from ldp.bases import resolve_base
    from ldp.methods import attach, base_fingerprint
    from ldp.models.loading import load_base

    source = resolve_base(cfg.base, cfg.registry)
    base, tokenizer = load_base(source.folder)
    base_hash = base_fingerprint(base)
    torch.manual_seed(cfg.loop.seed)  # identical adapter init on every rank
    model = attach(base, cfg.method, cfg.method_config, base_hash=base_hash)
    return model, tokenizer, source, base_hash


def _datasets(cfg: AdapterConfig, tokenizer: Any):
    from ldp.data.collate import build_sft_dataset

    kw = dict(max_prompt_len=cfg.max_prompt_len, max_target_len=cfg.max_target_len)
    train = build_sft_dataset(cfg.task, "train", tokenizer, cfg.data_dir, limit=cfg.train_limit, **kw)
    val = build_sft_dataset(cfg.task, "validation", tokenizer, cfg.data_dir, limit=cfg.val_limit, **kw)
    return train, val


def _collator(cfg: AdapterConfig, tokenizer: Any):
    from ldp.data.collate import SFTCollator
    from ldp.data.tasks import get_task

    if cfg.answer_padding == "batch":
        return SFTCollator(tokenizer)
    length = cfg.max_target_len or get_task(cfg.task).max_new_tokens
    return SFTCollator(tokenizer, answer_length=length)


def _calibrate(model, cfg: AdapterConfig, train, collate) -> None:
    """Let a method that standardises its inputs measure the frozen base on training data.

    Uses the first ``calibration_examples`` training examples (not this rank's shard) and the
    job's seed, so every data-parallel rank computes identical statistics."""
    calibrate = getattr(model, "calibrate", None)
    n = min(getattr(model.config, "calibration_examples", 0), len(train))
    if calibrate is None or n == 0:
        return
    rows = [train[i] for i in range(n)]
    size = cfg.loop.batch_size
    calibrate([collate(rows[i : i + size]) for i in range(0, n, size)], cfg.diffusion, seed=cfg.loop.seed)


def build(config: dict[str, Any], rank: int, world_size: int):
    """The recipe's ``build`` (see ``ldp.jobs.recipe``)."""
    from ldp.jobs.recipe import Built

    cfg = validate(config)
    model, tokenizer, source, base_hash = load_model(cfg)
    train, val = _datasets(cfg, tokenizer)
    collate = _collator(cfg, tokenizer)
    loader = ResumableLoader(
        train, cfg.loop.batch_size, collate, seed=cfg.loop.seed, rank=rank, world_size=world_size
    )
    _calibrate(model, cfg, train, collate)
    val_rows = [val[i] for i in range(len(val))]
    val_batches = [
        collate(val_rows[i : i + cfg.loop.batch_size]) for i in range(0, len(val_rows), cfg.loop.batch_size)
    ]
    return Built(
        model=model,
        named_trainable=model.named_trainable_parameters(),
        loss_fn=make_loss_fn(cfg),
        train_loader=loader,
        loop=cfg.loop,
        optim=cfg.optim,
        val_batches=lambda: val_batches,
        extra={"cfg": cfg, "tokenizer": tokenizer, "source": source, "base_hash": base_hash},
    )


def export(built, trainable_state: dict[str, torch.Tensor], folder: Path) -> None:
    """Write the adapter (peft file names, safetensors) from the gathered trainable weights."""
    model = built.model
    named = dict(model.named_parameters())
    missing = [n for n in built.named_trainable if n not in trainable_state]
    if missing:
        raise UsageError(f"gathered state lacks {missing[0]!r}")
    with torch.no_grad():
        for name in built.named_trainable:
            value = trainable_state[name]
            if value.numel() != named[name].numel():
                raise UsageError(f"gathered tensor {name!r} has {value.numel()} elements, expected {named[name].numel()}")
            named[name].copy_(value.reshape(named[name].shape).to(named[name].dtype))
    cfg: AdapterConfig = built.extra["cfg"]
    source = built.extra["source"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_adapter(folder, base_name=source.ref, base_hash=built.extra["base_hash"])
    (folder / "job_config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    if source.digest:
        (folder / "base.json").write_text(json.dumps({"ref": source.ref, "digest": source.digest}))

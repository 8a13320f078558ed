"""Recipe: pretrain (or warm-start) a base masked-diffusion LM on a text corpus.

    ldp pretrain --size tiny --init minilm --corpus wikitext --steps 300

Native sizes train from scratch; ``--init`` wraps a Hugging Face encoder / masked LM (BERT family)
as a denoiser and continues training it with the masked-diffusion objective, which is how real
diffusion LMs are made from existing models. Validation ELBO perplexity is measured before and
after on the corpus's validation split with the same fixed Monte-Carlo draws; a few samples are
decoded to show the model writes text. The base goes to the registry (``bases/<name>``) or a
folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ldp.config import to_dict
from ldp.diffusion import DiffusionConfig, elbo_perplexity, sample, training_loss
from ldp.errors import UsageError
from ldp.training.loader import ResumableLoader
from ldp.training.optim import OptimConfig
from ldp.training.trainer import LoopConfig, Trainer

__all__ = ["PretrainConfig", "PretrainResult", "build_base", "run_pretrain"]


@dataclass
class PretrainConfig:
    size: str = "tiny"
    """Size preset of a native base (``ldp sizes``); ignored with ``init``."""
    init: str | None = None
    """Warm start from this HF encoder / masked LM (hub id, folder, or ``minilm``)."""
    corpus: str = "wikitext"
    """Corpus name in the data mirror (``wikitext``, ``arxiv``, ``code``) or a text file/folder."""
    data_dir: str | None = None
    """Data mirror (default ``LDP_DATA_DIR``, else the hub)."""
    block_len: int = 128
    """Tokens per training sequence."""
    train_limit: int | None = None
    """Use at most this many training blocks (None: all)."""
    val_blocks: int = 64
    """Validation blocks for the ELBO perplexity."""
    elbo_samples: int = 4
    """Monte-Carlo samples (antithetic pairs) per sequence for the ELBO."""
    num_samples: int = 2
    """Texts to generate after training (shown and saved in metrics.json)."""
    sample_len: int = 32
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of the native size preset (e.g. ``hidden_size: 64``); ignored with ``init``."""
    name: str | None = None
    """Registry name (``bases/<name>``); default the size (a warm start of ``tiny`` is ``tiny``)."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(max_steps=300, batch_size=16))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=30))

    def __post_init__(self) -> None:
        if self.block_len < 8:
            raise ValueError("block_len must be >= 8")
        if self.val_blocks < 1 or self.elbo_samples < 1:
            raise ValueError("val_blocks and elbo_samples must be >= 1")

    @property
    def base_name(self) -> str:
        return self.name or self.size


@dataclass
class PretrainResult:
    folder: Path
    """Where the base was written (a temporary folder when published to the registry)."""
    ref: str | None
    metrics: dict[str, Any]


def build_base(cfg: PretrainConfig) -> tuple[torch.nn.Module, Any]:
    """The model to train and its tokenizer: a warm start or a fresh native size."""
    from ldp.bases import resolve_init
    from ldp.models.loading import default_tokenizer
    from ldp.models.native import DiffusionTransformer
    from ldp.models.sizes import size_config
    from ldp.models.warmstart import warm_start

    if cfg.init:
        return warm_start(resolve_init(cfg.init))
    config = size_config(cfg.size, **cfg.model)
    tokenizer = default_tokenizer(getattr(config, "tokenizer", None))
    if config.max_position_embeddings < cfg.block_len:
        raise UsageError(f"block_len {cfg.block_len} exceeds the {cfg.size} max length")
    torch.manual_seed(cfg.loop.seed)
    return DiffusionTransformer(config), tokenizer


def _blocks(cfg: PretrainConfig, tokenizer: Any, split: str, limit: int | None) -> torch.Tensor:
    from ldp.data.corpora import corpus_blocks, load_corpus

    texts = load_corpus(cfg.corpus, split, cfg.data_dir)
    blocks = corpus_blocks(texts, tokenizer, cfg.block_len)
    if limit is not None:
        blocks = blocks[:limit]
    if len(blocks) == 0:
        raise UsageError(f"corpus {cfg.corpus!r} ({split}) has no text")
    return blocks


def _collate(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    ids = torch.stack(rows)
    # Unconditional pretraining: every position is "response" (may be corrupted, is scored).
    return {"input_ids": ids, "response_mask": torch.ones_like(ids, dtype=torch.bool)}


def _val_batches(blocks: torch.Tensor, batch_size: int):
    return [_collate(list(blocks[i : i + batch_size])) for i in range(0, len(blocks), batch_size)]


def run_pretrain(
    cfg: PretrainConfig,
    *,
    registry: str | None = None,
    out_dir: Path | None = None,
    publish: bool = True,
    job: str | None = None,
    progress: bool = True,
    log=print,
) -> PretrainResult:
    """Train, measure, save; publish to the registry unless ``publish`` is False."""
    model, tokenizer = build_base(cfg)
    train = _blocks(cfg, tokenizer, "train", cfg.train_limit)
    val = _blocks(cfg, tokenizer, "validation", cfg.val_blocks)
    val_batches = _val_batches(val, cfg.loop.batch_size)
    log(
        f"base: {'warm start from ' + cfg.init if cfg.init else 'native ' + cfg.size}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
        f"corpus {cfg.corpus}: {len(train)} train / {len(val)} validation blocks of {cfg.block_len}"
    )

    def ppl() -> float:
        model.eval()
        gen = torch.Generator().manual_seed(cfg.loop.seed + 777)
        return elbo_perplexity(
            model, val_batches, cfg.diffusion, n_samples=cfg.elbo_samples, generator=gen
        )

    ppl_before = ppl()
    log(f"validation ELBO perplexity before: {ppl_before:.2f}")

    work = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="ldp-pretrain-"))
    loss = lambda m, batch, gen: training_loss(m, batch, cfg.diffusion, generator=gen)  # noqa: E731
    loader = ResumableLoader(list(train), cfg.loop.batch_size, _collate, seed=cfg.loop.seed)
    for p in model.parameters():
        p.requires_grad_(True)
    trainer = Trainer(
        model, loss, loader, loop=cfg.loop, optim=cfg.optim,
        val_batches=lambda: val_batches, out_dir=work / "run", progress=progress,
    )
    result = trainer.train()
    ppl_after = ppl()
    log(f"validation ELBO perplexity after {result.step} steps: {ppl_after:.2f} (before {ppl_before:.2f})")

    samples = _samples(model, tokenizer, cfg)
    for text in samples:
        log(f"sample: {text}")
    metrics = {
        "corpus": cfg.corpus,
        "steps": result.step,
        "train_loss": result.train_loss,
        "val_ppl_before": ppl_before,
        "val_ppl_after": ppl_after,
        "seconds": result.seconds,
        "samples": samples,
    }
    base_dir = work / "base"
    from ldp.models.loading import save_base

    model.eval()
    save_base(model, tokenizer, base_dir)
    (base_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (base_dir / "pretrain_config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    ref = None
    if publish:
        from ldp.store import Registry

        reg = Registry(registry)
        ref = str(reg.publish(f"bases/{cfg.base_name}", base_dir, job=job, metadata={
            "size": cfg.size, "init": cfg.init, "corpus": cfg.corpus, "steps": result.step,
            "val_ppl": ppl_after,
        }))
        log(f"published {ref}")
        if out_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return PretrainResult(folder=base_dir, ref=ref, metrics=metrics)


@torch.no_grad()
def _samples(model: torch.nn.Module, tokenizer: Any, cfg: PretrainConfig) -> list[str]:
    if cfg.num_samples <= 0:
        return []
    cls = tokenizer.cls_token_id
    prompt = torch.full((cfg.num_samples, 1), cls if cls is not None else model.eos_token_id)
    out = sample(model, prompt, cfg.sample_len, cfg.diffusion, temperature=0.8, seed=cfg.loop.seed)
    return [tokenizer.decode(row[1:], skip_special_tokens=True) for row in out]

"""The single-process trainer: schedule, accumulation, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ldp.training.loader import ResumableLoader
from ldp.training.optim import OptimConfig, warmup_cosine
from ldp.training.trainer import LoopConfig, Trainer, latest_checkpoint


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return [(x[i], y[i]) for i in range(n)]


def _collate(rows):
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


class Noisy(nn.Module):
    """Uses dropout and the loop's generator, so resume must restore both RNGs."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)


def _loss(model, batch, gen):
    x, y = batch
    x = x + 0.01 * torch.randn(x.shape, generator=gen)
    loss = ((model(x) - y) ** 2).mean()
    return loss, {"mse": float(loss.detach())}


def _trainer(tmp_path, steps, **loop_kw):
    torch.manual_seed(0)
    model = Noisy()
    loader = ResumableLoader(_data(), 8, _collate, seed=3)
    loop = LoopConfig(max_steps=steps, batch_size=8, seed=1, **loop_kw)
    return Trainer(
        model, _loss, loader, loop=loop, optim=OptimConfig(lr=3e-2, warmup_steps=2),
        out_dir=tmp_path, progress=False,
    )


def test_warmup_cosine_endpoints():
    assert warmup_cosine(0, warmup_steps=10, total_steps=100, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, warmup_steps=10, total_steps=100, min_lr_ratio=0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, warmup_steps=10, total_steps=100, min_lr_ratio=0.1) == pytest.approx(1.0)
    assert warmup_cosine(100, warmup_steps=10, total_steps=100, min_lr_ratio=0.1) == pytest.approx(0.1)


def test_loss_falls_and_metrics_are_logged(tmp_path):
    result = _trainer(tmp_path, 30).train()
    losses = [m["loss"] for m in result.history]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 30 and json.loads(lines[-1])["step"] == 30


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path):
    full = _trainer(tmp_path / "a", 12).train()
    first = _trainer(tmp_path / "b", 12, checkpoint_every=6)
    first.loop.max_steps = 6  # stop half-way, as a killed worker would
    first.train()
    ckpt = latest_checkpoint(tmp_path / "b" / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_000006"
    resumed = _trainer(tmp_path / "c", 12).train(resume_from=ckpt)
    want = [m["loss"] for m in full.history[6:]]
    got = [m["loss"] for m in resumed.history]
    assert got == pytest.approx(want, rel=0, abs=1e-6)


def test_grad_accum_matches_a_bigger_batch(tmp_path):
    def run(batch, accum):
        torch.manual_seed(0)
        model = nn.Linear(8, 1)
        loader = ResumableLoader(_data(), batch, _collate, seed=3, shuffle=False)
        loss = lambda m, b, g: (((m(b[0]) - b[1]) ** 2).mean(), {})
        loop = LoopConfig(max_steps=3, batch_size=batch, grad_accum=accum)
        Trainer(model, loss, loader, loop=loop, optim=OptimConfig(lr=1e-2, warmup_steps=0, grad_clip=0),
                progress=False).train()
        return model.weight.detach().clone()

    assert torch.allclose(run(16, 1), run(8, 2), atol=1e-6)


def test_loader_shards_disjointly_and_resumes():
    data = list(range(20))
    a = ResumableLoader(data, 5, list, seed=0, rank=0, world_size=2)
    b = ResumableLoader(data, 5, list, seed=0, rank=1, world_size=2)
    assert set(next(a) + next(a)).isdisjoint(next(b) + next(b))
    state = a.state_dict()
    after = next(a)
    c = ResumableLoader(data, 5, list, seed=0, rank=0, world_size=2)
    c.load_state_dict(state)
    assert next(c) == after


def test_loop_config_refuses_bad_values():
    with pytest.raises(ValueError):
        LoopConfig(max_steps=0)


def test_val_loss_is_the_denoising_loss_without_the_regularisers(tmp_path):
    """A sweep compares runs with different regulariser weights by val_loss: the penalty must not
    be part of it (the full objective is reported beside it as val_objective)."""

    def loss_with_penalty(model, batch, gen):
        x, y = batch
        task = ((model(x) - y) ** 2).mean()
        penalty = 10.0 * sum(p.pow(2).sum() for p in model.parameters())
        return task + penalty, {"denoising_loss": float(task.detach())}

    torch.manual_seed(0)
    model = Noisy()
    data = _data(16)
    trainer = Trainer(
        model, loss_with_penalty, ResumableLoader(data, 8, _collate, seed=3),
        loop=LoopConfig(max_steps=1, batch_size=8, seed=1), optim=OptimConfig(lr=1e-3),
        out_dir=tmp_path, progress=False, val_batches=lambda: iter([_collate(data[:8])]),
    )
    metrics = trainer.evaluate()
    model.eval()
    x, y = _collate(data[:8])
    with torch.no_grad():
        task = float(((model(x) - y) ** 2).mean())
    assert metrics["val_loss"] == pytest.approx(task, rel=1e-5)
    assert metrics["val_objective"] > metrics["val_loss"] + 1.0

"""Fault drill: the disk fills up while a checkpoint is written (single-process trainer).

The trainer's output folder is a small tmpfs. After the first checkpoint the test fills it, so the
second checkpoint write runs out of space. The run must stop with one clear line, the first
checkpoint must be intact and load (its step and weights), no half-written checkpoint may be
visible where a resume looks, and after space is freed a resume continues from the first
checkpoint exactly as an uninterrupted run would have. Prints the drill's figure line.

Needs ``mount -t tmpfs`` (root, or a container that allows it); skipped with the reason otherwise.
The Ray Train path (``ldp submit`` with its storage on a full disk) is drilled in
``tests/jobs/test_fault_drill_disk_full_job.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ldp.errors import LdpError
from ldp.training.loader import ResumableLoader
from ldp.training.optim import OptimConfig
from ldp.training.trainer import LoopConfig, Trainer, latest_checkpoint

EVERY, STEPS = 4, 8
LEAVE_FREE = 8 * 1024
"""Bytes left free after filling: room for the metrics lines of the next steps, not for a
checkpoint (its RNG state alone is over 10 KB)."""


@pytest.fixture
def small_disk(tmpfs_mount):
    """A 2 MB tmpfs, unmounted afterwards whatever happens."""
    return tmpfs_mount("2m", "ldp-diskfull-")


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    return [(x[i], y[i]) for i in range(n)]


def _collate(rows):
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


def _loss(model, batch, gen):
    x, y = batch
    x = x + 0.01 * torch.randn(x.shape, generator=gen)
    loss = ((model(x) - y) ** 2).mean()
    return loss, {}


def _trainer(out_dir: Path, on_step=None) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.Dropout(0.1), nn.ReLU(), nn.Linear(64, 1))
    loader = ResumableLoader(_data(), 8, _collate, seed=3)
    loop = LoopConfig(max_steps=STEPS, batch_size=8, seed=1, checkpoint_every=EVERY)
    return Trainer(model, _loss, loader, loop=loop, optim=OptimConfig(lr=1e-2, warmup_steps=2),
                   out_dir=out_dir, on_step=on_step, progress=False)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_disk_full_during_a_checkpoint_keeps_the_last_one(small_disk, fill_disk, tmp_path):
    reference = _trainer(tmp_path / "uninterrupted").train()
    ckpts = small_disk / "run" / "checkpoints"
    saved: dict[str, dict[str, torch.Tensor]] = {}
    filler: list[Path] = []

    def on_step(metrics):
        if metrics["step"] == EVERY:
            saved["at_first"] = _weights(trainer)
        if metrics["step"] == EVERY + 1:  # the first checkpoint is on disk: now the disk fills
            assert latest_checkpoint(ckpts) is not None
            filler.append(fill_disk(small_disk, LEAVE_FREE))

    trainer = _trainer(small_disk / "run", on_step)
    with pytest.raises(LdpError) as err:
        trainer.train()
    line = str(err.value)
    assert "\n" not in line and "No space left on device" in line and "step_000008" in line, line

    # Nothing half-written where a resume looks: only the first checkpoint, complete.
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000004"]
    first = latest_checkpoint(ckpts)
    assert first is not None and first.name == "step_000004"

    # It loads: the step and the weights it held.
    probe = _trainer(tmp_path / "probe")
    probe.load_checkpoint(first)
    assert probe.step == EVERY
    got = _weights(probe)
    assert all(torch.equal(got[k], saved["at_first"][k]) for k in got)

    # Space back: the resume continues from step 4 and matches the uninterrupted run.
    filler[0].unlink()
    resumed = _trainer(small_disk / "run").train(resume_from=first)
    assert [m["step"] for m in resumed.history] == list(range(EVERY + 1, STEPS + 1))
    assert [m["loss"] for m in resumed.history] == pytest.approx(
        [m["loss"] for m in reference.history[EVERY:]], rel=0, abs=1e-6)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000004", "step_000008"]

    writes, failures = 3, 1  # checkpoint writes: step 4, step 8 (disk full), step 8 again
    print(f"\ndisk-full drill (trainer): operations tried {writes + 2} (3 checkpoint writes, 1 load, "
          f"1 resume), failures injected {failures}, data lost = 0")

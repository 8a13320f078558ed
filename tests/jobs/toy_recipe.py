"""A small but real recipe for the runner's tests (test-only; not part of the package).

A frozen "base" encoder, a trainable residual adapter and a trainable output matrix that lives
directly on the root module and is used in ``head()`` — so ``loss_fn`` calls methods other than
``forward`` and reads a root-level parameter, the case ZeRO-3 must gather explicitly. The task is
a noisy regression onto a fixed teacher; the noise comes from the loop's generator, so exact
resume must restore it.

Fault injection for the failure tests: ``config["kill"] = {"rank": 1, "step": 8, "marker": path}``
makes that rank SIGKILL itself at that training step the first time (the marker file records it).

``config["threads_file"] = path``: rank 0 writes its intra-op thread count there.

``config["nan_at_step"] = N`` makes the loss NaN at step N on every rank (the trainer then raises
its own error, which the runner must pass on).

Importable as ``toy_recipe`` (the tests put this folder on ``PYTHONPATH``) so Ray workers and
``ldp _run-job`` subprocesses find it.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch
import torch.nn.functional as F
from ldp.jobs.recipe import Built
from ldp.training.loader import ResumableLoader
from ldp.training.optim import OptimConfig
from ldp.training.trainer import LoopConfig
from safetensors.torch import save_file
from torch import nn

D_IN, D, D_OUT = 8, 32, 4


class ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Sequential(nn.Linear(D_IN, D), nn.Tanh())  # frozen
        self.adapter = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, D))
        self.out_weight = nn.Parameter(torch.randn(D_OUT, D) * 0.1)  # root-level, used in head()
        self.base.requires_grad_(False)

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)  # (B, D)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.adapter(h)
        return F.linear(h, self.out_weight)  # (B, D_OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden_states(x))


def _dataset(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g)
    teacher = torch.randn(D_IN, D_OUT, generator=g)
    y = torch.tanh(x @ teacher) + 0.05 * torch.randn(n, D_OUT, generator=g)
    return [(x[i], y[i]) for i in range(n)]


def _collate(rows):
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


def build(config: dict, rank: int, world_size: int) -> Built:
    if config.get("threads_file") and rank == 0:
        Path(config["threads_file"]).write_text(str(torch.get_num_threads()))
    torch.manual_seed(int(config.get("init_seed", 0)))  # same weights on every rank
    model = ToyModel()
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    data = _dataset(int(config.get("examples", 256)), seed=7)
    loop = LoopConfig(
        max_steps=int(config.get("steps", 20)),
        batch_size=int(config.get("batch_size", 8)),
        grad_accum=int(config.get("grad_accum", 1)),
        seed=1,
        log_every=5,
    )
    loader = ResumableLoader(
        data, loop.batch_size, _collate, seed=3, rank=rank, world_size=world_size
    )
    kill = config.get("kill") or {}
    calls = {"train": 0}

    def loss_fn(model, batch, generator):
        if torch.is_grad_enabled():
            calls["train"] += 1
            step = (calls["train"] - 1) // loop.grad_accum + 1
            if kill and rank == int(kill["rank"]) and step == int(kill["step"]):
                marker = Path(kill["marker"])
                if not marker.exists():
                    marker.write_text(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGKILL)
            if step == int(config.get("nan_at_step", -1)):
                return torch.tensor(float("nan"), requires_grad=True), {"mse": float("nan")}
        x, y = batch
        x = x + 0.01 * torch.randn(x.shape, generator=generator)
        pred = model.head(model.hidden_states(x))
        loss = F.mse_loss(pred, y)
        return loss, {"mse": float(loss.detach())}

    val = data[:32]

    def val_batches():
        for i in range(0, len(val), 16):
            yield _collate(val[i : i + 16])

    return Built(
        model=model,
        named_trainable=named,
        loss_fn=loss_fn,
        train_loader=loader,
        loop=loop,
        optim=OptimConfig(lr=float(config.get("lr", 1e-2)), warmup_steps=2),
        val_batches=val_batches,
        extra={"shapes": {n: list(p.shape) for n, p in named.items()}},
    )


def export(built: Built, trainable_state: dict, folder: Path) -> None:
    save_file(
        {n: t.contiguous() for n, t in trainable_state.items()}, folder / "weights.safetensors"
    )
    (folder / "shapes.json").write_text(json.dumps(built.extra["shapes"]))
    # What the worker resolves its defaults from (the driver's, whatever the cluster's own are).
    seen = {k: os.environ.get(k) for k in ("LDP_HOME", "LDP_REGISTRY")}
    (folder / "worker_env.json").write_text(json.dumps(seen))


# --- a job kind for the jobs layer (registered by the tests, never by the package) -------------
def execute(spec: dict, job_id: str) -> dict:
    """``kind: "toy_recipe:execute"``: train the toy recipe through the runner."""
    from ldp.jobs.runner import default_storage_path, run_training

    outcome = run_training(
        "toy_recipe",
        spec.get("config", {}),
        job_id=job_id,
        num_workers=int(spec.get("workers", 2)),
        strategy=spec.get("strategy", "ddp"),
        storage_path=str(spec.get("storage_path") or default_storage_path()),
        checkpoint_every=int(spec.get("checkpoint_every", 5)),
    )
    return {
        "ref": f"toy/{job_id}",
        "metrics": outcome.metrics,
        "artifact": str(outcome.artifact_dir),
    }


def hello(spec: dict, job_id: str) -> dict:
    """``kind: "toy_recipe:hello"``: no training; proves the job plumbing (status, logs)."""
    print(f"hello from {job_id}: {spec.get('message', '')}", flush=True)
    if spec.get("fail"):
        raise RuntimeError(f"asked to fail: {spec['fail']}")
    return {"ref": None, "metrics": {"answer": 42}}

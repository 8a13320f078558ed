"""Runner pieces that need no Ray: error lines, metrics files on append-less storage, helpers."""

from __future__ import annotations

import collections
import sys

import pytest
import torch
from ldp.errors import LdpError
from ldp.jobs.deepspeed_backend import _to_device, deep_merge
from ldp.jobs.runner import _dedupe_steps, read_metrics, worker_error_line
from ldp.jobs.worker import MetricsLog

from .conftest import HERE

if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


class FakeGroupError(Exception):
    def __init__(self, failures):
        super().__init__("Training failed due to worker errors:\n...")
        self.worker_failures = failures


def test_the_rank_with_its_own_error_is_named_not_its_peers():
    err = FakeGroupError(
        {
            0: RuntimeError(
                "[../gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer"
            ),
            1: LdpError("loss became nan at step 3; lower the lr\nmore detail"),
        }
    )
    assert worker_error_line(err) == "rank 1: loss became nan at step 3; lower the lr"
    err = FakeGroupError({1: ValueError("bad shape\n  traceback..."), 0: ValueError("other")})
    assert worker_error_line(err) == "rank 0: ValueError: other"

    class Wrapped(Exception):  # what Ray Train wraps user errors in
        def __init__(self, base):
            super().__init__("Traceback (most recent call last): ...")
            self._base_exc = base

    assert worker_error_line(FakeGroupError({0: Wrapped(KeyError("x"))})) == "rank 0: KeyError: 'x'"


def test_metrics_on_storage_without_append_go_to_per_attempt_files():
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    mem = fsspec.filesystem("memory")
    mem.store.clear()
    fs = PyFileSystem(FSSpecHandler(mem))
    log = MetricsLog(fs, "/bucket/runs/job-1", "attempt-1")
    assert not log.append
    log.write({"event": "start", "step": 0})
    log.write({"step": 1, "loss": 2.0})
    log.write({"step": 2, "loss": 1.5})
    log.flush()
    log2 = MetricsLog(fs, "/bucket/runs/job-1", "attempt-2")
    log2.write({"event": "start", "step": 1})
    log2.write({"step": 2, "loss": 1.4})
    log2.flush()
    records = read_metrics("/bucket/runs", "job-1", storage_filesystem=fs)
    assert [r.get("event", r.get("step")) for r in records] == ["start", 1, 2, "start", 2]
    assert [(r["step"], r["loss"]) for r in _dedupe_steps(records)] == [(1, 2.0), (2, 1.4)]


def test_metrics_on_local_storage_are_appended(tmp_path):
    from pyarrow.fs import LocalFileSystem

    log = MetricsLog(LocalFileSystem(), str(tmp_path / "job-2"), "attempt-1")
    (tmp_path / "job-2").mkdir()
    log.write({"step": 1, "loss": 1.0})
    assert (tmp_path / "job-2" / "metrics.jsonl").read_text().count("\n") == 1  # at once
    log.write({"step": 2, "loss": 0.5})
    assert [r["step"] for r in read_metrics(str(tmp_path), "job-2")] == [1, 2]


def test_deep_merge_and_batch_moves():
    base = {"zero_optimization": {"stage": 3, "x": 1}, "a": 1}
    out = deep_merge(base, {"zero_optimization": {"stage3_param_persistence_threshold": 0}})
    assert out["zero_optimization"] == {"stage": 3, "x": 1, "stage3_param_persistence_threshold": 0}
    assert base["zero_optimization"] == {"stage": 3, "x": 1}  # not modified
    Pair = collections.namedtuple("Pair", "x y")
    batch = {"a": (torch.zeros(2), [torch.ones(1), "text"]), "b": Pair(torch.zeros(1), 3)}
    moved = _to_device(batch, torch.device("meta"))
    assert moved["a"][0].device.type == "meta" and moved["a"][1][1] == "text"
    assert isinstance(moved["b"], Pair) and moved["b"].x.device.type == "meta" and moved["b"].y == 3


def test_run_training_refuses_bad_arguments_before_starting_ray():
    from ldp.errors import UsageError
    from ldp.jobs.runner import run_training

    kw = {"job_id": "j", "num_workers": 2, "storage_path": "/tmp/x", "checkpoint_every": 5}
    with pytest.raises(UsageError, match="unknown strategy"):
        run_training("toy_recipe", {}, strategy="zero9", **kw)
    with pytest.raises(UsageError, match="checkpoint_every"):
        run_training("toy_recipe", {}, strategy="ddp", **{**kw, "checkpoint_every": 0})
    with pytest.raises(UsageError, match="cannot import"):
        run_training("no_such_recipe_mod", {}, strategy="ddp", **kw)
    with pytest.raises(UsageError, match="auto"):
        run_training("toy_recipe", {}, strategy="auto", use_gpu=True, **kw)


def test_each_rank_keeps_its_own_rng_and_loader_state(tmp_path):
    """Trainer(state_subdir=...): rank 1's state sits in rank_1/, and a checkpoint without this
    rank's state (written with fewer workers) is refused instead of resuming wrongly."""
    import toy_recipe
    from ldp.training.trainer import Trainer

    def trainer(subdir):
        built = toy_recipe.build({"steps": 4}, 0, 1)
        return Trainer(
            built.model,
            built.loss_fn,
            built.train_loader,
            loop=built.loop,
            optim=built.optim,
            progress=False,
            state_subdir=subdir,
        )

    t = trainer("rank_1")
    t.train()
    t.save_checkpoint(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "rank_1" / "trainer_state.json").is_file()
    assert (tmp_path / "ckpt" / "trainable.safetensors").is_file()  # the backend's part
    assert not (tmp_path / "ckpt" / "trainer_state.json").exists()
    again = trainer("rank_1")
    again.load_checkpoint(tmp_path / "ckpt")
    assert again.step == 4 and torch.equal(again.generator.get_state(), t.generator.get_state())
    with pytest.raises(LdpError, match="no trainer state for this process"):
        trainer("rank_2").load_checkpoint(tmp_path / "ckpt")

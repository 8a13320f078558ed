"""The recipe protocol and the job-kind registry (no Ray)."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from ldp.errors import UsageError
from ldp.jobs import execute as jobs_execute
from ldp.jobs.recipe import Built, load_recipe, train_locally
from safetensors.torch import load_file

from .conftest import HERE

if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import toy_recipe


def test_load_recipe_accepts_module_and_object_paths(monkeypatch):
    assert load_recipe("toy_recipe") is toy_recipe

    class WithMethods:
        def build(self, config, rank, world_size): ...

        def export(self, built, state, folder): ...

    fake = types.ModuleType("fake_recipes")
    fake.Instance = WithMethods()
    fake.Klass = WithMethods
    fake.Broken = object()
    monkeypatch.setitem(sys.modules, "fake_recipes", fake)
    assert load_recipe("fake_recipes:Instance") is fake.Instance
    assert isinstance(load_recipe("fake_recipes:Klass"), WithMethods)  # instantiated
    with pytest.raises(UsageError, match="lacks build and export"):
        load_recipe("fake_recipes:Broken")
    with pytest.raises(UsageError, match="has no 'Missing'"):
        load_recipe("fake_recipes:Missing")
    with pytest.raises(UsageError, match="cannot import"):
        load_recipe("no_such_module_xyz:thing")


def test_built_refuses_frozen_or_foreign_trainables():
    built = toy_recipe.build({}, 0, 1)
    kw = {
        "model": built.model,
        "loss_fn": built.loss_fn,
        "train_loader": built.train_loader,
        "loop": built.loop,
        "optim": built.optim,
    }
    with pytest.raises(ValueError, match="requires_grad=False"):
        Built(named_trainable={"base.0.weight": built.model.base[0].weight}, **kw)
    with pytest.raises(ValueError, match="not a parameter of the model"):
        Built(named_trainable={"x": torch.nn.Parameter(torch.zeros(2))}, **kw)
    with pytest.raises(ValueError, match="at least one"):
        Built(named_trainable={}, **kw)


def test_recipe_trains_in_one_plain_process_and_exports(tmp_path):
    result = train_locally("toy_recipe", {"steps": 30}, tmp_path)
    losses = [m["loss"] for m in result.history]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
    weights = load_file(tmp_path / "weights.safetensors")
    shapes = json.loads((tmp_path / "shapes.json").read_text())
    assert {n: list(t.shape) for n, t in weights.items()} == shapes
    assert "base.0.weight" not in weights  # only the trainable part is exported


def test_job_kinds_resolve_by_name_or_import_path(monkeypatch):
    monkeypatch.setitem(jobs_execute.JOB_KINDS, "toy-hello", "toy_recipe:hello")
    out = jobs_execute.execute({"kind": "toy-hello", "message": "hi"}, "job-1")
    assert out == {"ref": None, "metrics": {"answer": 42}}
    assert jobs_execute.execute({"kind": "toy_recipe:hello"}, "job-2")["metrics"]["answer"] == 42
    jobs_execute.register_kind("toy-callable", lambda spec, job_id: {"ref": job_id})
    try:
        assert jobs_execute.execute({"kind": "toy-callable"}, "job-3") == {"ref": "job-3"}
    finally:
        jobs_execute.JOB_KINDS.pop("toy-callable")
    with pytest.raises(UsageError, match="unknown job kind 'nope'.*adapter"):
        jobs_execute.execute({"kind": "nope"}, "job-4")
    with pytest.raises(UsageError, match="cannot import"):
        jobs_execute.execute({"kind": "no_such_mod_abc:run"}, "job-5")
    # The package's own default kind is the adapter job.
    assert jobs_execute.JOB_KINDS["adapter"] == "ldp.jobs.adapter_job:execute"


def test_job_results_must_be_json_dicts(monkeypatch):
    monkeypatch.setitem(jobs_execute.JOB_KINDS, "bad", lambda spec, job_id: ["not", "a", "dict"])
    with pytest.raises(TypeError, match="not a dict"):
        jobs_execute.execute({"kind": "bad"}, "j")
    monkeypatch.setitem(jobs_execute.JOB_KINDS, "bad2", lambda spec, job_id: {"x": object()})
    with pytest.raises(TypeError):
        jobs_execute.execute({"kind": "bad2"}, "j")

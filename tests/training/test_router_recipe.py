"""The router recipe in one process, composition evaluation, and ``ldp eval --bundle/--mix``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ldp.cli.main import main

TASKS = ["sst2", "trec"]


@pytest.fixture(scope="module")
def adapters(small_base, data_dir, tmp_path_factory):
    """Two tiny lora-diffusion adapters (a few steps each) on the shared small base."""
    from ldp.jobs.recipe import train_locally

    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for task in TASKS:
        cfg = {
            "task": task, "base": str(small_base.folder), "data_dir": str(data_dir),
            "train_limit": 32, "val_limit": 8, "loop": {"max_steps": 3, "batch_size": 8},
            "optim": {"lr": 3e-3, "warmup_steps": 1}, "eval": {"limit": 8},
            "method_config": {"ranks": [8, 4, 2], "time_embed_dim": 16},
        }
        train_locally("ldp.training.recipes.adapter", cfg, root / task)
        out[task] = root / task
    return out


@pytest.fixture(scope="module")
def router_folder(adapters, small_base, data_dir, tmp_path_factory):
    from ldp.jobs.recipe import train_locally

    folder = tmp_path_factory.mktemp("router") / "router"
    cfg = {
        "tasks": TASKS, "adapters": {t: str(p) for t, p in adapters.items()},
        "base": str(small_base.folder), "data_dir": str(data_dir), "hidden": 64,
        "train_limit": 48, "val_limit": 8, "loop": {"max_steps": 40, "batch_size": 16},
        "optim": {"lr": 1e-2, "warmup_steps": 2},
    }
    result = train_locally("ldp.training.recipes.router", cfg, folder)
    return folder, result


@pytest.fixture(scope="module")
def bundle_dir(router_folder, adapters, small_base):
    """A bundle folder of the two adapters and the router (each test that needs one gets it,
    whichever xdist worker runs it)."""
    folder, _ = router_folder
    out = folder.parent / "bundle"
    out.mkdir(exist_ok=True)
    (out / "bundle.json").write_text(json.dumps({
        "base": {"ref": str(small_base.folder)}, "adapters": {t: str(p) for t, p in adapters.items()},
        "router": str(folder),
    }))
    return out


def test_router_recipe_trains_and_exports(router_folder, adapters):
    from ldp.methods.router import load_router

    folder, result = router_folder
    first, last = result.history[0], result.history[-1]
    assert {"task_nll", "task_acc", "denoise"} <= set(last)
    mean = lambda key, rows: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    assert mean("task_nll", result.history[-10:]) < 0.5 * first["task_nll"]
    router = load_router(folder)
    meta = json.loads((folder / "router_config.json").read_text())
    assert router.tasks == TASKS and meta["adapters"] == {t: str(p) for t, p in adapters.items()}
    assert meta["base_hash"] and (folder / "job_config.json").is_file()
    assert float(router.input_scale.min()) > 0 and not torch.equal(router.input_mean, torch.zeros_like(router.input_mean))


def test_oracle_mix_scores_exactly_as_the_adapter_alone(bundle_dir, adapters, data_dir):
    from ldp.bases import load_adapted
    from ldp.evaluation import evaluate_task
    from ldp.evaluation.composition import MixedModel, load_bundle, parse_weights, router_accuracy

    bundle = load_bundle(str(bundle_dir))
    comp = bundle.composition
    assert comp.names == TASKS and comp.router is not None
    kw = dict(data_dir=str(data_dir), limit=8, progress=False, elbo_samples=2)
    oracle = evaluate_task(MixedModel(comp, parse_weights("oracle", comp.names, "trec")), bundle.tokenizer, "trec", **kw)
    alone, tok, _ = load_adapted(str(adapters["trec"]))
    assert oracle.predictions == evaluate_task(alone, tok, "trec", **kw).predictions
    acc = router_accuracy(comp, bundle.tokenizer, TASKS, data_dir=str(data_dir), limit=16)
    assert set(acc) == {*TASKS, "overall"} and acc["overall"] >= 0.75


def test_eval_cli_bundle_and_mix(bundle_dir, adapters, data_dir, tmp_path, capsys):
    common = ["--data-dir", str(data_dir), "--limit", "4", "--elbo-samples", "1"]
    assert main(["eval", "--bundle", str(bundle_dir), "--task", "sst2", "--weights", "auto", "--json", "-", *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["weights"] == "auto" and out["n"] == 4
    assert main(["eval", "--bundle", str(bundle_dir), "--all-tasks", *common, "--json", str(tmp_path / "t.json")]) == 0
    printed = capsys.readouterr().out
    assert "router" in printed and "oracle" in printed and "sst2" in printed and "trec" in printed
    table = json.loads((tmp_path / "t.json").read_text())
    assert [r["task"] for r in table["rows"]] == TASKS
    assert all({"auto", "uniform", "oracle", "base"} <= set(r) for r in table["rows"])
    mix = f"sst2={adapters['sst2']},trec={adapters['trec']}"
    assert main(["eval", "--mix", mix, "--task", "sst2", "--weights", '{"sst2": 0.7, "trec": 0.3}', *common]) == 0
    capsys.readouterr()


def _other_base(small_base, tmp_path) -> Path:
    """The small base with one weight changed, saved as a second base."""
    from ldp.models.loading import load_base, save_base

    model, tok = load_base(small_base.folder)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    return save_base(model, tok, tmp_path / "other_base")


def test_mix_over_two_bases_exits_2(adapters, small_base, data_dir, tmp_path, capsys):
    from ldp.methods import get_method
    from ldp.methods.base import base_fingerprint
    from ldp.models.loading import load_base

    other = _other_base(small_base, tmp_path)
    model, _ = load_base(other)
    method = get_method("lora-diffusion")
    foreign = method.attach(model, method.build_config({"ranks": [8, 4, 2], "time_embed_dim": 16}),
                            base_hash=base_fingerprint(model))
    foreign.save_adapter(tmp_path / "foreign", base_name=str(other))
    mix = f"sst2={adapters['sst2']},foreign={tmp_path / 'foreign'}"
    capsys.readouterr()
    code = main(["eval", "--mix", mix, "--task", "sst2", "--weights", "uniform", "--data-dir", str(data_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ldp: error: ") and "must share one base" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("args, needle", [
    (["--bundle", "bundles/x@1", "--mix", "a=b"], "not both"),
    (["--bundle", "bundles/x@1"], "--task"),
    (["--mix", "a=b", "--all-tasks"], "--all-tasks needs --bundle"),
    (["--mix", "nonsense", "--task", "sst2"], "NAME=REF"),
    (["--bundle", "bundles/x@1", "--task", "sst2", "--weights", "best"], "--weights"),
    (["--bundle", "bundles/x@1", "--task", "nope"], "unknown task"),
    (["--all-tasks"], "--all-tasks needs --bundle"),
])
def test_eval_composed_bad_input_exits_2(args, needle, capsys):
    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_eval_mix_of_weight_lora_adapters_uses_the_peft_merge(small_base, data_dir, tmp_path, capsys):
    from ldp.jobs.recipe import train_locally

    folders = {}
    for task in TASKS:
        cfg = {
            "task": task, "method": "weight-lora", "base": str(small_base.folder), "data_dir": str(data_dir),
            "train_limit": 16, "val_limit": 4, "loop": {"max_steps": 1, "batch_size": 8},
            "method_config": {"r": 4}, "eval": {"limit": 4},
        }
        train_locally("ldp.training.recipes.adapter", cfg, tmp_path / task)
        folders[task] = tmp_path / task
    mix = ",".join(f"{t}={p}" for t, p in folders.items())
    capsys.readouterr()
    code = main(["eval", "--mix", mix, "--task", "sst2", "--weights", '{"sst2": 0.6, "trec": 0.4}',
                 "--data-dir", str(data_dir), "--limit", "4", "--elbo-samples", "1", "--json", "-"])
    out = capsys.readouterr().out
    assert code == 0
    payload = json.loads(out)
    assert payload["weights"] == {"sst2": 0.6, "trec": 0.4} and "add_weighted_adapter" in payload["merge"]
    assert main(["eval", "--mix", mix, "--task", "sst2", "--weights", "auto", "--data-dir", str(data_dir),
                 "--limit", "2", "--elbo-samples", "1", "--json", "-"]) == 0  # auto = uniform for a mix
    assert json.loads(capsys.readouterr().out)["weights"] == {"sst2": 0.5, "trec": 0.5}


def _version_bytes(root: Path, name: str, version: int) -> dict[str, bytes]:
    folder = root / name / str(version)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_train_adapters_publishes_new_versions_and_keeps_the_old(adapters, small_base, data_dir, tmp_path):
    """router.train_adapters: the adapters change, are published as new versions next to the
    untouched old ones, and the router, a rerun of train-all and its bundle name the new ones."""
    from safetensors.torch import load_file

    from ldp.jobs.recipe import train_locally
    from ldp.jobs.router_job import publish_router, routed_adapters
    from ldp.jobs.train_all import _Progress, _router, publish_bundle
    from ldp.jobs.train_all_spec import PipelineSpec, router_job_spec
    from ldp.methods.router import load_router
    from ldp.store import Registry

    root = tmp_path / "reg"
    reg = Registry(root.as_uri())
    old = {t: str(reg.publish(f"adapters/{t}/lora-diffusion", folder)) for t, folder in adapters.items()}
    before = {t: _version_bytes(root, f"adapters/{t}/lora-diffusion", 1) for t in TASKS}
    spec = PipelineSpec(
        tasks=TASKS, name="joint", base=str(small_base.folder), registry=root.as_uri(),
        data_dir=str(data_dir), router_steps=3,
        router={"hidden": 32, "train_limit": 16, "val_limit": 4, "loop": {"batch_size": 8},
                "optim": {"lr": 1e-2, "warmup_steps": 1}, "train_adapters": True, "adapter_lr": 1e-3},
    )
    rspec = router_job_spec(spec, spec.base, old)  # exactly what train-all runs as the router job
    artifact = tmp_path / "artifact"
    train_locally("ldp.training.recipes.router", rspec["config"], artifact)
    out = publish_router(reg, rspec, artifact, {}, "job-joint", log=lambda m: None)

    new = {t: f"adapters/{t}/lora-diffusion@2" for t in TASKS}
    assert out == {"ref": "routers/joint@1", "adapters": new}
    assert routed_adapters(reg, out["ref"]) == new
    router_dir = Path(reg.pull(out["ref"]))
    assert not (router_dir / "adapters").exists()  # the adapters live under their own names
    assert json.loads((router_dir / "router_config.json").read_text())["adapters"] == new
    assert load_router(router_dir).tasks == TASKS
    for task in TASKS:
        assert _version_bytes(root, f"adapters/{task}/lora-diffusion", 1) == before[task]
        was = load_file(str(Path(reg.pull(old[task])) / "adapter_model.safetensors"))
        now = load_file(str(Path(reg.pull(new[task])) / "adapter_model.safetensors"))
        assert was.keys() == now.keys()
        assert any(not torch.equal(was[k], now[k]) for k in was), f"{task}: adapter weights unchanged"
        assert reg.open_manifest(new[task]).metadata["tuned_from"] == old[task]

    # train-all rerun: the router is reused and comes with the fine-tuned adapters; the bundle
    # names those, and the plain adapters it started from stay reusable under their own hash.
    logs: list[str] = []
    ref, routed = _router(spec, spec.base, old, "job-rerun", reg, _Progress(TASKS, logs.append), logs.append)
    assert (ref, routed) == ("routers/joint@1", new)
    bundle = publish_bundle(spec, reg, spec.base, routed, ref, {}, {}, None, "job-rerun")
    assert json.loads(reg.read_bytes(bundle, "bundle.json"))["adapters"] == new


def test_an_adapter_loads_onto_a_preloaded_base_and_only_onto_its_own(adapters, small_base, tmp_path):
    from ldp.bases import load_adapted, load_base_from
    from ldp.errors import UsageError

    loaded = load_base_from(str(small_base.folder))
    model, _, info = load_adapted(str(adapters["trec"]), loaded=loaded)
    assert model.base is loaded.model and info["base"] == loaded.source.ref

    other = load_base_from(str(_other_base(small_base, tmp_path)))
    with pytest.raises(UsageError, match="not on this base"):
        load_adapted(str(adapters["trec"]), loaded=other)

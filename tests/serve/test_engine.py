"""The serving engine and CLI without Ray: cache, validation, config file, ldp generate."""

from __future__ import annotations

import json

import pytest
import yaml

from ldp.cli.main import main
from ldp.errors import NotFoundError, UsageError


@pytest.fixture(scope="module")
def engine(serve_registry):
    from ldp.serve import ServeOptions
    from ldp.serve.engine import Engine

    return Engine(ServeOptions(registry=serve_registry["registry"], bundle=serve_registry["bundle"],
                               cache_size=2, max_new_tokens=8, max_steps=8))


def test_cache_evicts_least_recently_used_unpinned(engine, serve_registry):
    refs = serve_registry["adapters"]
    job = engine.prepare("x", adapters={"sst2": 1, "trec": 1, "squad": 1}, max_new_tokens=2, steps=2)
    held = {e.ref for e in engine.cache.entries()}
    assert {refs["sst2"], refs["trec"], refs["squad"]} <= held  # pinned: kept beyond capacity
    evictions = engine.cache.evictions
    engine.run([job])  # releases the pins
    assert len(engine.cache.entries()) <= 2 and engine.cache.evictions > evictions
    assert set(engine.composition.names) == {e.ref for e in engine.cache.entries() if e.kind == "compose"}
    again = engine.run([engine.prepare("x", adapters="trec", max_new_tokens=2, steps=2)])[0]
    assert again.weights == {"trec": 1.0}


def test_mixed_rows_equal_rows_alone_in_process(engine, serve_registry):
    reqs = [dict(prompt="a b c", adapters="sst2", seed=1, max_new_tokens=4, steps=4),
            dict(prompt="a much longer prompt than the others here", adapters={"trec": 2, "gsm8k": 1}, steps=8),
            dict(prompt="q", adapters=serve_registry["weight_lora"], temperature=1.0, seed=3),
            dict(prompt="z y", threshold=0.5)]
    together = engine.run([engine.prepare(**r) for r in reqs])
    for r, t in zip(reqs, together):
        alone = engine.run([engine.prepare(**r)])[0]
        assert (alone.text, alone.steps, alone.ids) == (t.text, t.steps, t.ids)
    assert together[1].weights == pytest.approx({"trec": 2 / 3, "gsm8k": 1 / 3})


@pytest.mark.parametrize("kwargs, error, words", [
    ({"adapters": {"sst2": float("nan")}}, UsageError, "finite"),
    ({"adapters": {}}, UsageError, "empty"),
    ({"adapters": "adapters/none/lora-diffusion@1"}, NotFoundError, "not found"),
    ({"adapters": "auto", "bundle": "bundles/missing@1"}, NotFoundError, "not found"),
    ({"max_new_tokens": 9}, UsageError, "max_new_tokens"),
    ({"threshold": 0.0}, UsageError, "threshold"),
    ({"temperature": float("inf")}, UsageError, "temperature"),
])
def test_bad_requests_raise_before_denoising(engine, kwargs, error, words):
    with pytest.raises(error, match=words):
        engine.prepare("hello", **kwargs)
    assert all(e.pins == 0 for e in engine.cache.entries())  # nothing left pinned


def test_config_out_is_a_valid_serve_config(serve_registry, tmp_path, capsys):
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "serve.yaml"
    code = main(["serve", "--bundle", serve_registry["bundle"], "--registry", serve_registry["registry"],
                 "--replicas", "2", "--config-out", str(out)])
    assert code == 0
    cfg = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(cfg)
    app = cfg["applications"][0]
    assert app["import_path"] == "ldp.serve.deployment:app_builder"
    assert app["args"]["bundle"] == serve_registry["bundle"] and app["deployments"][0]["num_replicas"] == 2
    from ldp.serve.deployment import app_builder

    assert app_builder(app["args"]) is not None  # the args build the application


@pytest.mark.parametrize("args, words", [
    (["serve", "--bundle", "nope"], "bundles/NAME@VERSION"),
    (["serve", "--port", "0", "--base", "x"], "--port"),
    (["serve", "--adapters", "not-a-ref"], "neither"),
    (["serve", "--cache-size", "0", "--base", "x"], "cache-size"),
    (["generate", "--prompt", "x", "--adapters", "{bad json"], "JSON"),
    (["generate", "--prompt", "x", "--adapters", "a=heavy"], "not a number"),
    (["generate", "--prompt", "x"], "give --bundle"),
])
def test_cli_bad_input_exits_2_with_one_line(args, words, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_generate_cli_json_and_stream(serve_registry, capsys):
    reg = serve_registry["registry"]
    args = ["generate", "--prompt", "Review: fine.", "--bundle", serve_registry["bundle"], "--adapters", "auto",
            "--steps", "4", "--max-new-tokens", "4", "--registry", reg]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 4 and set(out["weights"]) == {"sst2", "agnews", "trec", "squad", "gsm8k"}
    assert main([*args, "--stream"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line[:5] for line in lines[:4]] == ["[  1]", "[  2]", "[  3]", "[  4]"]
    assert lines[-1] == out["text"]
    assert main(["generate", "--prompt", "x", "--adapters", "sst2=-1", "--bundle", serve_registry["bundle"],
                 "--registry", reg]) == 2

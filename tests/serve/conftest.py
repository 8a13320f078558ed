"""Fixtures for the serving tests: a registry with five composable adapters (random weights,
so that each one visibly changes the answer), a weight-lora adapter, a router and a bundle, all
on a small native base with random weights (serving needs shapes and determinism, not skill;
building it takes a second where training one takes minutes on a busy machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TASKS = ["sst2", "agnews", "trec", "squad", "gsm8k"]


def build_registry(base_folder: Path, root: Path) -> dict:
    """Publish the adapters, router and bundle; returns their references."""
    from ldp.methods import attach, base_fingerprint
    from ldp.methods.router import Router
    from ldp.models.loading import load_base
    from ldp.store import Registry

    reg = Registry(root.as_uri())
    refs: dict = {"registry": root.as_uri(), "adapters": {}}
    base, _ = load_base(base_folder)
    base_hash = base_fingerprint(base)
    for i, task in enumerate(TASKS):
        base, _ = load_base(base_folder)
        # fp32 base: the tests compare a row of a mixed batch with the row alone token for token;
        # a bf16 base (`auto` on CPUs with native bf16) rounds differently per batch shape.
        model = attach(base, "lora-diffusion", {"ranks": [16, 8, 4], "base_dtype": "fp32"},
                       base_hash=base_hash)
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        folder = root.parent / f"src-{task}"
        model.save_adapter(folder, base_name=str(base_folder))
        (folder / "metrics.json").write_text("{}")
        refs["adapters"][task] = str(reg.publish(f"adapters/{task}/lora-diffusion", folder))
    base, _ = load_base(base_folder)
    wl = attach(base, "weight-lora", {"r": 4}, base_hash=base_hash)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in wl.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    folder = root.parent / "src-wl"
    wl.save_adapter(folder, base_name=str(base_folder))
    (folder / "metrics.json").write_text("{}")
    refs["weight_lora"] = str(reg.publish("adapters/sst2/weight-lora", folder))
    router = Router(TASKS, base.hidden_size, hidden=32, base_hash=base_hash)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in router.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    folder = root.parent / "src-router"
    router.save(folder, base_name=str(base_folder))
    (folder / "metrics.json").write_text("{}")
    refs["router"] = str(reg.publish("routers/five", folder))
    folder = root.parent / "src-bundle"
    folder.mkdir()
    (folder / "bundle.json").write_text(json.dumps({
        "base": str(base_folder), "adapters": refs["adapters"], "router": refs["router"]}))
    (folder / "metrics.json").write_text("{}")
    refs["bundle"] = str(reg.publish("bundles/five", folder))
    return refs


SMALL_NATIVE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


def random_base(folder: Path) -> Path:
    """A small native base (MiniLM's tokenizer) with random weights, saved in ``folder``."""
    from ldp.models.loading import default_tokenizer, save_base
    from ldp.models.native import DiffusionTransformer
    from ldp.models.sizes import size_config

    torch.manual_seed(0)
    config = size_config("tiny", **SMALL_NATIVE)
    save_base(DiffusionTransformer(config).eval(), default_tokenizer(config.tokenizer), folder)
    return folder


@pytest.fixture(scope="session")
def serve_registry(tmp_path_factory):
    top = tmp_path_factory.mktemp("serve_reg")
    base = random_base(top / "base")
    root = top / "registry"
    root.mkdir()
    refs = build_registry(base, root)
    refs["base"] = str(base)
    return refs


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve_app(serve_registry, ray_session_home, tmp_path_factory):
    """One local Ray + Serve app per test module (start and stop take ~20 s on 2 CPUs).

    Yields ``{"url", "refs", "options"}``. Two applications run: ``/`` with a cache large enough
    for every adapter, ``/small`` with a cache of 3 (the load test makes it evict and reload) and
    tiny request limits (the fuzz test)."""
    import os

    import ray
    from ray import serve

    from ldp.serve import ServeOptions
    from ldp.serve.deployment import build_app

    env = {**ray_session_home, "LDP_HOME": str(tmp_path_factory.mktemp("serve_home")),
           "OMP_NUM_THREADS": "1", "RAY_DISABLE_USAGE_STATS": "1", "TOKENIZERS_PARALLELISM": "false"}
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        mp.delenv(key, raising=False)
    if ray.is_initialized():
        ray.shutdown()
    for attempt in range(3):  # Ray gives its raylet 30 s to register: too short on a busy host
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False,
                     runtime_env={"env_vars": dict(env)})
            break
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            ray.shutdown()
    port = free_port()
    common = dict(registry=serve_registry["registry"], bundle=serve_registry["bundle"],
                  adapters=[serve_registry["weight_lora"]], max_new_tokens=16, default_new_tokens=8,
                  max_steps=16, max_batch_size=8, batch_wait_s=0.05, num_cpus=0.5)
    options = ServeOptions(cache_size=16, **common)
    # Small requests only (<= 4 tokens, <= 8 steps): the fuzz and load tests send many.
    small = ServeOptions(cache_size=3, **{**common, "adapters": [], "max_new_tokens": 4,
                                          "default_new_tokens": 2, "max_steps": 8})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(options), name="ldp", route_prefix="/")
        serve.run(build_app(small), name="small", route_prefix="/small")
        yield {"url": f"http://127.0.0.1:{port}", "refs": serve_registry, "options": options}
    finally:
        try:
            serve.shutdown()
        finally:
            if ray.is_initialized():
                ray.shutdown()
            mp.undo()
            os.environ.pop("RAY_ADDRESS", None)

"""A bundle published by ``ldp train-all``'s own publishing code is what the serving engine reads."""

from __future__ import annotations

import json


def test_train_all_bundle_loads_in_the_serving_engine(serve_registry):
    from ldp.jobs.train_all import publish_bundle
    from ldp.jobs.train_all_spec import PipelineSpec
    from ldp.serve import ServeOptions
    from ldp.serve.engine import Engine
    from ldp.store import Registry

    reg = Registry(serve_registry["registry"])
    adapters = dict(serve_registry["adapters"])
    spec = PipelineSpec(tasks=list(adapters), name="from-train-all", registry=serve_registry["registry"])
    metrics = {t: {"adapter": {"primary": "accuracy"}} for t in adapters}
    ref = publish_bundle(spec, reg, serve_registry["base"], adapters, serve_registry["router"], metrics,
                         {}, None, "job-bundle")
    assert json.loads(reg.read_bytes(ref, "bundle.json"))["base"] == {"ref": serve_registry["base"], "digest": None}

    engine = Engine(ServeOptions(registry=serve_registry["registry"], bundle=ref, max_new_tokens=4, max_steps=4))
    bundle = engine.default_bundle
    assert (bundle.ref, bundle.adapters, bundle.router, bundle.base) == (
        ref, adapters, serve_registry["router"], serve_registry["base"])
    assert engine.base_ref == serve_registry["base"]  # the base came from the bundle
    out = engine.run([engine.prepare("Review: a fine film.", adapters="auto", max_new_tokens=2, steps=2)])[0]
    assert set(out.weights) == set(adapters) and abs(sum(out.weights.values()) - 1) < 1e-5

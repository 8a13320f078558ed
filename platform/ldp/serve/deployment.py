"""The Ray Serve deployment: one replica = one :class:`~ldp.serve.engine.Engine` behind the
FastAPI app of :mod:`ldp.serve.api`.

Requests are prepared concurrently (adapter loads run in threads, so a request for an adapter
not yet loaded never holds up the others), then ``@serve.batch`` gathers them: the batch runs in a
worker thread while the event loop keeps answering health checks and streaming events. Serve's
``@serve.multiplexed`` is not used: it splits batches by model id, and the point here is that
requests for different adapter mixes share every base forward.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from ldp.serve.options import ServeOptions

__all__ = ["LdpServer", "build_app", "app_builder", "DEPLOYMENT_NAME"]

DEPLOYMENT_NAME = "LdpServer"


@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=64)
@serve.ingress()
class LdpServer:
    def __init__(self, options: dict[str, Any]) -> None:
        import torch

        from ldp.serve.engine import Engine

        self.options = ServeOptions(**options)
        # Torch's default thread count oversubscribes a shared CPU host: one per reserved CPU.
        torch.set_num_threads(max(1, int(self.options.num_cpus)))
        self.engine = Engine(self.options)
        self._batch.set_max_batch_size(self.options.max_batch_size)
        self._batch.set_batch_wait_timeout_s(self.options.batch_wait_s)

    def __serve_build_asgi_app__(self):
        from ldp.serve.api import create_api

        return create_api(self)

    # -- the backend protocol of ldp.serve.api
    async def prepare(self, fields: dict[str, Any]):
        return await asyncio.to_thread(lambda: self.engine.prepare(**fields))

    async def generate(self, job):
        return await self._batch(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _batch(self, jobs: list) -> list:
        return await asyncio.to_thread(self.engine.run, jobs)

    def partial_text(self, ids: list[int]) -> str:
        return self.engine.partial_text(ids)

    async def describe(self) -> dict[str, Any]:
        return describe(self.engine)

    async def models(self) -> list[str]:
        return model_ids(self.engine)


def describe(engine) -> dict[str, Any]:
    """Health and adapter listing of an engine (for ``/healthz`` and ``/adapters``)."""
    loaded = {e.ref: e for e in engine.cache.entries() if e.kind != "router"}
    rows = [{"ref": e.ref, "task": e.task, "method": e.method, "loaded": True,
             "composable": e.kind == "compose"} for e in loaded.values()]
    known = list(engine.options.adapters)
    if engine.default_bundle is not None:
        known += list(engine.default_bundle.adapters.values())
    for ref in known:
        if ref not in loaded and not any(r["ref"] == ref for r in rows):
            parts = ref.split("@")[0].split("/")
            rows.append({"ref": ref, "task": parts[1] if len(parts) > 2 else ref,
                         "method": parts[2] if len(parts) > 2 else "", "loaded": False,
                         "composable": True})
    health = {"base": engine.base_ref, "bundle": engine.default_bundle.ref if engine.default_bundle else None,
              "loaded": len(loaded), "loads": engine.cache.loads, "evictions": engine.cache.evictions}
    return {"health": health, "adapters": rows}


def model_ids(engine) -> list[str]:
    """``/v1/models``: what ``model`` may name."""
    ids = ["base"]
    if engine.default_bundle is not None:
        ids += ["auto", engine.default_bundle.ref, *engine.default_bundle.adapters]
    for row in describe(engine)["adapters"]:
        ids.append(row["ref"])
    return list(dict.fromkeys(ids))


def build_app(options: ServeOptions):
    """The Serve application (``serve.run(build_app(opts))``)."""
    return LdpServer.options(
        num_replicas=options.replicas,
        ray_actor_options={"num_cpus": options.num_cpus},
        max_ongoing_requests=max(64, 4 * options.max_batch_size),
    ).bind(options.to_dict())


def app_builder(args: dict[str, Any]):
    """Entry for Serve config files (``import_path: ldp.serve.deployment:app_builder``)."""
    return build_app(ServeOptions(**(args or {})))

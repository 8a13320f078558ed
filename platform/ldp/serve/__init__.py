"""Composed inference over Ray Serve.

- :mod:`~ldp.serve.engine`: :class:`Engine` (base, adapter/router cache, batches of mixed requests)
- :mod:`~ldp.serve.cache`: the LRU of adapters and routers pulled from the registry
- :mod:`~ldp.serve.bundle`: reading ``bundles/NAME@VERSION``
- :mod:`~ldp.serve.api`: the FastAPI app (``/generate``, ``/v1/completions``, ``/v1/models``,
  ``/adapters``, ``/healthz``, the playground at ``/``)
- :mod:`~ldp.serve.deployment`: the Serve deployment and application builder
- :mod:`~ldp.serve.config`: Serve config YAML for ``serve deploy`` / KubeRay ``RayService``
- :mod:`~ldp.serve.bench`: ``ldp bench serve``

Importing this package imports neither Ray nor torch.
"""

from ldp.serve.options import ServeOptions

__all__ = ["ServeOptions"]

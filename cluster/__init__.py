"""Reaching a Ray cluster, placement, strategy choice, memory estimates. Imported as ``ldp.cluster``.

- :mod:`~ldp.cluster.connect`: :func:`connect` — embedded local Ray by default, ``--address`` /
  ``RAY_ADDRESS`` (``host:port``, ``ray://``, ``http://`` Jobs API) otherwise.
- :mod:`~ldp.cluster.local`: a long-lived local head for ``ldp cluster up|down|status``.
- :mod:`~ldp.cluster.resources`: :func:`check_fits` — refuse jobs the cluster can never place.
- :mod:`~ldp.cluster.placement`: :func:`scaling_config` — Ray Train V2 ``ScalingConfig``.
- :mod:`~ldp.cluster.memory`: :func:`estimate_memory`, :func:`memory_table` — per-GPU bytes
  per strategy, frozen base counted as weights only.
- :mod:`~ldp.cluster.strategy`: :func:`choose_strategy` (``--strategy auto``) and
  :func:`deepspeed_config`.
- ``configs/``: Ray cluster-launcher YAMLs (``ray up cluster/configs/<name>.yaml``).

Importing this package imports neither Ray nor DeepSpeed; they load when a function needs them.
"""

from ldp.cluster.connect import ClusterHandle, connect, resolve_address, worker_env
from ldp.cluster.local import HeadInfo, head_status, running_head, start_head, stop_head
from ldp.cluster.memory import (
    STRATEGIES,
    MemoryEstimate,
    MemoryRow,
    estimate_memory,
    estimate_strategies,
    format_bytes,
    memory_table,
)
from ldp.cluster.placement import PLACEMENT_STRATEGIES, scaling_config, worker_resources
from ldp.cluster.resources import (
    ClusterResources,
    FitReport,
    NodeResources,
    check_fits,
    cluster_resources,
    cpus_per_worker_for,
)
from ldp.cluster.strategy import (
    DEFAULT_HEADROOM,
    STRATEGY_CHOICES,
    ZERO_STAGE,
    choose_strategy,
    deepspeed_config,
    parse_strategy,
)

__all__ = [  # noqa: RUF022 - grouped by module
    # connect
    "ClusterHandle",
    "connect",
    "resolve_address",
    "worker_env",
    # local head
    "HeadInfo",
    "start_head",
    "stop_head",
    "running_head",
    "head_status",
    # resources
    "ClusterResources",
    "NodeResources",
    "FitReport",
    "cluster_resources",
    "cpus_per_worker_for",
    "check_fits",
    # placement
    "PLACEMENT_STRATEGIES",
    "scaling_config",
    "worker_resources",
    # memory
    "STRATEGIES",
    "MemoryEstimate",
    "MemoryRow",
    "estimate_memory",
    "estimate_strategies",
    "memory_table",
    "format_bytes",
    # strategy
    "STRATEGY_CHOICES",
    "ZERO_STAGE",
    "DEFAULT_HEADROOM",
    "parse_strategy",
    "choose_strategy",
    "deepspeed_config",
]

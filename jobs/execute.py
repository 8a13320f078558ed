"""What a job spec runs: a registry of job kinds, each a function ``(spec, job_id) -> result``.

``spec["kind"]`` (default ``adapter``) names the kind. Built in:

==========  ===================================  ==========================================
kind        function                             what it does
==========  ===================================  ==========================================
adapter     ``ldp.jobs.adapter_job:execute``     trains one task adapter, publishes it
sweep       ``ldp.jobs.sweep:execute``           Ray Tune over an adapter job's config; the
                                                 best adapter and the sweep record published
train-all   ``ldp.jobs.train_all:execute``       every task adapter (Ray tasks), the router,
                                                 the composition bundle
router      ``ldp.jobs.router_job:execute``      the router over published adapters
compare     ``ldp.jobs.compare:execute``         every method on every task (Table 7)
report      ``ldp.jobs.report:execute``          the paper's tables and figures (REPORT.md)
==========  ===================================  ==========================================

A kind may also be given as an import path ``"package.module:function"``; that is how tests and
plug-ins run their own kinds in ``ldp _run-job`` subprocesses and on remote clusters, where an
in-process :func:`register_kind` call is not visible. The function returns a JSON-able dict,
conventionally ``{"ref": <registry reference or None>, "metrics": {...}}``; it is stored as the
job record's ``result``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

from ldp.errors import UsageError

__all__ = ["JOB_KINDS", "JobFn", "execute", "register_kind", "resolve_kind"]

JobFn = Callable[[dict[str, Any], str], dict[str, Any]]

JOB_KINDS: dict[str, str | JobFn] = {
    "adapter": "ldp.jobs.adapter_job:execute",
    "sweep": "ldp.jobs.sweep:execute",
    "train-all": "ldp.jobs.train_all:execute",
    "router": "ldp.jobs.router_job:execute",
    "compare": "ldp.jobs.compare:execute",
    "report": "ldp.jobs.report:execute",
}


def register_kind(name: str, target: str | JobFn) -> None:
    """Add (or replace) job kind ``name``: an import path ``"module:function"`` or a callable."""
    if not name or ":" in name:
        raise ValueError(f"invalid job kind name {name!r}")
    JOB_KINDS[name] = target


def _import(path: str, kind: str) -> JobFn:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UsageError(f"job kind {kind!r}: {path!r} is not 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UsageError(f"job kind {kind!r}: cannot import {module_name!r} ({exc})") from exc
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise UsageError(f"job kind {kind!r}: {module_name} has no {attr!r}")
    if not callable(fn):
        raise UsageError(f"job kind {kind!r}: {path} is not callable")
    return fn


def resolve_kind(kind: str) -> JobFn:
    """The function of a registered kind name or of a ``"module:function"`` kind."""
    target = JOB_KINDS.get(kind)
    if target is None:
        if ":" not in kind:
            known = ", ".join(sorted(JOB_KINDS))
            raise UsageError(f"unknown job kind {kind!r}; known: {known} (or 'module:function')")
        target = kind
    return _import(target, kind) if isinstance(target, str) else target


def execute(spec: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Run the job ``spec`` describes (in this process) and return its JSON-able result."""
    if not isinstance(spec, dict):
        raise UsageError("a job spec is a mapping")
    kind = str(spec.get("kind") or "adapter")
    result = resolve_kind(kind)(spec, job_id)
    if result is None:
        result = {}
    if not isinstance(result, dict):
        raise TypeError(f"job kind {kind!r} returned {type(result).__name__}, not a dict")
    json.dumps(result)  # must be storable in status.json and the LDP_RESULT line
    return result

"""Reading a composition bundle (``bundles/NAME@VERSION``) from the registry.

A bundle version holds ``bundle.json``: the base, one adapter reference per task and the router
over them, e.g. ``{"base": "bases/tiny@3", "adapters": {"sst2": "adapters/sst2/lora-diffusion@4",
...}, "router": "routers/all@2"}``. References may also be given as ``{"ref": ...}`` objects and
``adapters`` as a list of ``{"task", "ref"}`` rows; other keys (metrics, the pipeline spec) are
ignored here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ldp.errors import LdpError, UsageError

__all__ = ["BUNDLE_FILE", "Bundle", "read_bundle"]

BUNDLE_FILE = "bundle.json"


@dataclass(frozen=True)
class Bundle:
    ref: str
    adapters: dict[str, str]
    """task -> adapter reference, in the router's column order when the router names them."""
    router: str | None
    base: str | None


def _ref(value: Any, what: str, bundle: str) -> str:
    if isinstance(value, dict):
        value = value.get("ref")
    if not isinstance(value, str) or not value:
        raise UsageError(f"bundle {bundle}: {what} is not a reference")
    return value


def parse_bundle(ref: str, data: Any) -> Bundle:
    if not isinstance(data, dict):
        raise UsageError(f"bundle {ref}: {BUNDLE_FILE} is not an object")
    raw = data.get("adapters")
    if isinstance(raw, list):
        raw = {row.get("task"): row for row in raw if isinstance(row, dict)}
    if not isinstance(raw, dict) or not raw:
        raise UsageError(f"bundle {ref}: no adapters listed")
    adapters = {str(task): _ref(v, f"adapter {task!r}", ref) for task, v in raw.items()}
    router = data.get("router")
    base = data.get("base")
    return Bundle(
        ref=ref,
        adapters=adapters,
        router=_ref(router, "router", ref) if router else None,
        base=_ref(base, "base", ref) if base else None,
    )


def read_bundle(registry, ref: str) -> Bundle:
    """The bundle at ``ref`` (resolved to its concrete version), checksum-verified."""
    concrete = registry.resolve(ref)
    try:
        data = registry.read_json(concrete, BUNDLE_FILE)
    except (LdpError, ValueError) as exc:  # no bundle.json in that version, or bad JSON
        raise UsageError(f"bundle {concrete}: cannot read {BUNDLE_FILE} ({exc})") from None
    return parse_bundle(str(concrete), data)

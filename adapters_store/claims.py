"""Version claims: how publishers get distinct version numbers without a lock server.

A publisher lists the name's version folders, takes ``max + 1`` and creates
``<version>/_claim.json`` create-only; if another publisher got there first it tries the next
number. Claims are never deleted, so a number, once handed out, is never handed out again (even
after ``rm`` or ``gc``). While uploading, the publisher rewrites its claim now and then: the
claim's age is the time since the publisher last showed progress, which is what ``gc`` uses to
tell a slow publisher from a dead one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from .manifest import utc_now

__all__ = ["CLAIM", "Heartbeat", "claim_bytes", "parse_claim", "publisher_is_gone"]

CLAIM = "_claim.json"
HEARTBEAT_SECONDS = 30.0


def claim_bytes(ref: str, token: str, job: str | None) -> bytes:
    doc = {
        "ref": ref,
        "token": token,
        "job": job,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "claimed": utc_now(),
        "heartbeat": time.time(),
    }
    return json.dumps(doc, sort_keys=True).encode()


def parse_claim(data: bytes | None) -> dict[str, Any]:
    try:
        doc = json.loads(data) if data else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def publisher_is_gone(claim: dict[str, Any]) -> bool:
    """True when the claim's publisher ran on this host and its process no longer exists."""
    pid = claim.get("pid")
    if claim.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Heartbeat:
    """Rewrites the claim at most every ``every`` seconds (and when forced)."""

    def __init__(self, write, every: float = HEARTBEAT_SECONDS) -> None:
        self._write = write
        self._every = every
        self._last = time.monotonic()

    def maybe(self) -> None:
        if time.monotonic() - self._last >= self._every:
            self.beat()

    def beat(self) -> None:
        self._write()
        self._last = time.monotonic()

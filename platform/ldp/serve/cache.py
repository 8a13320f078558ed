"""The replica's LRU cache of adapters and routers pulled from the registry.

Final-state adapters (lora-diffusion) join the shared :class:`~ldp.methods.compose.Composition`
(one base forward serves all of them); any other method (weight-lora, prefix, ...) changes the
base's own modules and so gets a private copy of the base (weight-lora merged into it), run as a
group of its own in a batch: the cost is one base copy in memory per such adapter and one more
base forward per step for each distinct one in a batch.

Concurrency: a request pins the entries it uses for its whole life; loading happens outside the
run lock (pull, verify, read weights, build), so a slow load never stalls batches already
running; only the final insertion into the composition waits for the current step to end. When
the cache holds more than ``capacity`` entries, the least recently used unpinned ones are
evicted (a cache of pinned entries may exceed capacity for a while rather than fail requests).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ldp.errors import UsageError

__all__ = ["CacheEntry", "ModelCache"]


@dataclass(eq=False)
class CacheEntry:
    ref: str
    """Concrete registry reference (``adapters/sst2/lora-diffusion@3``) or a folder path."""
    kind: str
    """``compose`` (in the shared composition), ``standalone`` (own base copy) or ``router``."""
    task: str
    method: str
    module: Any
    """The adapter (compose), a ``hidden(x, t, attn, instr)`` callable (standalone), or the router."""
    pins: int = 0
    used: float = field(default_factory=time.monotonic)


class ModelCache:
    def __init__(
        self,
        base: torch.nn.Module,
        base_hash: str,
        composition: Any,
        run_lock: threading.Lock,
        capacity: int,
        fetch: Callable[[str], Path],
    ) -> None:
        self.base, self.base_hash, self.composition = base, base_hash, composition
        self.run_lock = run_lock
        self.capacity = capacity
        self.fetch = fetch  # ref -> verified local folder
        self._meta = threading.Lock()
        self._entries: dict[str, CacheEntry] = {}
        self._loading: dict[str, Future] = {}
        self.loads = 0
        self.evictions = 0

    # -- queries
    def entries(self) -> list[CacheEntry]:
        with self._meta:
            return list(self._entries.values())

    def __contains__(self, ref: str) -> bool:
        with self._meta:
            return ref in self._entries

    # -- pinning
    def acquire(self, ref: str, kind: str = "adapter") -> CacheEntry:
        """Pin ``ref`` (loading it first if needed); pair with :meth:`release`."""
        while True:
            with self._meta:
                entry = self._entries.get(ref)
                if entry is not None:
                    entry.pins += 1
                    entry.used = time.monotonic()
                    return entry
                future = self._loading.get(ref)
                loader = future is None
                if loader:
                    future = self._loading[ref] = Future()
            if not loader:
                future.result()  # raises the loader's error; else loop and pin it
                continue
            try:
                entry = self._build(ref, kind)
                self._insert(entry)
            except BaseException as exc:
                with self._meta:
                    self._loading.pop(ref, None)
                future.set_exception(exc)
                raise
            future.set_result(entry)
            self._evict()
            return entry

    def release(self, entries: list[CacheEntry]) -> None:
        with self._meta:
            for entry in entries:
                entry.pins -= 1
        self._evict()

    # -- loading
    def _build(self, ref: str, kind: str) -> CacheEntry:
        from ldp.methods import load_adapter, read_adapter_config

        folder = self.fetch(ref)
        if kind == "router":
            from ldp.methods.router import load_router

            router = load_router(folder, base_hash=self.base_hash)
            return CacheEntry(ref, "router", ",".join(router.tasks), "router", router)
        meta = read_adapter_config(folder)
        method = str(meta.get("ldp_method"))
        task = str(meta.get("task") or _task_of(ref))
        if meta.get("base_hash") != self.base_hash:
            raise UsageError(
                f"adapter {ref} was trained on base {meta.get('base_model_name_or_path')!r}, "
                "not on the base this server holds"
            )
        config = meta.get("ldp_config") or {}
        if method == "lora-diffusion" and not config.get("inject_layers"):
            adapter = load_adapter(self.base, folder, base_hash=self.base_hash).eval()
            return CacheEntry(ref, "compose", task, method, adapter)
        private = copy.deepcopy(self.base)
        adapted = load_adapter(private, folder, base_hash=self.base_hash).eval()
        if method == "weight-lora":
            merged = adapted.peft_model.merge_and_unload().eval()

            def hidden(x, t, attn, instr, _m=merged):
                return _m.hidden_states(x, t, attn)
        else:
            def hidden(x, t, attn, instr, _m=adapted):
                return _m.hidden_states(x, t, attn, instruction_mask=instr)
        return CacheEntry(ref, "standalone", task, method, hidden)

    def _insert(self, entry: CacheEntry) -> None:
        if entry.kind == "compose":
            with self.run_lock:
                if entry.ref in self.composition:  # an eviction of the same ref still pending
                    self.composition.remove(entry.ref)
                self.composition.add(entry.ref, entry.module)
        with self._meta:
            entry.pins = 1
            self._entries[entry.ref] = entry
            self._loading.pop(entry.ref, None)
            self.loads += 1

    def _evict(self) -> None:
        victims: list[CacheEntry] = []
        with self._meta:
            while len(self._entries) > self.capacity:
                free = [e for e in self._entries.values() if e.pins <= 0]
                if not free:
                    break
                victim = min(free, key=lambda e: e.used)
                del self._entries[victim.ref]
                victims.append(victim)
                self.evictions += 1
        for victim in victims:
            if victim.kind == "compose":
                with self.run_lock:
                    comp = self.composition
                    if victim.ref in comp and comp.adapter(victim.ref) is victim.module:
                        comp.remove(victim.ref)


def _task_of(ref: str) -> str:
    parts = ref.split("@")[0].split("/")
    return parts[1] if len(parts) >= 3 and parts[0] == "adapters" else Path(ref).name

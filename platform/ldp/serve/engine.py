"""The serving engine: one frozen base, an adapter/router cache, batches of mixed requests.

Plain Python (no Ray, no HTTP): the Serve deployment wraps it, ``ldp generate`` and
``ldp bench serve`` use it directly.

A request is first *prepared* (validated, tokenised, its adapter mix resolved against the
registry and its adapters pinned in the cache; every client error is raised here, before any
denoising). Prepared requests are then *run* together: :func:`ldp.diffusion.sample_rows` calls
:meth:`Engine._hidden` once per denoising step for all active rows, which runs the frozen base
once for every row that composes (explicit mixes, ``auto`` over any bundle, the base alone) and
adds each row's own weighted sum of adapter perturbations (the composition runs each adapter on
the rows that use it); rows on a standalone adapter (weight-lora and other methods that change
the base itself) run as one group per adapter.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ldp.diffusion import DiffusionConfig, RowSpec, sample_rows
from ldp.errors import NotFoundError, UsageError
from ldp.serve.bundle import Bundle, read_bundle
from ldp.serve.cache import CacheEntry, ModelCache
from ldp.serve.options import ServeOptions

__all__ = ["Engine", "Prepared", "Output", "MAX_MIX", "check_request"]

MAX_MIX = 16
"""Most adapters one explicit mix may name."""

StepCallback = Callable[[int, list[int], dict[str, float]], None]
"""``on_step(steps_taken, answer_ids, weights)`` for one request."""


@dataclass(eq=False)
class Prepared:
    """A validated request, ready to be denoised with others."""

    prompt_ids: list[int]
    instruction: list[bool]
    gen_length: int
    steps: int
    temperature: float
    threshold: float | None
    seed: int
    kind: str
    """``base``, ``mix`` (explicit weights), ``auto`` (a bundle's router) or ``standalone``."""
    weights: dict[str, float] = field(default_factory=dict)
    """Adapter ref -> normalised weight (``mix``); the adapter ref (``standalone``)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Adapter ref -> the name the caller used (task or reference), for the response."""
    bundle: Bundle | None = None
    pins: list[CacheEntry] = field(default_factory=list)
    on_step: StepCallback | None = None
    last_weights: dict[str, float] = field(default_factory=dict)
    created: float = field(default_factory=time.perf_counter)
    prepared_s: float = 0.0


@dataclass
class Output:
    text: str
    ids: list[int]
    weights: dict[str, float]
    steps: int
    timings: dict[str, float]


def check_request(
    o: ServeOptions, *, prompt: str, adapters: Any = None, steps: int | None = None,
    max_new_tokens: int | None = None, temperature: float = 0.0, threshold: float | None = None,
) -> int:
    """The checks that need no model (run before any loading); returns the answer length."""
    gen = o.default_new_tokens if max_new_tokens is None else int(max_new_tokens)
    if not 1 <= gen <= o.max_new_tokens:
        raise UsageError(f"max_new_tokens must lie in 1..{o.max_new_tokens}, got {gen}")
    if o.block_length and gen % o.block_length:
        raise UsageError(f"max_new_tokens must be a multiple of the block length {o.block_length}")
    if steps is not None and not 1 <= int(steps) <= o.max_steps:
        raise UsageError(f"steps must lie in 1..{o.max_steps}, got {steps}")
    n_blocks = gen // (o.block_length or gen)
    if steps is not None and int(steps) < n_blocks:
        raise UsageError(f"steps must be at least the number of blocks ({n_blocks})")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise UsageError(f"temperature must be a finite number >= 0, got {temperature}")
    if threshold is not None and not 0 < threshold <= 1:
        raise UsageError(f"threshold must lie in (0, 1], got {threshold}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError("prompt is empty")
    if isinstance(adapters, dict):
        if not adapters:
            raise UsageError("adapters: an empty mix")
        if len(adapters) > MAX_MIX:
            raise UsageError(f"a mix may name at most {MAX_MIX} adapters, got {len(adapters)}")
        for name, w in adapters.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise UsageError(f"weight of {name!r} must be a finite number, got {w!r}")
            if w < 0:
                raise UsageError(f"weight of {name!r} is negative ({w})")
        if not sum(adapters.values()) > 0:
            raise UsageError("adapter weights must sum to a positive number")
    elif adapters is not None and not isinstance(adapters, str):
        raise UsageError('adapters must be "auto", a reference or task, or {name: weight}')
    return gen


class Engine:
    """One replica's models: ``Engine(options)`` loads the base (and preloads adapters)."""

    def __init__(self, options: ServeOptions, *, registry: Any = None) -> None:
        from ldp.methods.base import base_fingerprint
        from ldp.methods.compose import Composition
        from ldp.models.loading import load_base
        from ldp.store import Registry

        self.options = options
        self.registry = registry or Registry(options.registry)
        self._bundles: dict[str, Bundle] = {}
        self.default_bundle = self.bundle(options.bundle) if options.bundle else None
        base_ref = options.base or self._base_named_by_first()
        from ldp.bases import resolve_base

        source = resolve_base(base_ref, options.registry)
        self.base_ref = source.ref
        self.base, self.tokenizer = load_base(source.folder)
        self.base.eval()
        self.base_hash = base_fingerprint(self.base)
        self.composition = Composition(self.base, base_hash=self.base_hash)
        self.run_lock = threading.Lock()
        self.cache = ModelCache(self.base, self.base_hash, self.composition, self.run_lock,
                                options.cache_size, self._fetch)
        self.max_len = int(getattr(self.base.config, "max_position_embeddings", 512) or 512)
        from ldp.data.collate import eos_token_id

        self.eos = eos_token_id(self.tokenizer)
        preload = list(options.adapters)
        if self.default_bundle is not None:
            preload += list(self.default_bundle.adapters.values())
        for ref in preload:
            self.cache.release([self.cache.acquire(self.resolve(ref))])
        if self.default_bundle is not None and self.default_bundle.router:
            self.cache.release([self.cache.acquire(self.resolve(self.default_bundle.router), "router")])

    # ------------------------------------------------------------------ registry helpers
    def _base_named_by_first(self) -> str:
        if self.default_bundle is not None and self.default_bundle.base:
            return self.default_bundle.base
        refs = list(self.options.adapters) or (
            list(self.default_bundle.adapters.values()) if self.default_bundle else []
        )
        if not refs:
            raise UsageError("nothing names the base: pass --base, --bundle or --adapters")
        from ldp.methods import read_adapter_config

        meta = read_adapter_config(self._fetch(self.resolve(refs[0])))
        base = meta.get("base_model_name_or_path")
        if not base:
            raise UsageError(f"adapter {refs[0]} does not name its base; pass --base")
        return str(base)

    def resolve(self, ref: str) -> str:
        """A concrete reference (``@latest`` resolved) or an existing folder's absolute path."""
        if ref.startswith(("adapters/", "routers/", "bundles/", "bases/")):
            return str(self.registry.resolve(ref))
        folder = Path(ref).expanduser()
        if folder.is_dir():
            return str(folder.resolve())
        raise NotFoundError(f"unknown adapter {ref!r}")

    def _fetch(self, ref: str) -> Path:
        if Path(ref).is_absolute():
            return Path(ref)
        return Path(self.registry.pull(ref))

    def bundle(self, ref: str) -> Bundle:
        if not ref.startswith("bundles/"):
            raise UsageError(f"bundle {ref!r} is not a bundle reference (bundles/NAME@VERSION)")
        concrete = str(self.registry.resolve(ref))
        if concrete not in self._bundles:
            self._bundles[concrete] = read_bundle(self.registry, concrete)
        return self._bundles[concrete]

    # ------------------------------------------------------------------ preparing requests
    def encode(self, prompt: str, input: str | None) -> tuple[list[int], list[bool]]:
        text = prompt if not input else f"{prompt}\n{input}"
        enc = self.tokenizer(text, add_special_tokens=True, return_special_tokens_mask=True,
                             return_attention_mask=False, return_token_type_ids=False, verbose=False)
        ids = list(enc["input_ids"])
        return ids, [not s for s in enc["special_tokens_mask"]]

    def prepare(
        self,
        prompt: str,
        *,
        input: str | None = None,
        adapters: Any = None,
        bundle: str | None = None,
        steps: int | None = None,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        threshold: float | None = None,
        seed: int = 0,
    ) -> Prepared:
        """Validate and resolve one request (cheap checks first); raises UsageError/NotFoundError."""
        t0 = time.perf_counter()
        o = self.options
        gen = check_request(o, prompt=prompt, adapters=adapters, steps=steps,
                            max_new_tokens=max_new_tokens, temperature=temperature,
                            threshold=threshold)
        ids, instruction = self.encode(prompt, input)
        if len(ids) > o.max_prompt_tokens:
            raise UsageError(f"prompt too long: {len(ids)} tokens (at most {o.max_prompt_tokens})")
        if len(ids) + gen > self.max_len:
            raise UsageError(f"prompt + answer = {len(ids) + gen} tokens, the base takes {self.max_len}")
        job = Prepared(
            prompt_ids=ids, instruction=instruction, gen_length=gen,
            steps=int(steps) if steps else min(o.num_steps, 4 * gen),
            temperature=float(temperature), threshold=threshold, seed=int(seed), kind="base",
        )
        try:
            self._resolve_mix(job, adapters, bundle)
        except BaseException:
            self.cache.release(job.pins)
            raise
        job.prepared_s = time.perf_counter() - t0
        return job

    def _resolve_mix(self, job: Prepared, adapters: Any, bundle: str | None) -> None:
        if bundle is not None and adapters is None:
            adapters = "auto"
        if adapters is None or adapters == "base":
            return
        if adapters == "auto" or (isinstance(adapters, str) and adapters.startswith("bundles/")):
            b = self.bundle(adapters if adapters != "auto" else bundle) if (
                adapters != "auto" or bundle) else self.default_bundle
            if b is None:
                raise UsageError('adapters "auto" needs a bundle: pass "bundle" or start the server with --bundle')
            if not b.router:
                raise UsageError(f"bundle {b.ref} has no router; name adapters explicitly")
            job.kind, job.bundle = "auto", b
            router = self.cache.acquire(self.resolve(b.router), "router")
            job.pins.append(router)
            for task in router.module.tasks:
                if task not in b.adapters:
                    raise UsageError(f"bundle {b.ref}: the router's task {task!r} has no adapter")
                entry = self._pin(job, b.adapters[task])
                if entry.kind != "compose":
                    raise UsageError(f"bundle {b.ref}: adapter {entry.ref} cannot be composed")
                job.labels[entry.ref] = task
            return
        if isinstance(adapters, str):
            adapters = {adapters: 1.0}
        weights: dict[str, float] = {}
        for name, w in adapters.items():
            entry = self._pin(job, self._ref_of(str(name), job))
            job.labels[entry.ref] = str(name)
            weights[entry.ref] = weights.get(entry.ref, 0.0) + float(w)
        total = sum(weights.values())
        if not total > 0:
            raise UsageError("adapter weights must sum to a positive number")
        kinds = {e.kind for e in job.pins}
        if "standalone" in kinds:
            if len(weights) > 1:
                raise UsageError("weight-lora (and other non-composable) adapters cannot be mixed with others")
            job.kind = "standalone"
        else:
            job.kind = "mix"
        job.weights = {ref: w / total for ref, w in weights.items()}

    def _ref_of(self, name: str, job: Prepared) -> str:
        """A task name (``sst2``) or reference -> a concrete adapter reference."""
        if "/" in name or name.startswith((".", "~")):
            if name.startswith(("bundles/", "routers/", "bases/")):
                raise UsageError(f"{name!r} is not an adapter reference")
            if name.startswith("adapters/"):
                return self.resolve(name)
            return self.resolve(name)
        if self.default_bundle is not None and name in self.default_bundle.adapters:
            return self.resolve(self.default_bundle.adapters[name])
        for entry in self.cache.entries():
            if entry.kind != "router" and entry.task == name:
                return entry.ref
        refs = [r for r in self.options.adapters if r.startswith(f"adapters/{name}/")]
        if refs:
            return self.resolve(refs[0])
        raise NotFoundError(f"unknown adapter {name!r} (no loaded adapter or bundle task of that name)")

    def _pin(self, job: Prepared, ref: str) -> CacheEntry:
        entry = self.cache.acquire(ref)
        job.pins.append(entry)
        return entry

    def release(self, job: Prepared) -> None:
        pins, job.pins = job.pins, []
        self.cache.release(pins)

    # ------------------------------------------------------------------ running a batch
    def run(self, jobs: list[Prepared]) -> list[Output]:
        """Denoise prepared requests together; releases their pins."""
        try:
            return self._run(jobs)
        finally:
            for job in jobs:
                self.release(job)

    def _run(self, jobs: list[Prepared]) -> list[Output]:
        rows = [RowSpec(j.prompt_ids, j.gen_length, steps=j.steps, block_length=self.options.block_length,
                        temperature=j.temperature, threshold=j.threshold, seed=j.seed) for j in jobs]

        def on_step(i: int, k: int, answer: torch.Tensor) -> None:
            job = jobs[i]
            if job.on_step is not None:
                job.on_step(k, answer.tolist(), dict(job.last_weights))

        t0 = time.perf_counter()
        with self.run_lock:
            results = sample_rows(
                self.composition, rows, DiffusionConfig(num_steps=self._num_steps()),
                hidden_fn=lambda x, t, a, ids, at: self._hidden(x, t, a, [jobs[i] for i in ids], at),
                on_step=on_step,
            )
        run_s = time.perf_counter() - t0
        out = []
        for job, res in zip(jobs, results):
            weights = dict(job.last_weights) if job.kind == "auto" else {
                job.labels.get(r, r): w for r, w in job.weights.items()}
            out.append(Output(
                text=self.decode(res.answer), ids=res.answer, weights=weights, steps=res.steps,
                timings={"queue_s": round(max(0.0, t0 - job.created - job.prepared_s), 4),
                         "prepare_s": round(job.prepared_s, 4), "denoise_s": round(run_s, 4),
                         "batch_size": len(jobs)},
            ))
        return out

    def _num_steps(self) -> int:
        return self.composition.num_steps if len(self.composition) else self.options.num_steps

    def decode(self, ids: list[int]) -> str:
        if self.eos in ids:
            ids = ids[: ids.index(self.eos)]
        mask = self.base.mask_token_id
        return self.tokenizer.decode([i for i in ids if i != mask], skip_special_tokens=True).strip()

    def partial_text(self, ids: list[int]) -> str:
        """A partially revealed answer, masked positions shown as ``_`` (for streaming)."""
        mask, tok = self.base.mask_token_id, self.tokenizer
        if self.eos in ids:
            ids = ids[: ids.index(self.eos)]
        special = set(tok.all_special_ids) - {mask}
        tokens = ["_" if i == mask else tok.convert_ids_to_tokens(i) for i in ids if i not in special]
        return tok.convert_tokens_to_string(tokens).strip()

    # ------------------------------------------------------------------ one denoising step
    def _hidden(
        self, x: torch.Tensor, t: torch.Tensor, attn: torch.Tensor, jobs: list[Prepared],
        positions: torch.Tensor,
    ):
        """H' (A, L, d) for the active rows: one base forward for every composing row; the
        adapters run only at ``positions`` (A, L), the ones the sampler reads."""
        A, L = x.shape
        instr = torch.zeros((A, L), dtype=torch.bool)
        for i, job in enumerate(jobs):
            instr[i, : len(job.instruction)] = torch.tensor(job.instruction, dtype=torch.bool)
        out: torch.Tensor | None = None
        groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            key = next(iter(job.weights)) if job.kind == "standalone" else ""
            groups.setdefault(key, []).append(i)
        for key, rows in groups.items():
            idx = torch.tensor(rows)
            xs, ts, As, Is, Ps = x[idx], t[idx], attn[idx], instr[idx], positions[idx]
            if key:
                entry = next(e for e in jobs[rows[0]].pins if e.ref == key)
                h = entry.module(xs, ts, As, Is).float()
            else:
                h = self._compose(xs, ts, As, Is, [jobs[i] for i in rows], Ps)
            if out is None:
                out = torch.empty((A, L, h.shape[-1]), dtype=h.dtype)
            out[idx] = h
        return out

    def _compose(self, x, t, attn, instr, jobs: list[Prepared], positions) -> torch.Tensor:
        comp = self.composition
        if not len(comp):
            with torch.no_grad():
                return self.base.hidden_states(x, t, attn).float()
        hidden, steps, blocks = comp.base_states(x, t, attn)
        names = comp.names
        col = {ref: j for j, ref in enumerate(names)}
        W = torch.zeros((x.shape[0], len(names)))
        auto: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            if job.kind == "mix":
                for ref, w in job.weights.items():
                    W[i, col[ref]] = w
            elif job.kind == "auto":
                auto.setdefault(job.bundle.ref, []).append(i)
        enc = None
        if auto:
            enc = comp.encoding(hidden, x, instr, attn)  # (G, d)
            for ref, rows in auto.items():
                self._route(W, enc, steps, rows, [jobs[i] for i in rows], col)
        return comp.mix(
            hidden, steps, W, input_ids=x, instruction_mask=instr, attention_mask=attn,
            positions=positions, encoding=enc, block_states=blocks,
        )

    def _route(self, W, enc, steps, rows, jobs, col) -> None:
        """Fill the rows' weight columns from their bundle's router."""
        router_entry = next(e for e in jobs[0].pins if e.kind == "router")
        router = router_entry.module
        idx = torch.tensor(rows)
        with torch.no_grad():
            w = router(enc[idx].float())  # (r, J) or (r, P, J)
        if w.ndim == 3:
            phase = self.composition.phase_of_steps(steps[idx])
            w = w[torch.arange(len(rows)), phase]
        refs = [next(r for r, task in jobs[0].labels.items() if task == name) for name in router.tasks]
        cols = torch.tensor([col[r] for r in refs])
        W[idx.unsqueeze(1), cols.unsqueeze(0)] = w.float()
        for k, job in enumerate(jobs):
            job.last_weights = {router.tasks[j]: round(float(w[k, j]), 4) for j in range(len(refs))}

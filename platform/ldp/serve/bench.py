"""``ldp bench serve``: serving figures measured side by side in one run.

- **P4**: latency of one request composed over a 5-adapter bundle with its router (``auto``)
  divided by the latency of the same request on the base alone (goal <= 1.05);
- **P5**: throughput of a batch whose rows all use different adapters divided by a batch whose
  rows use one adapter (goal >= 0.95);
- **sampler**: steps taken, latency and task accuracy of the fixed-step sampler against the
  confidence-threshold (parallel) sampler on a classification task;
- **load**: requests/s and p50/p99 latency at 1, 4 and 16 concurrent HTTP clients against a real
  Serve app (started here on an embedded Ray, or ``--url``).

Without ``--bundle`` a throw-away registry is built with a random native base of the chosen
size, five random lora-diffusion adapters, a router and a bundle (timing needs shapes, not
training). Every timed figure is the median of ``repeats`` runs after one warm-up.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["ServeBenchConfig", "run_serve_bench", "build_synthetic_registry"]

TASKS = ["sst2", "agnews", "trec", "squad", "gsm8k"]


@dataclass
class ServeBenchConfig:
    size: str = "tiny"
    bundle: str | None = None
    registry: str | None = None
    gen_length: int = 16
    steps: int = 16
    batch: int = 8
    repeats: int = 5
    threshold: float = 0.9
    task: str = "sst2"
    task_adapter: str | None = None
    """Adapter scored on ``task`` (default: the bundle's adapter for that task, else the base)."""
    data_dir: str | None = None
    eval_limit: int = 32
    clients: tuple[int, ...] = (1, 4, 16)
    load_seconds: float = 10.0
    url: str | None = None
    threads: int = 1


def build_synthetic_registry(root: Path, size: str = "tiny") -> dict[str, Any]:
    """A base of ``size`` (random weights), five random adapters, a router and a bundle."""
    import torch

    from ldp.methods import attach, base_fingerprint
    from ldp.methods.router import Router
    from ldp.models.loading import default_tokenizer, load_base, save_base
    from ldp.models.native import DiffusionTransformer
    from ldp.models.sizes import size_config
    from ldp.store import Registry

    reg = Registry(root.as_uri())
    torch.manual_seed(0)
    config = size_config(size)
    base = DiffusionTransformer(config).eval()
    base_folder = root.parent / "base"
    save_base(base, default_tokenizer(config.tokenizer), base_folder)
    base, _ = load_base(base_folder)
    base_hash = base_fingerprint(base)
    refs: dict[str, Any] = {"registry": root.as_uri(), "adapters": {}, "base": str(base_folder)}
    gen = torch.Generator().manual_seed(1)
    for task in TASKS:
        model = attach(base, "lora-diffusion", None, base_hash=base_hash)
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        folder = root.parent / f"src-{task}"
        model.save_adapter(folder, base_name=str(base_folder))
        refs["adapters"][task] = str(reg.publish(f"adapters/{task}/lora-diffusion", folder))
        base, _ = load_base(base_folder)
    router = Router(TASKS, base.hidden_size, base_hash=base_hash)
    folder = root.parent / "src-router"
    router.save(folder, base_name=str(base_folder))
    refs["router"] = str(reg.publish("routers/bench", folder))
    folder = root.parent / "src-bundle"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bundle.json").write_text(json.dumps(
        {"base": str(base_folder), "adapters": refs["adapters"], "router": refs["router"]}))
    refs["bundle"] = str(reg.publish("bundles/bench", folder))
    return refs


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _engine_figures(engine, cfg: ServeBenchConfig, log) -> dict[str, Any]:
    prompt = "Review: an honest, warm and often very funny film about growing up. Sentiment:"
    kw = dict(steps=cfg.steps, max_new_tokens=cfg.gen_length)

    def one(adapters):
        return lambda: engine.run([engine.prepare(prompt, adapters=adapters, **kw)])

    log("P4: one request, bundle with router vs base alone")
    base_s = _median_time(one(None), cfg.repeats)
    composed_s = _median_time(one("auto"), cfg.repeats)
    tasks = list(engine.default_bundle.adapters)

    def batch(mixed: bool):
        def go():
            jobs = [engine.prepare(f"{prompt} ({i})", adapters=tasks[i % len(tasks)] if mixed else tasks[0],
                                   seed=i, **kw) for i in range(cfg.batch)]
            engine.run(jobs)
        return go

    log(f"P5: batch of {cfg.batch}, every row another adapter vs one adapter")
    one_s = _median_time(batch(False), cfg.repeats)
    mixed_s = _median_time(batch(True), cfg.repeats)
    return {
        "base_latency_s": base_s, "composed_latency_s": composed_s,
        "P4_composed_over_base": composed_s / base_s,
        "one_adapter_batch_s": one_s, "mixed_batch_s": mixed_s,
        "P5_mixed_over_one_throughput": one_s / mixed_s,
    }


def _sampler_figures(engine, cfg: ServeBenchConfig, log) -> dict[str, Any]:
    from ldp.data import compute_metrics
    from ldp.data.tasks import get_task
    from ldp.data.loading import load_examples

    spec = get_task(cfg.task)
    examples = load_examples(spec, "validation", cfg.data_dir, cfg.eval_limit)
    adapter = cfg.task_adapter or (engine.default_bundle.adapters.get(cfg.task) if engine.default_bundle else None)
    gen = min(spec.max_new_tokens, engine.options.max_new_tokens)
    out: dict[str, Any] = {"task": cfg.task, "adapter": adapter, "n": len(examples), "gen_length": gen}
    log(f"sampler: fixed steps vs threshold {cfg.threshold} on {len(examples)} {cfg.task} examples")
    for name, extra in (("fixed", {"steps": min(4 * gen, engine.options.max_steps)}),
                        ("threshold", {"threshold": cfg.threshold})):
        preds, steps, times = [], [], []
        for ex in examples:
            t0 = time.perf_counter()
            res = engine.run([engine.prepare(ex.prompt, adapters=adapter, max_new_tokens=gen, **extra)])[0]
            times.append(time.perf_counter() - t0)
            preds.append(res.text)
            steps.append(res.steps)
        metrics = compute_metrics(spec, preds, [ex.references for ex in examples])
        out[name] = {"mean_steps": statistics.mean(steps), "mean_latency_s": statistics.mean(times),
                     "metrics": metrics}
    out["speedup"] = out["fixed"]["mean_latency_s"] / out["threshold"]["mean_latency_s"]
    return out


def _load_figures(url: str, cfg: ServeBenchConfig, tasks: list[str], log) -> dict[str, Any]:
    import requests

    rows = {}
    for clients in cfg.clients:
        log(f"load: {clients} concurrent client(s) for {cfg.load_seconds:.0f} s")
        stop = time.perf_counter() + cfg.load_seconds
        lat: list[float] = []
        errors = 0

        def client(i: int):
            nonlocal errors
            n = 0
            session = requests.Session()
            while time.perf_counter() < stop:
                body = {"prompt": f"Request {i}-{n}: how was the film?", "adapters": tasks[(i + n) % len(tasks)],
                        "steps": cfg.steps, "max_new_tokens": cfg.gen_length, "seed": n}
                t0 = time.perf_counter()
                res = session.post(url + "/generate", json=body, timeout=600)
                if res.status_code == 200:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1
                n += 1

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        wall = time.perf_counter() - t0
        lat.sort()
        rows[str(clients)] = {
            "requests": len(lat), "errors": errors, "req_per_s": len(lat) / wall,
            "p50_s": lat[len(lat) // 2] if lat else None,
            "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
        }
    return rows


def run_serve_bench(cfg: ServeBenchConfig, *, log=print) -> dict[str, Any]:
    import torch

    from ldp.serve import ServeOptions
    from ldp.serve.engine import Engine

    torch.set_num_threads(cfg.threads)
    tmp = tempfile.TemporaryDirectory(prefix="ldp-bench-serve-")
    try:
        if cfg.bundle is None:
            log(f"building a throw-away registry: {cfg.size} base (random), 5 adapters, router, bundle")
            root = Path(tmp.name) / "registry"
            root.mkdir()
            refs = build_synthetic_registry(root, cfg.size)
            registry, bundle = refs["registry"], refs["bundle"]
        else:
            registry, bundle = cfg.registry, cfg.bundle
        options = ServeOptions(registry=registry, bundle=bundle, max_new_tokens=max(cfg.gen_length, 64),
                               max_steps=max(cfg.steps, 256), max_batch_size=16, cache_size=16,
                               num_cpus=float(cfg.threads))
        engine = Engine(options)
        result: dict[str, Any] = {"config": asdict(cfg), "base": engine.base_ref, "bundle": engine.default_bundle.ref}
        result["engine"] = _engine_figures(engine, cfg, log)
        result["sampler"] = _sampler_figures(engine, cfg, log)
        tasks = list(engine.default_bundle.adapters)
        del engine
        if cfg.clients:
            if cfg.url:
                result["load"] = _load_figures(cfg.url.rstrip("/"), cfg, tasks, log)
            else:
                result["load"] = _with_local_serve(options, lambda url: _load_figures(url, cfg, tasks, log), log)
        return result
    finally:
        tmp.cleanup()


def _with_local_serve(options, fn, log):
    import socket

    import ray
    from ray import serve

    from ldp.serve.deployment import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log("starting a local Ray + Serve app for the load figures")
    ray.init(address="local", include_dashboard=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(options), name="bench", route_prefix="/")
        return fn(f"http://127.0.0.1:{port}")
    finally:
        serve.shutdown()
        if ray.is_initialized():
            ray.shutdown()

"""``ldp serve`` (composed inference over Ray Serve) and ``ldp generate`` (the same engine in
this process, no server); ``ldp bench serve`` is defined here and hung under ``ldp bench``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ldp.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
    app.command("generate")(generate_command)


def _options(base, adapters, bundle, registry, **more):
    from ldp.paths import default_registry_url
    from ldp.serve import ServeOptions

    refs = [a.strip() for item in adapters for a in item.split(",") if a.strip()]
    for ref in refs:
        if not ref.startswith("adapters/") and not Path(ref).expanduser().is_dir():
            raise UsageError(f"--adapters: {ref!r} is neither adapters/TASK/METHOD@VERSION nor a folder")
    if bundle is not None and not bundle.startswith("bundles/"):
        raise UsageError(f"--bundle: {bundle!r} is not bundles/NAME@VERSION")
    try:
        return ServeOptions(base=base, adapters=refs, bundle=bundle,
                            registry=registry or default_registry_url(), **more)
    except TypeError as exc:
        raise UsageError(str(exc)) from None


def _check_refs(opts) -> None:
    """Resolve every reference before any expensive work (Ray, model loading)."""
    from ldp.serve.bundle import read_bundle
    from ldp.store import Registry

    reg = Registry(opts.registry)
    if opts.bundle:
        read_bundle(reg, opts.bundle)
    for ref in opts.adapters:
        if ref.startswith("adapters/"):
            reg.resolve(ref)
    if opts.base and opts.base.startswith("bases/"):
        reg.resolve(opts.base)
    elif opts.base and not Path(opts.base).expanduser().is_dir():
        raise UsageError(f"--base: {opts.base!r} is neither bases/NAME@VERSION nor a folder")
    if not (opts.base or opts.bundle or opts.adapters):
        raise UsageError("give --bundle, --adapters or --base")


def serve_command(
    bundle: Optional[str] = typer.Option(None, "--bundle", help="bundles/NAME@VERSION: its adapters and router (adapters \"auto\")."),
    adapters: list[str] = typer.Option([], "--adapters", help="Adapter references to load at start (comma-separated or repeated)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base reference or folder (default: the one the bundle/adapters name)."),
    host: str = typer.Option("127.0.0.1", "--host", help="HTTP host of Serve's proxy."),
    port: int = typer.Option(8000, "--port", help="HTTP port of Serve's proxy."),
    replicas: int = typer.Option(1, "--replicas", help="Replicas of the deployment (each holds the base)."),
    num_cpus: float = typer.Option(1.0, "--num-cpus", help="CPUs each replica reserves."),
    cache_size: int = typer.Option(8, "--cache-size", help="Adapters + routers held per replica (LRU)."),
    max_batch_size: int = typer.Option(8, "--max-batch-size", help="Requests denoised together."),
    block_length: Optional[int] = typer.Option(None, "--block-length", help="Semi-autoregressive block length."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster (ray://HOST:10001 or HOST:6379); default an embedded local Ray."),
    registry: Optional[str] = typer.Option(None, "--registry", help="Registry URL."),
    name: str = typer.Option("ldp", "--name", help="Serve application name."),
    route_prefix: str = typer.Option("/", "--route-prefix"),
    config_out: Optional[Path] = typer.Option(None, "--config-out", help="Write a Serve config YAML (serve deploy / RayService serveConfigV2) and exit."),
    emit: Optional[str] = typer.Option(None, "--emit", help="Print a KubeRay manifest instead of serving: rayservice."),
    image: Optional[str] = typer.Option(None, "--image", help="With --emit: container image (default ldp:<version>)."),
    gpus: int = typer.Option(1, "--gpus", help="With --emit: GPUs of the RayService's workers (one per replica)."),
) -> None:
    """Serve composed inference: one base forward per denoising step for mixed-adapter batches."""
    if not 0 < port < 65536:
        raise UsageError(f"--port must lie in 1..65535, got {port}")
    if not route_prefix.startswith("/"):
        raise UsageError("--route-prefix must start with /")
    opts = _options(base, adapters, bundle, registry, replicas=replicas, num_cpus=num_cpus,
                    cache_size=cache_size, max_batch_size=max_batch_size, block_length=block_length)
    if emit is not None:
        if emit != "rayservice":
            raise UsageError(f"--emit {emit!r}: ldp serve emits 'rayservice' (ldp submit emits 'rayjob')")
        if config_out is not None:
            raise UsageError("--emit and --config-out: choose one")
        if gpus < 0:
            raise UsageError(f"--gpus must be >= 0, got {gpus}")
        from ldp.cluster.manifests import rayservice_manifest, to_yaml
        from ldp.serve.config import serve_config

        if not (opts.base or opts.bundle or opts.adapters):
            raise UsageError("give --bundle, --adapters or --base")
        cfg = serve_config(opts, name=name, route_prefix=route_prefix, host="0.0.0.0", port=port)
        typer.echo(to_yaml(rayservice_manifest(cfg, name=f"{name}-serve", gpus=gpus, gpus_per_node=1, image=image)), nl=False)
        return
    if config_out is not None:
        import yaml

        from ldp.serve.config import serve_config

        if not (opts.base or opts.bundle or opts.adapters):
            raise UsageError("give --bundle, --adapters or --base")
        cfg = serve_config(opts, name=name, route_prefix=route_prefix, host="0.0.0.0", port=port)
        config_out.write_text(
            "# ldp serve config: `serve deploy " + str(config_out) + "`, or paste under a RayService's\n"
            "# spec.serveConfigV2. The registry URL must be reachable from the cluster.\n"
            + yaml.safe_dump(cfg, sort_keys=False))
        typer.echo(f"wrote {config_out}")
        return
    _check_refs(opts)
    run_server(opts, host=host, port=port, address=address, name=name, route_prefix=route_prefix)


def run_server(opts, *, host: str, port: int, address: str | None, name: str, route_prefix: str) -> None:
    import signal
    import threading

    from ldp.cluster import connect
    from ldp.errors import LdpError

    handle = connect(address, include_dashboard=False)
    if handle.kind == "jobs":
        raise UsageError("ldp serve needs a Ray address (ray://HOST:10001 or HOST:6379), not the "
                         "Jobs API; or write a config with --config-out and `serve deploy` it")
    from ray import serve

    from ldp.serve.deployment import build_app

    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(opts), name=name, route_prefix=route_prefix, blocking=False)
    except Exception as exc:
        handle.shutdown()
        raise LdpError(f"Serve failed to start: {str(exc).strip().splitlines()[0]}") from None
    prefix = route_prefix.rstrip("/")
    url = f"http://{host}:{port}{prefix}"
    typer.echo(f"serving at {url}/  (API docs: {url}/docs)")
    if not handle.started_cluster:
        typer.echo("the application keeps running on the cluster; `serve shutdown` stops it")
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    typer.echo("stopping", err=True)
    serve.shutdown()
    handle.shutdown()


def parse_mix(text: str | None) -> Any:
    """``--adapters`` of generate: "auto", a reference, ``a,b`` (equal weights), ``a=0.7,b=0.3``
    or a JSON object."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("{"):
        try:
            mix = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--adapters: not valid JSON ({exc.msg})") from None
        if not isinstance(mix, dict):
            raise UsageError("--adapters: JSON must be an object {name: weight}")
        return mix
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise UsageError("--adapters is empty")
    if len(parts) == 1 and "=" not in parts[0]:
        return parts[0]
    mix: dict[str, float] = {}
    for p in parts:
        name, _, weight = p.partition("=")
        try:
            mix[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise UsageError(f"--adapters: weight of {name!r} is not a number: {weight!r}") from None
    return mix


def generate_command(
    prompt: str = typer.Option(..., "--prompt", help="Prompt text."),
    input: Optional[str] = typer.Option(None, "--input", help="Input text appended after the prompt."),
    adapters: Optional[str] = typer.Option(None, "--adapters", help='"auto", REF, a,b or a=0.7,b=0.3 or JSON.'),
    bundle: Optional[str] = typer.Option(None, "--bundle", help="bundles/NAME@VERSION (router for auto)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base reference or folder."),
    steps: Optional[int] = typer.Option(None, "--steps"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens"),
    temperature: float = typer.Option(0.0, "--temperature"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Parallel decoding by confidence (0, 1]."),
    seed: int = typer.Option(0, "--seed"),
    stream: bool = typer.Option(False, "--stream", help="Print the answer after every denoising step."),
    registry: Optional[str] = typer.Option(None, "--registry"),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Generate locally (no server) with the engine ``ldp serve`` uses."""
    from ldp.serve.engine import Engine, check_request

    mix = parse_mix(adapters)
    refs = [mix] if isinstance(mix, str) and mix.startswith("adapters/") else (
        [k for k in mix if k.startswith("adapters/")] if isinstance(mix, dict) else [])
    opts = _options(base, [], bundle, registry)
    if not (opts.base or opts.bundle or refs):
        raise UsageError("give --bundle, --base or --adapters with a registry reference")
    opts.adapters = refs
    check_request(opts, prompt=prompt, adapters=mix, steps=steps, max_new_tokens=max_new_tokens,
                  temperature=temperature, threshold=threshold)
    _check_refs(opts)
    engine = Engine(opts)
    job = engine.prepare(prompt, input=input, adapters=mix, bundle=bundle, steps=steps,
                         max_new_tokens=max_new_tokens, temperature=temperature,
                         threshold=threshold, seed=seed)
    if stream:
        tty = sys.stdout.isatty()

        def show(k: int, ids: list[int], weights: dict) -> None:
            text = engine.partial_text(ids)
            if tty:
                sys.stdout.write(f"\r\x1b[2K[{k:3d}] {text}")
            else:
                sys.stdout.write(f"[{k:3d}] {text}\n")
            sys.stdout.flush()

        job.on_step = show
    out = engine.run([job])[0]
    if stream and sys.stdout.isatty():
        sys.stdout.write("\n")
    if json_out:
        typer.echo(json.dumps({"text": out.text, "weights": out.weights, "steps": out.steps,
                               "timings": out.timings}))
    else:
        typer.echo(out.text)


def bench_serve(
    size: str = typer.Option("tiny", "--size", help="Native size for the throw-away base (without --bundle)."),
    bundle: Optional[str] = typer.Option(None, "--bundle", help="Measure this bundle instead (bundles/NAME@VERSION)."),
    registry: Optional[str] = typer.Option(None, "--registry"),
    gen_length: int = typer.Option(16, "--gen-length", help="Answer tokens per request."),
    steps: int = typer.Option(16, "--steps", help="Denoising steps per request (fixed sampler)."),
    batch: int = typer.Option(8, "--batch", help="Rows of the P5 batches."),
    repeats: int = typer.Option(5, "--repeats", help="Timed repeats (median) after one warm-up."),
    threshold: float = typer.Option(0.9, "--threshold", help="Confidence threshold of the parallel sampler."),
    task: str = typer.Option("sst2", "--task", help="Classification task scored with both samplers."),
    task_adapter: Optional[str] = typer.Option(None, "--task-adapter", help="Adapter scored on --task (default: the bundle's)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data mirror (default LDP_DATA_DIR)."),
    eval_limit: int = typer.Option(32, "--eval-limit", help="Examples scored per sampler."),
    clients: str = typer.Option("1,4,16", "--clients", help="Concurrent HTTP clients per load figure ('' skips)."),
    load_seconds: float = typer.Option(10.0, "--load-seconds", help="Duration of each load figure."),
    url: Optional[str] = typer.Option(None, "--url", help="Load-test this server instead of a local Serve app."),
    threads: int = typer.Option(1, "--threads", help="Torch threads (one per CPU a replica reserves)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the results JSON here."),
) -> None:
    """Serving figures side by side: P4 (composed / base latency), P5 (mixed / one-adapter batch
    throughput), fixed vs threshold sampler (steps, latency, accuracy), req/s and p50/p99."""
    from ldp.data.tasks import get_task
    from ldp.models.presets import size_names
    from ldp.serve.bench import ServeBenchConfig, run_serve_bench

    if size not in size_names():
        raise UsageError(f"unknown size {size!r}; choose from {', '.join(size_names())}")
    if bundle is not None and not bundle.startswith("bundles/"):
        raise UsageError(f"--bundle: {bundle!r} is not bundles/NAME@VERSION")
    spec = get_task(task)
    if spec.label is None:
        raise UsageError(f"--task {task} is not a classification task")
    if min(gen_length, steps, batch, repeats, eval_limit, threads) < 1 or not 0 < threshold <= 1:
        raise UsageError("--gen-length, --steps, --batch, --repeats, --eval-limit, --threads must be >= 1, "
                         "--threshold in (0, 1]")
    try:
        counts = tuple(int(c) for c in clients.split(",") if c.strip())
    except ValueError:
        raise UsageError(f"--clients must be comma-separated integers, got {clients!r}") from None
    if any(c < 1 for c in counts) or load_seconds <= 0:
        raise UsageError("--clients must be >= 1 and --load-seconds > 0")
    cfg = ServeBenchConfig(size=size, bundle=bundle, registry=registry, gen_length=gen_length, steps=steps,
                           batch=batch, repeats=repeats, threshold=threshold, task=task,
                           task_adapter=task_adapter, data_dir=data_dir, eval_limit=eval_limit,
                           clients=counts, load_seconds=load_seconds, url=url, threads=threads)
    out = run_serve_bench(cfg, log=lambda m: typer.echo(m, err=True))
    e, s = out["engine"], out["sampler"]
    lines = [
        f"P4 composed (5 adapters + router) / base latency: {e['P4_composed_over_base']:.3f}"
        f"  ({e['composed_latency_s'] * 1e3:.0f} ms / {e['base_latency_s'] * 1e3:.0f} ms; goal <= 1.05)",
        f"P5 mixed-adapter / one-adapter batch throughput: {e['P5_mixed_over_one_throughput']:.3f}"
        f"  ({e['mixed_batch_s'] * 1e3:.0f} ms / {e['one_adapter_batch_s'] * 1e3:.0f} ms per batch of {batch}; goal >= 0.95)",
    ]
    primary = get_task(task).metrics_ordered[0]
    for name in ("fixed", "threshold"):
        r = s[name]
        lines.append(f"sampler {name:9s}: {r['mean_steps']:.1f} steps, {r['mean_latency_s'] * 1e3:.0f} ms, "
                     f"{task} {primary} {r['metrics'][primary]:.1f} (n={s['n']})")
    for c, r in (out.get("load") or {}).items():
        p50 = f"{r['p50_s'] * 1e3:.0f}" if r["p50_s"] is not None else "-"
        p99 = f"{r['p99_s'] * 1e3:.0f}" if r["p99_s"] is not None else "-"
        lines.append(f"load {int(c):2d} client(s): {r['req_per_s']:.2f} req/s, p50 {p50} ms, p99 {p99} ms, "
                     f"{r['errors']} errors")
    typer.echo("\n".join(lines))
    if json_path is not None:
        json_path.write_text(json.dumps(out, indent=2))

"""``ldp submit``: validate an adapter job spec, print its id, run it on Ray (here, detached, or
on a remote cluster) and, with ``--wait``, end with the registry reference and the metrics.

Other ways to use the same resolved spec, none of which starts a job:

- ``--dry-run`` prints the plan: strategy and why, memory per GPU, DeepSpeed config, Ray
  placement, where the base comes from (``ldp.jobs.plan``);
- ``--emit rayjob`` prints a KubeRay ``RayJob`` manifest whose entrypoint is this command with the
  resolved spec embedded (``ldp.cluster.manifests``).

``--resume JOB`` runs a failed or stopped job again under its own id: Ray Train finds the job's
run folder in storage and continues from its last checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ldp.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)


def spec_from_options(config: Optional[Path], sets: list[str], explicit: dict) -> dict:
    """JobSpec dict: YAML file, then ``--set`` (keys outside JobSpec go to ``train.``), then the
    explicit options."""
    from dataclasses import fields

    from ldp import config as cfgmod
    from ldp.jobs.spec import JobSpec

    data = cfgmod.read_mapping(config) if config is not None else {}
    spec_keys = {f.name for f in fields(JobSpec)}
    overrides = {}
    for key, value in cfgmod.parse_overrides(sets).items():
        top = key.split(".", 1)[0]
        overrides[key if top in spec_keys else f"train.{key}"] = value
    overrides.update({k: v for k, v in explicit.items() if v is not None})
    return cfgmod.apply_overrides(data, overrides)


def _gpu_defaults(data: dict, gpus: int) -> dict:
    """A GPU job runs ``gpus`` workers with one GPU each, in bf16 unless the spec says otherwise
    (a frozen base in bf16 is half the memory and the method's intended setting)."""
    from ldp.config import apply_overrides

    overrides = {"use_gpu": True, "workers": gpus}
    train = data.get("train") or {}
    if "precision" not in (train.get("loop") or {}):
        overrides["train.loop.precision"] = "bf16"
    method = data.get("method", "lora-diffusion")
    if method == "lora-diffusion" and "base_dtype" not in (train.get("method_config") or {}):
        overrides["train.method_config.base_dtype"] = "bf16"
    return apply_overrides(data, overrides)


def submit(
    task: Optional[str] = typer.Option(None, "--task", help="Task key (see `ldp tasks`)."),
    size: Optional[str] = typer.Option(None, "--size", help="Base size: tiny, 350m, 1.3b, 7b."),
    method: Optional[str] = typer.Option(None, "--method", help="lora-diffusion | weight-lora | prefix | adapters | bitfit | full."),
    base: Optional[str] = typer.Option(None, "--base", help="Base: registry reference or folder (default bases/<size>@latest)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps (default 900)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray Train workers."),
    cpus_per_worker: Optional[float] = typer.Option(None, "--cpus-per-worker", help="CPUs (and threads) per worker (default: a one-machine cluster's CPUs shared among the workers, else 1)."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="auto | ddp | zero2 | zero3 | zero3-offload."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="Train on N GPUs (N workers, one GPU each, bf16)."),
    gpu_mem: Optional[float] = typer.Option(None, "--gpu-mem", help="GB per GPU, for the strategy choice (with --gpus)."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node", help="GPUs per machine (placement, --emit)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: host:port, ray://, or http:// (Jobs API). Default: RAY_ADDRESS, else an embedded local Ray."),
    registry: Optional[str] = typer.Option(None, "--registry", help="Registry URL (default LDP_REGISTRY or ~/.ldp/registry)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data mirror (default LDP_DATA_DIR, else the hub)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML job spec (see configs/)."),
    sets: list[str] = typer.Option([], "--set", help="Override: --set checkpoint_every=20, --set loop.batch_size=8 (recipe keys)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job to the end (default) or return at once."),
    json_out: bool = typer.Option(False, "--json", help="With --wait or --dry-run: print the result as JSON."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved plan; start nothing."),
    emit: Optional[str] = typer.Option(None, "--emit", help="Print a manifest instead of running: rayjob (KubeRay)."),
    image: Optional[str] = typer.Option(None, "--image", help="With --emit: container image (default ldp:<version>)."),
    credentials_secret: Optional[str] = typer.Option(None, "--credentials-secret", help="With --emit: Secret with an AWS credentials file (default: none, use the service account's IAM role)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Run failed/stopped job JOB again from its last checkpoint."),
    spec_json: Optional[str] = typer.Option(None, "--spec-json", hidden=True, help="A resolved spec (what --emit embeds)."),
    job_id_opt: Optional[str] = typer.Option(None, "--job-id", hidden=True, help="Use this job id (what --emit embeds)."),
) -> None:
    """Train one task adapter as a Ray Train + DeepSpeed job and publish it to the registry."""
    import os
    import time

    started = time.perf_counter()

    from ldp.config import to_dict
    from ldp.jobs import records
    from ldp.jobs.spec import validate_spec

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        from ldp.cluster import resolve_address

        resolve_address(address)  # a bad address fails now, not after the job is recorded
    if resume is not None:
        return _resume(resume, wait=wait, address=address, json_out=json_out)
    if emit is not None and emit != "rayjob":
        raise UsageError(f"--emit {emit!r}: ldp submit emits 'rayjob' (ldp serve emits 'rayservice')")
    if dry_run and emit:
        raise UsageError("--dry-run and --emit: choose one")
    if gpus is not None and gpus < 1:
        raise UsageError(f"--gpus must be >= 1, got {gpus}")
    if gpu_mem is not None and not (0 < gpu_mem < 10_000):
        raise UsageError(f"--gpu-mem is GB per GPU (e.g. 80), got {gpu_mem}")
    if gpu_mem is not None and gpus is None:
        raise UsageError("--gpu-mem needs --gpus")
    if gpus_per_node < 1:
        raise UsageError(f"--gpus-per-node must be >= 1, got {gpus_per_node}")
    if json_out and not (wait or dry_run):
        raise UsageError("--json needs --wait or --dry-run")

    if spec_json is not None:
        try:
            data = json.loads(spec_json)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--spec-json: not JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise UsageError("--spec-json: expected a JSON object")
    else:
        explicit = {
            "task": task, "size": size, "method": method, "base": base, "steps": steps,
            "workers": workers, "cpus_per_worker": cpus_per_worker, "strategy": strategy, "registry": registry,
            "data_dir": data_dir or os.environ.get("LDP_DATA_DIR") or None,
        }
        data = spec_from_options(config, sets, explicit)
    if gpus is not None:
        if workers is not None and workers != gpus:
            raise UsageError(f"--workers {workers} and --gpus {gpus} disagree (one worker per GPU)")
        data = _gpu_defaults(data, gpus)
        if not dry_run and data.get("strategy", "auto") == "auto":
            data = _resolve_strategy(data, gpus, gpu_mem, gpus_per_node)

    if dry_run or emit:
        from ldp.config import build
        from ldp.jobs.spec import JobSpec, check_spec

        spec_obj = build(JobSpec, data)
        check_spec(spec_obj)  # every cheap check; the base may legitimately be missing in a plan
        if dry_run:
            from ldp.jobs.plan import plan_job, render_plan

            plan = plan_job(spec_obj, gpus=gpus or 0, gpu_mem_gb=gpu_mem, gpus_per_node=gpus_per_node)
            typer.echo(json.dumps(plan, indent=2) if json_out else render_plan(plan))
            if not plan["strategy"]["fits"]:
                raise typer.Exit(1)
            return
        from ldp.cluster.manifests import rayjob_manifest, to_yaml

        job_id = job_id_opt or records.new_job_id(spec_obj.task)
        manifest = rayjob_manifest(
            to_dict(spec_obj), job_id=job_id, gpus=gpus or 0, gpus_per_node=gpus_per_node,
            image=image, credentials_secret=credentials_secret,
        )
        typer.echo(to_yaml(manifest), nl=False)
        return

    spec = to_dict(validate_spec(data, address=address))
    job_id = job_id_opt or records.new_job_id(spec["task"])
    from ldp.jobs.launch import launch

    typer.echo(job_id)
    launch(spec, job_id=job_id, wait=wait, address=address)
    _finish(job_id, wait=wait, address=address, json_out=json_out, wall=time.perf_counter() - started)


def _resolve_strategy(data: dict, gpus: int, gpu_mem: Optional[float], gpus_per_node: int) -> dict:
    """``--strategy auto`` on GPUs becomes a concrete strategy here, from the memory plan, so the
    workers (and an emitted manifest) get a definite DeepSpeed config."""
    from ldp.config import build
    from ldp.errors import LdpError
    from ldp.jobs.plan import plan_job
    from ldp.jobs.spec import JobSpec

    if gpu_mem is None:
        raise UsageError("--gpus with --strategy auto needs --gpu-mem GB to choose one (or pass --strategy)")
    plan = plan_job(build(JobSpec, data), gpus=gpus, gpu_mem_gb=gpu_mem, gpus_per_node=gpus_per_node)
    if not plan["strategy"]["fits"]:
        raise LdpError(plan["strategy"]["reason"])
    return {**data, "strategy": plan["strategy"]["name"]}


def _resume(job_id: str, *, wait: bool, address: Optional[str], json_out: bool) -> None:
    from ldp.jobs.launch import relaunch

    relaunch(job_id, wait=wait, address=address)
    typer.echo(job_id)
    _finish(job_id, wait=wait, address=address, json_out=json_out)


def _finish(
    job_id: str, *, wait: bool, address: Optional[str], json_out: bool, wall: Optional[float] = None
) -> None:
    """Print the job's result (``wait``) or how to follow it. ``wall``: seconds this command
    took, to split into the training loop, evaluation and the rest."""
    from ldp.jobs import records

    if not wait:
        typer.echo(f"follow with: ldp logs {job_id}" + (f" --address {address}" if address else ""), err=True)
        return
    record = records.get_job(job_id) if not (address or "").startswith("http") else None
    result = (record.result if record is not None else None) or {}
    if json_out:
        print(json.dumps({"job_id": job_id, **result}, indent=2))
        return
    if result:
        ev = result.get("evaluation", {})
        primary = ev.get("primary")
        typer.echo(f"adapter: {result.get('ref')}")
        if primary:
            typer.echo(f"{ev.get('split')} {primary}: {ev['metrics'][primary]:.2f} (n={ev.get('n')})")
        line = time_line(result.get("timing") or {}, wall)
        if line:
            typer.echo(line)


def time_line(timing: dict[str, Any], wall: Optional[float] = None) -> Optional[str]:
    """Where a job's time went, from its result's ``timing``: the base build (when the job had
    to build its base), the training loop and the evaluation as measured where they ran, and the
    rest (Ray and worker start-up, checkpoints, loading). ``wall``: this command's own seconds,
    else the job's. None for a result without timing (a job from an older release)."""
    if timing.get("loop_seconds") is None:
        return None
    total = wall if wall is not None else timing["job_seconds"]
    built = timing.get("base_build_seconds")
    parts = [("building the base", built)] if built else []
    parts += [("training loop", timing["loop_seconds"]), ("evaluation", timing["eval_seconds"])]
    rest = total - sum(seconds for _, seconds in parts)
    return f"time: {total:.1f} s = " + " + ".join(
        f"{name} {seconds:.1f} s" for name, seconds in [*parts, ("everything else", rest)])

"""``ldp eval``: score an adapter (or a bare base) on a task split; JSON and a table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ldp.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)


def eval_command(
    task: Optional[str] = typer.Option(None, "--task", help="Task key (see `ldp tasks`)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="adapters/TASK/METHOD@VERSION or a folder."),
    base: Optional[str] = typer.Option(None, "--base", help="bases/NAME@VERSION or a folder (no adapter)."),
    split: str = typer.Option("validation", "--split", help="validation | test | train."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data mirror (default LDP_DATA_DIR, else the hub)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score at most N examples."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps for generation."),
    mode: str = typer.Option("auto", "--mode", help="auto | generate | likelihood (verbaliser ELBO)."),
    samples: int = typer.Option(4, "--elbo-samples", help="Monte-Carlo samples per candidate (likelihood)."),
    batch_size: int = typer.Option(16, "--batch-size"),
    registry: Optional[str] = typer.Option(None, "--registry", help="Registry URL."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the result JSON here ('-' for stdout)."),
    bundle: Optional[str] = typer.Option(None, "--bundle", help="bundles/NAME@VERSION (or a folder): evaluate the composed adapters."),
    mix: Optional[str] = typer.Option(None, "--mix", help="Compose adapters given one by one: NAME=REF,NAME=REF (no router)."),
    weights: str = typer.Option("auto", "--weights", help="With --bundle/--mix: auto (router) | uniform | oracle (the task's own adapter) | JSON {name: weight}."),
    all_tasks: bool = typer.Option(False, "--all-tasks", help="With --bundle: every task of the bundle, router vs uniform vs oracle vs base, in one table."),
) -> None:
    """Generate (or score verbalisers) for each example and print the task's metrics."""
    from ldp.data.tasks import get_task

    _check_numbers(steps, samples, batch_size, data_dir, json_path)
    if bundle is not None or mix is not None:
        _check_common(split, limit, mode)
        return _eval_composed(
            task=task, bundle=bundle, mix=mix, weights=weights, all_tasks=all_tasks, base=base,
            split=split, data_dir=data_dir, limit=limit, steps=steps, mode=mode, samples=samples,
            batch_size=batch_size, registry=registry, json_path=json_path,
        )
    if all_tasks:
        raise UsageError("--all-tasks needs --bundle REF")
    if task is None:
        raise UsageError("give --task T (or --bundle REF --all-tasks)")
    get_task(task)
    if adapter is None and base is None:
        raise UsageError("give --adapter REF or --base REF")
    _check_common(split, limit, mode)

    from ldp.bases import load_adapted, resolve_base
    from ldp.evaluation import evaluate_task
    from ldp.models.loading import load_base

    if adapter is not None:
        model, tokenizer, info = load_adapted(adapter, registry, base)
    else:
        source = resolve_base(base, registry)
        model, tokenizer = load_base(source.folder)
        info = {"adapter": None, "base": source.ref}
    result = evaluate_task(
        model, tokenizer, task, split=split, data_dir=data_dir, limit=limit, mode=mode,
        steps=steps, elbo_samples=samples, batch_size=batch_size,
    )
    payload = result.to_dict(adapter=info.get("adapter"), base=info.get("base"))
    marginal = _label_marginal(task, split, data_dir, limit) if result.mode == "likelihood" else None
    if marginal is not None:
        payload["label_marginal"] = marginal.to_dict()
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.task} / {result.split}  (n={result.n}, {result.mode})")
    table.add_column("metric")
    table.add_column("score", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name + (" *" if name == result.primary else ""), f"{value:.4f}")
    if json_path is not None and str(json_path) == "-":
        print(json.dumps(payload, indent=2))
        return
    Console().print(table)
    if marginal is not None:
        print(f"label marginal: {marginal.score:.2f} {marginal.primary} by always answering "
              f"{marginal.label!r} (the training split's most common label, "
              f"{marginal.train_share:.1f}%)")
    if json_path is not None:
        json_path.write_text(json.dumps(payload, indent=2))


def _label_marginal(task: str, split: str, data_dir: Optional[str], limit: Optional[int]):
    """What answering the training split's majority label scores on the same examples; None
    where the training split cannot be read (the evaluation itself stands without it)."""
    from ldp.evaluation.majority import majority_baseline

    try:
        return majority_baseline(task, split, data_dir, eval_limit=limit)
    except Exception:  # noqa: BLE001 - context only: a missing train split must not fail eval
        return None


def _check_numbers(steps, samples, batch_size, data_dir, json_path) -> None:
    from ldp import checks

    checks.positive("--steps", steps)
    checks.positive("--elbo-samples", samples)
    checks.positive("--batch-size", batch_size)
    checks.data_location("--data-dir", data_dir)
    checks.output_file("--json", json_path)


def _check_common(split: str, limit: Optional[int], mode: str) -> None:
    if split not in ("train", "validation", "test"):
        raise UsageError(f"--split must be train, validation or test, got {split!r}")
    if limit is not None and limit < 1:
        raise UsageError("--limit must be >= 1")
    if mode not in ("auto", "generate", "likelihood"):
        raise UsageError(f"--mode must be auto, generate or likelihood, got {mode!r}")


def _parse_mix(text: str) -> dict[str, str]:
    pairs = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, sep, ref = part.partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise UsageError(f"--mix takes NAME=REF pairs separated by commas, got {part!r}")
        if name.strip() in pairs:
            raise UsageError(f"--mix names {name.strip()!r} twice")
        pairs[name.strip()] = ref.strip()
    if not pairs:
        raise UsageError("--mix needs at least one NAME=REF")
    return pairs


def _eval_composed(*, task, bundle, mix, weights, all_tasks, base, split, data_dir, limit, steps,
                   mode, samples, batch_size, registry, json_path) -> None:
    """``--bundle``/``--mix``: one task with one weighting, or the Table 11 comparison."""
    from ldp.data.tasks import get_task

    if bundle is not None and mix is not None:
        raise UsageError("give --bundle or --mix, not both")
    if all_tasks and bundle is None:
        raise UsageError("--all-tasks needs --bundle REF")
    if all_tasks and task is not None:
        raise UsageError("give --task T or --all-tasks, not both")
    if not all_tasks and task is None:
        raise UsageError("give --task T (or --all-tasks)")
    if task is not None:
        get_task(task)
    pairs = _parse_mix(mix) if mix is not None else None
    if weights.strip() not in ("auto", "uniform", "oracle"):
        import json as _json

        try:
            _json.loads(weights)
        except ValueError:
            raise UsageError(f"--weights must be auto, uniform, oracle or a JSON object, got {weights!r}") from None
    if pairs is not None and weights.strip() == "auto":
        weights = "uniform"  # a plain mix has no router

    from ldp.evaluation.composition import MixedModel, compare, load_bundle, load_mix, parse_weights
    from ldp.evaluation import evaluate_task

    loaded = load_bundle(bundle, registry) if bundle is not None else load_mix(pairs, registry, base)
    comp = loaded.composition
    kw = dict(mode=mode, steps=steps, elbo_samples=samples, batch_size=batch_size)
    if comp is None:  # weight-lora adapters: peft's weighted merge
        from ldp.evaluation.composition import merged_model

        model, shown = merged_model(loaded, weights, task)
        result = evaluate_task(model, loaded.tokenizer, task, split=split, data_dir=data_dir, limit=limit, **kw)
        return _print_result(result, result.to_dict(adapters=loaded.info.get("adapters"), weights=shown,
                                                    merge="peft add_weighted_adapter (cat)"), shown, json_path)
    if all_tasks:
        table = compare(loaded, comp.names, data_dir=data_dir, split=split, limit=limit, **kw)
        payload = {"bundle": loaded.info.get("ref"), **table}
        if json_path is not None and str(json_path) == "-":
            print(json.dumps(payload, indent=2))
            return
        from ldp.evaluation.composition import format_comparison

        print(format_comparison(table))
        if json_path is not None:
            json_path.write_text(json.dumps(payload, indent=2))
        return
    w = parse_weights(weights, comp.names, task)
    if isinstance(w, str) and w == "auto" and comp.router is None:
        raise UsageError("this bundle has no router; use --weights uniform, oracle or JSON")
    result = evaluate_task(MixedModel(comp, w), loaded.tokenizer, task, split=split, data_dir=data_dir,
                           limit=limit, **kw)
    shown = w if isinstance(w, str) else dict(zip(comp.names, [round(float(x), 4) for x in w]))
    payload = result.to_dict(bundle=loaded.info.get("ref"), adapters=loaded.info.get("adapters"),
                             weights=shown)
    _print_result(result, payload, shown, json_path)


def _print_result(result, payload, shown, json_path) -> None:
    if json_path is not None and str(json_path) == "-":
        print(json.dumps(payload, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.task} / {result.split}  (n={result.n}, {result.mode}, weights {shown})")
    table.add_column("metric")
    table.add_column("score", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name + (" *" if name == result.primary else ""), f"{value:.4f}")
    Console().print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(payload, indent=2))


"""Measurements a report makes on trained adapters (no training here).

- :func:`forgetting`: ELBO perplexity on held-out corpora, of the base and of each method's
  adapted model (for frozen-base methods, the base with the adapter active), on the same blocks
  with the same Monte-Carlo draws, and the relative change.
- :func:`effective_ranks`: per phase, Eq. 28's effective rank of each lora-diffusion adapter.
- :func:`trajectories`: the final hidden state (mean over answer positions) at several steps of
  the denoising trajectory, base vs adapted, projected to 2-D by PCA. The PCA is an SVD of the
  centred states (``torch.linalg.svd``): no extra package. Also a cluster separation ratio.
- :func:`efficiency`: ``ldp.bench`` (each method in its own process).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ldp.errors import first_line

__all__ = ["efficiency", "effective_ranks", "forgetting", "pca_2d", "separation", "trajectories"]


def efficiency(methods: list[str], cfg, base: str, registry: str | None, *, log=print) -> dict[str, Any]:
    from dataclasses import asdict

    from ldp.bench import BenchConfig, run_bench

    bench = BenchConfig(base=base, registry=registry, **asdict(cfg))
    return run_bench([m for m in methods], bench, log=lambda m: log(f"[ldp]   bench: {m}"))


def _corpus_batches(name: str, cfg, tokenizer, data_dir: str | None) -> list[dict[str, torch.Tensor]]:
    from ldp.data.corpora import corpus_blocks, load_corpus

    blocks = corpus_blocks(load_corpus(name, cfg.split, data_dir), tokenizer, cfg.block_len)[: cfg.blocks]
    size = 8
    return [
        {"input_ids": blocks[i : i + size], "response_mask": torch.ones_like(blocks[i : i + size], dtype=torch.bool)}
        for i in range(0, len(blocks), size)
    ]


def forgetting(cfg, base: str, adapters: dict[str, str | dict], registry: str | None, data_dir: str | None,
               *, seed: int = 0, log=print) -> dict[str, Any]:
    """``{"corpora", "blocks": {corpus: n}, "rows": [{"model", "ref", "ppl": {...}, "change": {...}}]}``.

    ``adapters``: ``{method: registry ref}``, or ``{method: {"error": why}}`` for a failed run."""
    from ldp.bases import load_adapted, resolve_base
    from ldp.diffusion import DiffusionConfig, elbo_perplexity
    from ldp.models.loading import load_base

    diffusion = DiffusionConfig()
    base_model, tokenizer = load_base(resolve_base(base, registry).folder)
    base_model.eval()
    batches: dict[str, list] = {}
    notes: dict[str, str] = {}
    for corpus in cfg.corpora:
        try:
            batches[corpus] = _corpus_batches(corpus, cfg, tokenizer, data_dir)
        except Exception as exc:  # noqa: BLE001 - a missing corpus leaves its column empty
            notes[corpus] = first_line(exc)

    def measure(model) -> dict[str, float]:
        out = {}
        for corpus, bs in batches.items():
            gen = torch.Generator().manual_seed(seed + 1234)  # the same draws for every model
            with torch.no_grad():
                out[corpus] = round(elbo_perplexity(model, bs, diffusion, n_samples=cfg.elbo_samples, generator=gen), 4)
        return out

    rows = []
    log("[ldp]   forgetting: base")
    reference = measure(base_model)
    rows.append({"model": "base", "ref": base, "ppl": reference})
    del base_model
    for method, ref in adapters.items():
        row: dict[str, Any] = {"model": method}
        if isinstance(ref, dict):
            row["error"] = ref.get("error", "no adapter")
            rows.append(row)
            continue
        row["ref"] = ref
        log(f"[ldp]   forgetting: {method} ({ref})")
        try:
            model, _, _ = load_adapted(ref, registry)
            model.eval()
            row["ppl"] = measure(model)
            row["change"] = {c: round(100.0 * (row["ppl"][c] - reference[c]) / reference[c], 2) for c in row["ppl"]}
        except Exception as exc:  # noqa: BLE001 - one failed measurement is reported in its row
            row["error"] = first_line(exc)
        rows.append(row)
    return {
        "corpora": list(cfg.corpora), "split": cfg.split, "block_len": cfg.block_len,
        "blocks": {c: sum(len(b["input_ids"]) for b in bs) for c, bs in batches.items()},
        "elbo_samples": cfg.elbo_samples, "rows": rows, "notes": notes,
    }


def effective_ranks(adapters: dict[str, str], registry: str | None, *, log=print) -> list[dict[str, Any]]:
    """One row per task: ``{"task", "ref", "ranks": {phase: r_eff}, "configured": {phase: r}}``."""
    from ldp.bases import load_adapted

    rows = []
    for task, ref in adapters.items():
        row: dict[str, Any] = {"task": task, "ref": ref}
        try:
            model, _, _ = load_adapted(ref, registry)
            cfg = model.config
            row["ranks"] = {k: round(v, 3) for k, v in model.effective_rank().items()}
            row["configured"] = dict(zip(cfg.phase_names, cfg.ranks))
        except Exception as exc:  # noqa: BLE001
            row["error"] = first_line(exc)
        rows.append(row)
        log(f"[ldp]   effective rank {task}: {row.get('ranks', row.get('error'))}")
    return rows


# -- trajectories ---------------------------------------------------------------------------------
@torch.no_grad()
def _trajectory(model, adapted: bool, ids: list[int], instr: list[int], answer: int, points: int) -> list[list[float]]:
    """Hidden-state means over the answer at ``points`` steps from t = T to t = 1, unmasking the
    answer greedily (most confident first) so that it is fully revealed after the last point."""
    from ldp.diffusion import DiffusionConfig

    T = DiffusionConfig().num_steps  # the T every adapter recipe trains with by default
    mask_id = model.mask_token_id
    x = torch.tensor([ids + [mask_id] * answer])
    inst = torch.tensor([instr + [0] * answer], dtype=torch.bool)
    attn = torch.ones_like(x)
    ans = torch.zeros_like(x, dtype=torch.bool)
    ans[0, len(ids):] = True
    out = []
    for i in range(points):
        step = round(T - i * (T - 1) / (points - 1))
        t = torch.tensor([step / T], dtype=torch.float32)
        if adapted:
            hidden = model.hidden_states(x, t, attn, instruction_mask=inst)
        else:
            hidden = model.hidden_states(x, t, attn)
        hidden = hidden.float()
        out.append(hidden[ans].mean(0).tolist())
        masked = ans & (x == mask_id)
        goal = math.ceil(answer * (i + 1) / points)
        reveal = int(masked.sum()) - (answer - goal)
        if reveal > 0:
            logits = model.head(hidden[masked]).float()
            conf, pred = logits.softmax(-1).max(-1)
            order = conf.argsort(descending=True)[:reveal]
            where = masked.nonzero()[order]
            x[where[:, 0], where[:, 1]] = pred[order]
    return out


def pca_2d(states: torch.Tensor) -> torch.Tensor:
    """(N, d) -> (N, 2): the centred states on their two leading principal axes (SVD)."""
    centred = states - states.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return centred @ vh[:2].T


def separation(states: torch.Tensor, labels: list[str]) -> float:
    """Mean distance between task centroids / mean distance of a state to its task centroid
    (higher: tasks more separated). Needs at least two tasks."""
    names = sorted(set(labels))
    idx = {n: torch.tensor([i for i, lab in enumerate(labels) if lab == n]) for n in names}
    cents = torch.stack([states[idx[n]].mean(0) for n in names])
    within = torch.cat([(states[idx[n]] - cents[j]).norm(dim=1) for j, n in enumerate(names)]).mean()
    between = torch.pdist(cents).mean()
    return float(between / within.clamp_min(1e-12))


def trajectories(cfg, tasks: list[str], adapters: dict[str, str], base: str, registry: str | None,
                 data_dir: str | None, split: str, *, log=print) -> dict[str, Any]:
    """Per model (base, adapted): 2-D points per task/example/step and the separation ratio."""
    from ldp.bases import load_adapted, resolve_base
    from ldp.data.collate import encode_example
    from ldp.data.loading import load_examples
    from ldp.data.tasks import get_task
    from ldp.models.loading import load_base

    base_model, tokenizer = load_base(resolve_base(base, registry).folder)
    base_model.eval()
    prompts = {}
    for task in tasks:
        spec = get_task(task)
        examples = load_examples(spec, split, data_dir, cfg.examples)
        prompts[task] = [(encode_example(ex, tokenizer, None, spec.max_new_tokens), spec.max_new_tokens)
                         for ex in examples]
    out: dict[str, Any] = {"tasks": tasks, "split": split, "examples": {t: len(p) for t, p in prompts.items()},
                           "points": cfg.points, "models": {}, "errors": {}}
    for kind in ("base", "adapted"):
        states, labels, steps = [], [], []
        for task in tasks:
            if kind == "base":
                model, adapted = base_model, False
            else:
                try:
                    model, _, _ = load_adapted(adapters[task], registry)
                    model.eval()
                    adapted = True
                except Exception as exc:  # noqa: BLE001
                    out["errors"][task] = first_line(exc)
                    continue
            for enc, answer in prompts[task]:
                traj = _trajectory(model, adapted, enc["prompt_ids"], enc["instruction_mask"], answer, cfg.points)
                states += traj
                labels += [task] * len(traj)
                steps += list(range(len(traj)))
        if len(set(labels)) < 1:
            continue
        x = torch.tensor(states, dtype=torch.float64)
        xy = pca_2d(x)
        out["models"][kind] = {
            "x": [round(float(v), 4) for v in xy[:, 0]], "y": [round(float(v), 4) for v in xy[:, 1]],
            "task": labels, "point": steps,
            "separation": round(separation(x, labels), 4) if len(set(labels)) > 1 else None,
        }
        log(f"[ldp]   trajectories {kind}: separation {out['models'][kind]['separation']}")
    return out

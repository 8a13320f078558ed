"""Evaluating composed adapters (paper Table 11): router vs uniform vs oracle vs the base.

- :func:`load_bundle`: a bundle (``bundles/NAME@V`` or a folder holding ``bundle.json``) as a
  :class:`~ldp.methods.compose.Composition` with its router attached, and the tokenizer.
- :class:`MixedModel`: a composition with one fixed way of weighting (``auto`` = the router,
  ``uniform``, or explicit weights), shaped as an adapted model so that
  :func:`ldp.evaluation.evaluate.evaluate_task` passes it the instruction mask.
- :func:`router_accuracy`: how often the router's largest weight goes to the prompt's own task,
  on held-out prompts (the composed model's first step: the answer fully masked).
- :func:`compare`: the Table 11 analogue, one row per task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ldp.errors import UsageError
from ldp.methods.base import AdaptedModel

__all__ = [
    "BUNDLE_FILE",
    "WEIGHT_MODES",
    "LoadedBundle",
    "MixedModel",
    "compare",
    "format_comparison",
    "load_bundle",
    "load_mix",
    "merged_model",
    "parse_weights",
    "router_accuracy",
]

BUNDLE_FILE = "bundle.json"
WEIGHT_MODES = ("auto", "uniform", "oracle")


@dataclass
class LoadedBundle:
    composition: Any
    """The :class:`Composition` (router attached when the bundle has one)."""
    tokenizer: Any
    info: dict[str, Any]
    """The parsed ``bundle.json`` plus ``ref`` (the concrete bundle reference or folder)."""


def load_bundle(ref_or_folder: str, registry: str | None = None) -> LoadedBundle:
    """Pull (verified) and load a bundle: base, every adapter (one shared base), the router."""
    from ldp.bases import resolve_base
    from ldp.methods import base_fingerprint
    from ldp.methods.compose import load_composition
    from ldp.methods.router import load_router
    from ldp.models.loading import load_base
    from ldp.store import Registry

    reg = None
    if ref_or_folder.startswith("bundles/"):
        reg = Registry(registry)
        concrete = reg.resolve(ref_or_folder)
        folder = Path(reg.pull(concrete))
        ref = str(concrete)
    else:
        folder = Path(ref_or_folder).expanduser()
        if not (folder / BUNDLE_FILE).is_file():
            raise UsageError(f"bundle {ref_or_folder!r} is neither bundles/NAME@VERSION nor a folder with {BUNDLE_FILE}")
        ref = str(folder)
    try:
        info = json.loads((folder / BUNDLE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{folder / BUNDLE_FILE}: unreadable ({exc})") from None
    source = resolve_base(info["base"]["ref"], registry)
    base, tokenizer = load_base(source.folder)
    base_hash = base_fingerprint(base)

    def pull(r: str) -> Path:
        nonlocal reg
        if "/" in r and not Path(r).is_dir():
            reg = reg or Registry(registry)
            return Path(reg.pull(r))
        return Path(r)

    comp = load_composition(base, {t: pull(r) for t, r in info["adapters"].items()}, base_hash=base_hash)
    if info.get("router"):
        comp.set_router(load_router(pull(info["router"]), base_hash=base_hash))
    comp.eval()
    return LoadedBundle(comp, tokenizer, {**info, "ref": ref})


def parse_weights(text: str, names: list[str], task: str | None) -> str | torch.Tensor:
    """``auto | uniform | oracle | JSON {name: weight}`` -> ``"auto"``, ``"uniform"`` or (J,)."""
    from ldp.methods.compose import weights_from_mapping

    text = text.strip()
    if text in ("auto", "uniform"):
        return text
    if text == "oracle":
        if task not in names:
            raise UsageError(f"--weights oracle needs the task's own adapter; the bundle has {', '.join(names)}")
        return weights_from_mapping(names, {task: 1.0})
    try:
        mix = json.loads(text)
    except json.JSONDecodeError:
        raise UsageError(
            f"--weights must be auto, uniform, oracle or a JSON object like '{{\"{names[0]}\": 1.0}}', got {text!r}"
        ) from None
    if not isinstance(mix, dict) or not mix:
        raise UsageError("--weights JSON must be a non-empty object {adapter: weight}")
    return weights_from_mapping(names, mix)


class MixedModel(AdaptedModel):
    """A composition evaluated with one fixed weighting; an adapted model of the base.

    Subclassing :class:`AdaptedModel` is what tells the evaluation code to pass the instruction
    mask (the adapters' ``Enc(c)``); the composition owns the base and the adapters."""

    method_name = "composition"

    def __init__(self, composition, weights: str | torch.Tensor | None) -> None:
        super().__init__(composition.base, None, base_hash=composition.base_hash)
        self.composition = composition
        self.weights = weights

    def hidden_states(self, input_ids, t=None, attention_mask=None, *, steps=None, instruction_mask=None):
        return self.composition.hidden_states(
            input_ids, t, attention_mask, steps=steps, instruction_mask=instruction_mask,
            weights=self.weights,
        )

    def trainable_parameters(self):
        return []


def _pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a common length: ids (B, L) and a keep mask (B, L)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    keep = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
        keep[i, width - len(s):] = True
    return ids, keep


@torch.no_grad()
def router_accuracy(
    composition, tokenizer, tasks: list[str], *, data_dir: str | None = None,
    split: str = "validation", limit: int | None = 100, batch_size: int = 32,
) -> dict[str, float]:
    """Per task (and ``overall``): the fraction of prompts whose largest router weight is their
    own task's adapter. Prompts are scored as the first composed step sees them: the prompt and
    the task's answer length of [MASK] at ``t = T``."""
    from ldp.data.collate import encode_example
    from ldp.data.loading import load_examples
    from ldp.data.tasks import get_task

    router = composition.router
    if router is None:
        raise UsageError("this bundle has no router")
    names = composition.names
    T = composition.num_steps
    out, hits, total = {}, 0, 0
    for task in tasks:
        spec = get_task(task)
        if task not in names:
            raise UsageError(f"the bundle has no adapter for {task}")
        examples = load_examples(spec, split, data_dir, limit)
        enc = [encode_example(ex, tokenizer, None, spec.max_new_tokens) for ex in examples]
        good = 0
        for start in range(0, len(enc), batch_size):
            chunk = enc[start : start + batch_size]
            prompts, keep = _pad_left([e["prompt_ids"] for e in chunk], composition.pad_token_id)
            instr, _ = _pad_left([e["instruction_mask"] for e in chunk], 0)
            B = prompts.shape[0]
            A = spec.max_new_tokens
            ids = torch.cat([prompts, torch.full((B, A), composition.mask_token_id)], 1)
            attn = torch.cat([keep, torch.ones(B, A, dtype=torch.bool)], 1).long()
            inst = torch.cat([instr.bool(), torch.zeros(B, A, dtype=torch.bool)], 1)
            hidden = composition.base_states(ids, attention_mask=attn, steps=torch.full((B,), T)).hidden
            scores = router.task_scores(composition.encoding(hidden, ids, inst, attn))
            good += int((scores.argmax(-1) == names.index(task)).sum())
        out[task] = good / max(1, len(enc))
        hits, total = hits + good, total + len(enc)
    out["overall"] = hits / max(1, total)
    return out


def compare(
    bundle: LoadedBundle, tasks: list[str], *, modes: tuple[str, ...] = ("auto", "uniform", "oracle", "base"),
    data_dir: str | None = None, split: str = "validation", limit: int | None = 100,
    log=None, **eval_kw: Any,
) -> dict[str, Any]:
    """Table 11: ``{"rows": [{task, metric, auto, uniform, oracle, base}], "router_accuracy"}``.

    Scores are each task's primary metric on ``split`` (the same examples and seed for every
    column, so the columns differ only by the weighting)."""
    from ldp.evaluation.evaluate import evaluate_task

    comp = bundle.composition
    rows = []
    for task in tasks:
        row: dict[str, Any] = {"task": task}
        for mode in modes:
            if mode == "base":
                model = comp.base
            elif mode == "auto" and comp.router is None:
                continue
            else:
                model = MixedModel(comp, parse_weights(mode, comp.names, task))
            result = evaluate_task(model, bundle.tokenizer, task, split=split, data_dir=data_dir,
                                   limit=limit, progress=False, **eval_kw)
            row["metric"], row["n"] = result.primary, result.n
            row[mode] = result.metrics[result.primary]
            if log is not None:
                log(f"{task} {mode}: {result.primary} = {row[mode]:.4f} (n={result.n})")
        rows.append(row)
    table: dict[str, Any] = {"rows": rows, "split": split, "limit": limit}
    if comp.router is not None:
        table["router_accuracy"] = router_accuracy(comp, bundle.tokenizer, tasks, data_dir=data_dir,
                                                   split=split, limit=limit)
    return table


def load_mix(adapters: dict[str, str], registry: str | None = None, base: str | None = None) -> LoadedBundle:
    """Adapters given one by one (``{name: adapters/T/M@V or folder}``) composed over one base
    (``base``, else the one the first adapter names), without a router. Adapters of another
    base are refused with one line before any of them is loaded."""
    from ldp.bases import resolve_base
    from ldp.methods import base_fingerprint, read_adapter_config
    from ldp.methods.compose import load_composition
    from ldp.models.loading import load_base
    from ldp.store import Registry

    if not adapters:
        raise UsageError("a mix needs at least one adapter")
    folders: dict[str, Path] = {}
    refs: dict[str, str] = {}
    reg = None
    for name, ref in adapters.items():
        if ref.startswith("adapters/"):
            reg = reg or Registry(registry)
            concrete = reg.resolve(ref)
            folders[name], refs[name] = Path(reg.pull(concrete)), str(concrete)
        else:
            folder = Path(ref).expanduser()
            if not folder.is_dir():
                raise UsageError(f"adapter {ref!r} is neither a registry reference (adapters/TASK/METHOD@VERSION) nor a folder")
            folders[name], refs[name] = folder, str(folder)
    metas = {name: read_adapter_config(folder) for name, folder in folders.items()}
    first_name, first = next(iter(metas.items()))
    info = {"base": None, "adapters": refs, "router": None, "ref": None, "folders": folders}
    for name, meta in metas.items():  # all on one base, checked before any weights are read
        if meta.get("base_hash") != first.get("base_hash"):
            raise UsageError(
                f"adapter {name!r} was trained on base {meta.get('base_model_name_or_path')!r} "
                f"(hash {str(meta.get('base_hash'))[:12]}), adapter {first_name!r} on "
                f"{first.get('base_model_name_or_path')!r} (hash {str(first.get('base_hash'))[:12]}); "
                "adapters of a mix must share one base"
            )
    base_ref = base or first.get("base_model_name_or_path")
    if not base_ref:
        raise UsageError("the first adapter does not name its base; pass --base")
    source = resolve_base(base_ref, registry)
    model_base, tokenizer = load_base(source.folder)
    info["base"] = {"ref": source.ref}
    if all(m.get("ldp_method") == "weight-lora" for m in metas.values()):
        # Weight-space adapters merge (peft) once a weight vector is known: see merged_model().
        return LoadedBundle(None, tokenizer, {**info, "base_model": model_base, "method": "weight-lora"})
    comp = load_composition(model_base, folders, base_hash=base_fingerprint(model_base))
    comp.eval()
    return LoadedBundle(comp, tokenizer, info)


def merged_model(loaded: LoadedBundle, weights: str, task: str | None):
    """The weighted peft merge of a :func:`load_mix` of weight-lora adapters (Table 11 baseline):
    ``uniform``, ``oracle`` or a JSON object; no router."""
    from ldp.methods.compose import weights_from_mapping
    from ldp.methods.merge import merge_weight_lora

    folders = loaded.info["folders"]
    names = list(folders)
    w = parse_weights(weights, names, task)
    if isinstance(w, str):
        if w == "auto":
            raise UsageError("weight-lora mixes have no router; use --weights uniform, oracle or JSON")
        w = weights_from_mapping(names, {n: 1.0 / len(names) for n in names})
    model = merge_weight_lora(loaded.info["base_model"], folders, dict(zip(names, w.tolist())))
    return model, dict(zip(names, [round(float(x), 4) for x in w]))


def format_comparison(table: dict[str, Any]) -> str:
    """The Table 11 analogue as plain text (one row per task)."""
    cols = ["auto", "uniform", "oracle", "base"]
    head = f"{'task':<12} {'metric':<12} " + " ".join(f"{c:>8}" for c in ("router", "uniform", "oracle", "base")) + "  router-id"
    lines = [head, "-" * len(head)]
    acc = table.get("router_accuracy") or {}
    for r in table["rows"]:
        vals = " ".join(f"{r[c]:>8.3f}" if c in r else f"{'-':>8}" for c in cols)
        ident = f"{acc[r['task']]:>9.3f}" if r["task"] in acc else f"{'-':>9}"
        lines.append(f"{r['task']:<12} {r.get('metric', ''):<12} {vals}  {ident}")
    if "overall" in acc:
        lines.append(f"router task identification, all prompts: {acc['overall']:.3f}")
    return "\n".join(lines)

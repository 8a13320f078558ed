"""Report sections as Markdown, built from the results dict alone (pure: no models, no Ray).

``build_section(key, results)`` -> :class:`Section` (title, Markdown body, the claim checked).
A section that was not run, or whose inputs are missing, still renders: its body says why.
Every score says the split and how many examples it was measured on; a failed run shows
``failed: <one line>`` in its cell; the paper's number stands beside ours where it has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ldp.jobs import report_claims as claims
from ldp.jobs import report_paper as paper
from ldp.jobs.report_spec import SECTIONS

__all__ = ["Section", "build_section", "cell", "fmt"]


@dataclass
class Section:
    key: str
    title: str
    body: str
    claims: list[claims.Claim] = field(default_factory=list)


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def cell(row: dict[str, Any] | None, digits: int = 1) -> str:
    """A run's score cell: ``72.0``, ``failed: <line>`` or ``—`` (not run)."""
    if not row:
        return "—"
    if row.get("error"):
        return "failed: " + str(row["error"]).replace("|", "/").splitlines()[0][:120]
    return fmt(row.get("score"), digits)


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _empty(section: dict[str, Any] | None) -> str | None:
    if not section:
        return "Not run in this report (not among the chosen sections)."
    if section.get("status") != "ok":
        return section.get("why") or "No results."
    return None


def _figures(section: dict[str, Any]) -> str:
    return "\n".join(f"![{name}]({name})" for name in section.get("figures") or [])


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _label(method: str) -> str:
    return paper.METHOD_LABELS.get(method, method)


# -- 1 ------------------------------------------------------------------------------------------
def _methods(s: dict[str, Any], meta: dict[str, Any]) -> tuple[str, list[claims.Claim]]:
    comp = s["compare"]
    tasks, methods, rows = comp["tasks"], comp["methods"], comp["rows"]
    by = {(r["task"], r["method"]): r for r in rows}
    head = ["method"]
    for t in tasks:
        ns = sorted({r.get("n") for r in rows if r["task"] == t and r.get("n") is not None})
        metric = next((r.get("primary") for r in rows if r["task"] == t and r.get("primary")), "score")
        head.append(f"{t} ({metric}, n={'/'.join(str(n) for n in ns) or '—'})")
    per_task = []
    for m in methods:
        line = [_label(m)]
        for t in tasks:
            mine = cell(by.get((t, m)))
            ref = paper.TABLE8.get(t, {}).get(m)
            line.append(mine + (f" [paper {ref}]" if ref is not None else ""))
        per_task.append(line)
    summary = comp["summary"]
    full_seconds = sum(by[(t, "full")].get("train_seconds") or 0 for t in tasks if (t, "full") in by) or None
    avg_rows = []
    for m in methods:
        mine = [by.get((t, m)) or {} for t in tasks]
        pct = next((c.get("trainable_pct") for c in mine if c.get("trainable_pct") is not None), None)
        seconds = sum(c.get("train_seconds") or 0 for c in mine) or None
        p = paper.TABLE7.get(m, {})
        avg_rows.append([
            _label(m), fmt(summary[m]["average"]), fmt(p.get("average")), fmt(summary[m]["pct_of_full"]),
            fmt(p.get("pct_of_full")), fmt(pct, 3), fmt(p.get("trainable_pct")), fmt(seconds, 0),
            fmt(seconds / full_seconds, 2) + "x" if seconds and full_seconds else "—",
            f"{p['time']}x" if "time" in p else "—",
        ])
    body = [
        f"Every method on every task under one budget ({meta.get('budget', '')}); scores are each task's "
        f"primary metric on the **{comp['split']}** split, n examples per cell as in each column's header; "
        "the paper's number (1.3B base) in brackets.",
        "", _table(head, per_task), "",
        _table(["method", "average", "paper", "% of full", "paper", "trainable %", "paper", "train s",
                "time vs full", "paper"], avg_rows),
    ]
    for task, why in (comp.get("skipped") or {}).items():
        body.append(f"\n- skipped {task}: {why}")
    averages = {m: summary[m]["average"] for m in methods}
    return "\n".join(body), [claims.methods_average(averages)]


# -- 2 ------------------------------------------------------------------------------------------
def _scaled(value: float | None, factor: float, digits: int) -> str:
    return "—" if value is None else fmt(float(value) * factor, digits)


def _efficiency(s: dict[str, Any], meta: dict[str, Any]) -> tuple[str, list[claims.Claim]]:
    bench = s["bench"]
    cfg = bench.get("config", {})
    rows = []
    for m, r in bench["methods"].items():
        p = paper.TABLE9.get(m, {})
        rows.append([
            _label(m), fmt(r.get("step_s"), 4), fmt(p.get("step_s"), 2),
            _scaled(r.get("peak_bytes"), 2**-20, 1), _scaled(r.get("gen_latency_s"), 1000, 1),
            fmt(p.get("gen_ms")), fmt(r.get("trainable_params")), fmt(p.get("params")),
            _scaled(r.get("adapter_bytes"), 2**-20, 3), fmt(p.get("storage_mb")),
        ])
    ratios = bench.get("ratios", {})
    ratio_rows = [[k, fmt(v, 3), fmt(paper.TABLE9_RATIOS.get(k), 3)] for k, v in ratios.items()]
    body = [
        f"`ldp bench` on the report's base: batch {cfg.get('batch')}, sequence {cfg.get('seq')} "
        f"({cfg.get('response')} scored), median of {cfg.get('steps')} timed step(s) after {cfg.get('warmup')} "
        f"warm-up step(s); generation of {cfg.get('gen_length')} tokens in {cfg.get('gen_steps')} steps, batch 1; "
        f"frozen base forward {fmt(bench.get('frozen_forward_s'), 4)} s ({bench.get('base_dtype')}). "
        "Paper: 1.3B, batch 64.",
        "", _table(["method", "s/step", "paper", "peak MB", "generate ms", "paper", "trainable", "paper",
                    "adapter MB", "paper"], rows),
        "", _table(["ratio", "ours", "paper"], ratio_rows),
    ]
    return "\n".join(body), [claims.efficiency(ratios)]


# -- 3 ------------------------------------------------------------------------------------------
def _forgetting(s: dict[str, Any], meta: dict[str, Any]) -> tuple[str, list[claims.Claim]]:
    corpora = s["corpora"]
    head = ["model (task " + s.get("task", "?") + ")"]
    for c in corpora:
        head += [f"{c} ppl (n={s['blocks'].get(c, 0)} blocks)", "change", "paper"]
    rows, means = [], {}
    for r in s["rows"]:
        line = [_label(r["model"]) if r["model"] != "base" else "base (pretrained)"]
        if r.get("error"):
            line += ["failed: " + r["error"][:100]] + ["—"] * (3 * len(corpora) - 1)
            rows.append(line)
            continue
        changes = r.get("change") or {}
        for c in corpora:
            ref = paper.TABLE10.get(r["model"], {}).get(c)
            line += [fmt((r.get("ppl") or {}).get(c), 2),
                     f"{changes[c]:+.1f}%" if c in changes else "—",
                     (f"{ref}" if r["model"] == "base" else f"+{ref}%") if ref is not None else "—"]
        rows.append(line)
        if changes:
            means[r["model"]] = _mean([changes[c] for c in corpora if c in changes])
    body = [
        f"ELBO perplexity (an upper bound, {s.get('elbo_samples')} Monte-Carlo draw(s) per block, the same "
        f"draws for every model) on the **{s.get('split')}** split of each held-out corpus, blocks of "
        f"{s.get('block_len')} tokens; each method's model after training on {s.get('task')} (frozen-base "
        "methods: the base with the adapter active). Paper: perplexity of the base, relative change after "
        "training.",
        "", _table(head, rows),
    ]
    for corpus, why in (s.get("notes") or {}).items():
        body.append(f"\n- {corpus}: {why}")
    return "\n".join(body), [claims.forgetting(means)]


# -- 4 ------------------------------------------------------------------------------------------
def _variant_summary(v: dict[str, Any]) -> dict[str, Any]:
    rows = v["rows"]
    ok = [r for r in rows if r.get("score") is not None]
    err = next((r["error"] for r in rows if r.get("error")), None)
    complete = len(ok) == len(rows) and rows
    return {
        "score": _mean([r["score"] for r in ok]) if complete else None,
        "error": err,
        "n": sorted({r.get("n") for r in ok if r.get("n") is not None}),
        "trainable": next((r.get("trainable") for r in ok if r.get("trainable")), None),
        "trainable_pct": next((r.get("trainable_pct") for r in ok if r.get("trainable_pct") is not None), None),
        "train_seconds": sum(r.get("train_seconds") or 0 for r in ok) or None,
    }


def _score_cell(summary: dict[str, Any]) -> str:
    if summary["score"] is None:
        return "failed: " + summary["error"][:100] if summary["error"] else "—"
    return f"{summary['score']:.1f} (n={'/'.join(str(n) for n in summary['n'])})"


def _ablations(s: dict[str, Any], meta: dict[str, Any]) -> tuple[str, list[claims.Claim]]:
    variants = s["variants"]
    tasks = ", ".join(variants[0]["tasks"]) if variants else "—"
    body = [f"lora-diffusion variants on {tasks} under the report's budget; score: mean primary metric over "
            f"those tasks on the **{meta.get('split')}** split (n per task in brackets). Paper: 1.3B, mean over tasks."]
    found = []
    rank_rows, rank_sum = [], {}
    mod_rows, mod_scores = [], {}
    cond_rows = []
    for v in variants:
        summ = _variant_summary(v)
        if v["group"] == "rank":
            ranks = v["params"].get("ranks") or []
            key = "step-adaptive" if "default" in v["label"] else f"uniform r={ranks[0] if ranks else '?'}"
            p = paper.TABLE12.get(key, {})
            rank_rows.append([v["label"], _score_cell(summ), fmt(p.get("score")), fmt(summ["trainable"]),
                              fmt(p.get("params")), fmt(summ["train_seconds"], 0), f"{p['time']}x" if p else "—"])
            rank_sum[key] = summ
        elif v["group"] == "modules":
            k = v["params"]["modules_per_phase"]
            p = paper.TABLE13.get(k, {})
            mod_rows.append([v["label"], _score_cell(summ), fmt(p.get("score")), fmt(summ["trainable_pct"], 3),
                             fmt(p.get("pct"), 2), fmt(summ["train_seconds"], 0)])
            mod_scores[k] = summ["score"]
        else:
            cond_rows.append([v["label"], _score_cell(summ), fmt(summ["trainable"]), fmt(summ["train_seconds"], 0)])
    if rank_rows:
        body += ["", "**Rank** (Table 12)", "", _table(["ranks", "score", "paper", "trainable", "paper",
                                                         "train s", "paper time"], rank_rows)]
        found.append(claims.adaptive_rank(rank_sum.get("step-adaptive"), rank_sum.get("uniform r=64")))
    if mod_rows:
        body += ["", "**Modules per phase** (Table 13)", "",
                 _table(["k", "score", "paper", "trainable %", "paper", "train s"], mod_rows)]
        found.append(claims.modules_per_phase(mod_scores))
    if cond_rows:
        body += ["", "**Conditioning and regularisers** (no paper number)", "",
                 _table(["variant", "score", "trainable", "train s"], cond_rows)]
    return "\n".join(body), found


# -- 5 ------------------------------------------------------------------------------------------
def _effective_rank(s: dict[str, Any], meta: dict[str, Any]) -> tuple[str, list[claims.Claim]]:
    rows = s["rows"]
    phases = next((list(r["ranks"]) for r in rows if r.get("ranks")), list(paper.EFFECTIVE_RANK))
    lines, per_phase = [], {p: [] for p in phases}
    for r in rows:
        if r.get("error"):
            lines.append([r["task"], *(["failed: " + r["error"][:100]] + ["—"] * (len(phases) - 1))])
            continue
        lines.append([r["task"], *[f"{r['ranks'][p]:.2f} (of {r['configured'].get(p)})" for p in phases]])
        for p in phases:
            per_phase[p].append(r["ranks"][p])
    means = {p: _mean(v) for p, v in per_phase.items() if v}
    if means:
        lines.append(["mean", *[fmt(means.get(p), 2) for p in phases]])
    lines.append(["paper", *[("{}-{}".format(*paper.EFFECTIVE_RANK[p]) if p in paper.EFFECTIVE_RANK else "—")
                             for p in phases]])
    body = ["Entropy effective rank (Eq. 28) of each phase's W_A W_B, averaged over the phase's modules, of "
            "the main run's lora-diffusion adapter per task (the configured rank in brackets; a property of "
            "the weights, not measured on examples).", "",
            _table(["task", *phases], lines), "", _figures(s)]
    return "\n".join(body), [claims.effective_rank_order(means)]


# -- 6 ------------------------------------------------------------------------------------------
def _composition(s: dict[str, Any], meta: dict[str, Any]) -> tuple[str, list[claims.Claim]]:
    comp = s["comparison"]
    acc = comp.get("router_accuracy") or {}
    rows, cols = [], ("auto", "uniform", "oracle", "base")
    for r in comp["rows"]:
        rows.append([r["task"], str(r.get("metric")), fmt(r.get("n")), *[fmt(r.get(c), 1) for c in cols],
                     fmt(acc.get(r["task"]), 3)])
    means = {c: _mean([r[c] for r in comp["rows"] if c in r]) for c in cols}
    rows.append(["mean", "", "", *[fmt(means[c], 1) for c in cols], fmt(acc.get("overall"), 3)])
    body = [f"The main run's lora-diffusion adapters composed over one base ({s.get('bundle')}), each task's "
            f"prompts scored on the **{comp.get('split')}** split (n per row) with the router's weights, uniform "
            "weights, only the task's own adapter (oracle) and no adapter (base); router-id: how often the "
            "router's largest weight is the prompt's own task. The paper's Table 11 (composite tasks, "
            f"LoRA-Diffusion {paper.TABLE11['lora-diffusion']} vs weight LoRA {paper.TABLE11['weight-lora']}) "
            "has no per-task analogue here.", "",
            _table(["task", "metric", "n", "router", "uniform", "oracle", "base", "router-id"], rows)]
    return "\n".join(body), [claims.composition(means)]


# -- 7 ------------------------------------------------------------------------------------------
def data_curves(s: dict[str, Any]) -> dict[str, dict[str, dict[float, float]]]:
    curves: dict[str, dict[str, dict[float, float]]] = {}
    for p in s["points"]:
        if p.get("score") is not None:
            curves.setdefault(p["task"], {}).setdefault(p["method"], {})[p["fraction"]] = p["score"]
    return curves


def _data_efficiency(s: dict[str, Any], meta: dict[str, Any]) -> tuple[str, list[claims.Claim]]:
    rows = []
    for p in s["points"]:
        score = cell(p) + (f" (n={p['n']})" if p.get("n") is not None and not p.get("error") else "")
        rows.append([p["task"], _label(p["method"]), f"{100 * p['fraction']:.0f}%", fmt(p.get("train_limit")) if
                     p.get("train_limit") else "all", score])
    body = [f"Score on the **{meta.get('split')}** split vs the fraction of the training set each run saw "
            "(of the budget's training examples); the 100% point is the main run.", "",
            _table(["task", "method", "fraction", "train examples", "score"], rows), "", _figures(s)]
    return "\n".join(body), [claims.data_efficiency(data_curves(s))]


# -- 8 ------------------------------------------------------------------------------------------
def _trajectories(s: dict[str, Any], meta: dict[str, Any]) -> tuple[str, list[claims.Claim]]:
    models = s.get("models", {})
    rows = [[kind, fmt(models[kind].get("separation"), 3), str(len(models[kind]["x"]))] for kind in models]
    n = ", ".join(f"{t} {k}" for t, k in (s.get("examples") or {}).items())
    body = [f"Final hidden states (mean over the answer positions) at {s.get('points')} steps from t = T to "
            f"t = 1 while the answer is unmasked greedily, for {n} **{s.get('split')}** prompts per task; "
            "projected to 2-D by PCA (an SVD of the centred states in torch, no t-SNE); base (left) vs each "
            "task's own lora-diffusion adapter (right). Separation: mean distance between task centroids "
            "over the mean distance of a state to its centroid, in the full hidden space.", "",
            _table(["model", "separation", "states"], rows), "", _figures(s)]
    for task, why in (s.get("errors") or {}).items():
        body.append(f"\n- {task}: failed: {why}")
    base = (models.get("base") or {}).get("separation")
    adapted = (models.get("adapted") or {}).get("separation")
    return "\n".join(body), [claims.trajectories(base, adapted)]


# -- 9 ------------------------------------------------------------------------------------------
def _loss_curves(s: dict[str, Any], meta: dict[str, Any]) -> tuple[str, list[claims.Claim]]:
    rows = []
    for c in s["runs"]:
        if c.get("error"):
            rows.append([c["task"], c["label"], "—", "—", "failed: " + c["error"][:100]])
        else:
            rows.append([c["task"], c["label"], str(c["steps"][-1]), fmt(c["loss"][0], 3), fmt(c["loss"][-1], 3)])
    body = ["Training loss of every run of this report, one figure per task, read from each job's metrics "
            "file (per optimiser step, rank 0; a run reused from another machine has none).", "",
            _table(["task", "run", "steps", "first loss", "last loss"], rows), "", _figures(s)]
    return "\n".join(body), [claims.loss_decreases(s["runs"])]


BUILDERS = {
    "methods": _methods, "efficiency": _efficiency, "forgetting": _forgetting, "ablations": _ablations,
    "effective_rank": _effective_rank, "composition": _composition, "data_efficiency": _data_efficiency,
    "trajectories": _trajectories, "loss_curves": _loss_curves,
}


def build_section(key: str, results: dict[str, Any]) -> Section:
    """Section ``key`` of a report from its results dict (see :mod:`ldp.jobs.report`)."""
    number = list(SECTIONS).index(key) + 1
    title = f"{number}. {SECTIONS[key]}"
    section = (results.get("sections") or {}).get(key)
    why = _empty(section)
    if why is not None:
        return Section(key, title, f"_Empty: {why}_")
    body, found = BUILDERS[key](section, results.get("meta") or {})
    sentences = [f"**Claim: {c.claim}.** {c.sentence}" for c in found]
    return Section(key, title, body + ("\n\n" + "\n\n".join(sentences) if sentences else ""), found)

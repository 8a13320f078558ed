"""How much of a classification task a frozen base already separates: a linear probe.

Before blaming an adapter for a low score, ask what the frozen base gives it. This script encodes
each example the way the adapter recipe sees it at the start of denoising (the task's prompt, then
the answer positions all masked, ``t = 1``) and fits a logistic regression on each of several
readouts of the base's states:

- ``answer``: the state at the first answer position, which is what the head (and a trajectory
  adapter) turns into the first answer token;
- ``mean``: the mean over the prompt's tokens (the classic sentence-embedding probe);
- ``blocks``: that mean taken at the output of every block, concatenated and standardised with
  the training examples' per-feature statistics -- what a lora-diffusion adapter with
  ``context: blocks`` conditions on;
- ``question``: as ``blocks``, but the means are over the example's own tokens only (the span where
  prompts differ from the task's template: the instruction before it and the cue after it are
  left out);
- ``first``: every block's states at the first two tokens of that span (where a question's
  wh-word sits), concatenated;
- ``blocks+first``: both together.

The last three ask whether a readout that looks at the input more closely than the prompt mean
would separate more. All but ``answer`` and ``mean`` are standardised with the training examples'
per-feature statistics.

A probe is trained on the train split and scored on the validation split, so it never sees the
numbers it reports. It is an estimate of what a *linear* readout of the frozen features can reach,
not a bound: an adapter also changes the states the head reads. ``--mlp N`` also fits a readout
with one hidden layer of N tanh units on each (``<readout>_mlp_accuracy``), to tell whether the
features hold more than a linear map can read (a lora-diffusion adapter is nonlinear in its input).

    python benchmarks/probe_base.py --base FOLDER --task sst2 --data-dir ../shared/data
    python benchmarks/probe_base.py --base minilm --task sst2 --data-dir ../shared/data   # no warm start

``--base minilm`` probes the MiniLM encoder the ``tiny`` base is warm-started from, wrapped but
untrained (its step embedding starts at zero, so it computes the encoder's own states).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


READOUTS = ("answer", "mean", "blocks", "question", "first", "blocks+first")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="base folder (ldp pretrain output) or 'minilm'")
    p.add_argument("--task", default="sst2", help="a classification task (default sst2)")
    p.add_argument("--data-dir", required=True, help="the local data mirror")
    p.add_argument("--train-limit", type=int, default=2000)
    p.add_argument("--val-limit", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--mlp", type=int, default=0, metavar="N",
                   help="also fit a one-hidden-layer readout of N tanh units (default 0: none)")
    p.add_argument("--json", dest="json_path", help="also write the result here")
    args = p.parse_args(argv)
    for name in ("train_limit", "val_limit", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.mlp < 0:
        p.error("--mlp must be >= 0")
    return args


def _load(base: str):
    if base == "minilm":
        from ldp.models.loading import minilm_path
        from ldp.models.warmstart import warm_start

        model, tok = warm_start(minilm_path())
    else:
        from ldp.models.loading import load_base

        model, tok = load_base(base)
    return model.eval(), tok


def template_span(prompts: list[list[int]]) -> tuple[int, int]:
    """``(prefix, suffix)``: how many leading and trailing tokens every prompt shares (the task's
    template around the example's own text). Each is capped so that the shortest prompt keeps at
    least one token of its own between them."""
    shortest = min(len(p) for p in prompts)
    prefix = 0
    while prefix < shortest - 1 and len({p[prefix] for p in prompts}) == 1:
        prefix += 1
    suffix = 0
    while prefix + suffix < shortest - 1 and len({p[-1 - suffix] for p in prompts}) == 1:
        suffix += 1
    return prefix, suffix


@torch.no_grad()
def features(
    model, tok, examples, answer_width: int, batch: int, span: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """The readouts of the module docstring, one row per example, not yet standardised;
    ``span``: the template's ``(prefix, suffix)`` token counts (:func:`template_span`)."""
    from ldp.data.collate import encode_example
    from ldp.methods.lora_diffusion.layer import context_encoding
    from ldp.methods.lora_diffusion.model import run_base

    rows: dict[str, list[torch.Tensor]] = {name: [] for name in ("answer", "mean", "blocks", "question", "first")}
    prefix, suffix = span
    inner = list(range(len(model.blocks()) - 1))  # the last block's output is the final state
    for start in range(0, len(examples), batch):
        chunk = [encode_example(ex, tok)["prompt_ids"] for ex in examples[start : start + batch]]
        width = max(len(p) for p in chunk) + answer_width
        x = torch.full((len(chunk), width), model.pad_token_id, dtype=torch.long)
        attn = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, prompt in enumerate(chunk):
            n = len(prompt)
            x[i, :n] = torch.tensor(prompt)
            x[i, n : n + answer_width] = model.mask_token_id
            attn[i, : n + answer_width] = 1
        h, captured = run_base(model, x, torch.ones(len(chunk)), attn, inner)
        lengths = torch.tensor([len(p) for p in chunk])
        prompt = torch.arange(width)[None, :] < lengths[:, None]

        def prompt_means(states: list[torch.Tensor]) -> torch.Tensor:
            # The adapter's own Enc(c), so the probe reads exactly what it conditions on.
            return context_encoding(states, prompt, input_ids=x, mask_token_id=model.mask_token_id,
                                    attention_mask=attn)

        rows["answer"].append(h.float()[torch.arange(len(chunk)), lengths])
        rows["mean"].append(prompt_means([h]))
        states = [captured[i] for i in inner] + [h]
        rows["blocks"].append(prompt_means(states))
        own = prompt & (torch.arange(width)[None, :] >= prefix)
        own &= torch.arange(width)[None, :] < (lengths - suffix)[:, None]
        rows["question"].append(context_encoding(states, own, input_ids=x, mask_token_id=model.mask_token_id,
                                                 attention_mask=attn))
        rows["first"].append(torch.cat([s.float()[:, prefix : prefix + 2].flatten(1) for s in states], dim=1))
    out = {name: torch.cat(parts) for name, parts in rows.items()}
    out["blocks+first"] = torch.cat([out["blocks"], out["first"]], dim=1)
    return out


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """``train`` and ``others`` shifted and scaled by ``train``'s per-feature mean and std."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def _fit_penalised(
    model: torch.nn.Module, weights: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, c: float
) -> None:
    """Fit ``model`` to convergence by L-BFGS on ``mean cross-entropy + sum ||W||^2 / (2 c n)``
    over ``weights`` (scikit-learn's logistic objective with ``C = c``)."""
    opt = torch.optim.LBFGS(model.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        penalty = sum(w.pow(2).sum() for w in weights) / (2 * c * len(x))
        loss = torch.nn.functional.cross_entropy(model(x), y) + penalty
        loss.backward()
        return loss

    opt.step(closure)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, c: float = 1.0) -> torch.nn.Linear:
    """Multinomial logistic regression with an L2 penalty, fitted to convergence by L-BFGS:
    ``mean cross-entropy + ||W||^2 / (2 c n)`` (scikit-learn's objective with ``C = c``)."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], classes)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    _fit_penalised(probe, [probe.weight], x, y, c)
    return probe


def fit_mlp(
    x: torch.Tensor, y: torch.Tensor, classes: int, hidden: int, c: float = 1.0, seed: int = 0
) -> torch.nn.Sequential:
    """A readout with one hidden layer of ``hidden`` tanh units, fitted by L-BFGS to
    ``mean cross-entropy + (||W_1||^2 + ||W_2||^2) / (2 c n)``: the same penalty as
    :func:`fit_logistic`, so the two differ only in the hidden layer."""
    torch.manual_seed(seed)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, classes)
    )
    _fit_penalised(mlp, [mlp[0].weight, mlp[2].weight], x, y, c)
    return mlp


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from ldp.data.collate import encode_example
    from ldp.data.loading import load_examples
    from ldp.data.tasks import get_task
    from ldp.errors import LdpError

    try:
        spec = get_task(args.task)
        if spec.label is None:
            raise LdpError(f"{args.task} is not a classification task: nothing to probe")
        train = load_examples(spec, "train", args.data_dir, args.train_limit)
        val = load_examples(spec, "validation", args.data_dir, args.val_limit)
        model, tok = _load(args.base)
    except (LdpError, ValueError, KeyError) as exc:
        print(f"probe_base: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    width = spec.max_new_tokens
    # The template is what every training prompt shares; a split of one prompt has no template
    # to tell apart, so the span is then the whole prompt.
    train_prompts = [encode_example(ex, tok)["prompt_ids"] for ex in train]
    span = template_span(train_prompts) if len(train_prompts) > 1 else (0, 0)
    train_x = features(model, tok, train, width, args.batch, span)
    val_x = features(model, tok, val, width, args.batch, span)
    for name in READOUTS[2:]:
        train_x[name], val_x[name] = standardise(train_x[name], val_x[name])
    y_train = [ex.label for ex in train]
    y_val = [ex.label for ex in val]
    result = {"base": args.base, "task": args.task, "n_train": len(train), "n_val": len(val),
              "split": "validation", "majority": round(100 * max(map(y_val.count, set(y_val))) / len(y_val), 1)}
    classes = spec.num_labels
    result["template_tokens"] = list(span)
    y_train, y_val = torch.tensor(y_train), torch.tensor(y_val)

    def accuracy(readout: torch.nn.Module, x: torch.Tensor) -> float:
        with torch.no_grad():
            return round(100 * (readout(x).argmax(1) == y_val).float().mean().item(), 1)

    for name in READOUTS:
        probe = fit_logistic(train_x[name], y_train, classes)
        result[f"{name}_accuracy"] = accuracy(probe, val_x[name])
        if args.mlp:
            mlp = fit_mlp(train_x[name], y_train, classes, args.mlp)
            result[f"{name}_mlp_accuracy"] = accuracy(mlp, val_x[name])
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_path:
        with open(args.json_path, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

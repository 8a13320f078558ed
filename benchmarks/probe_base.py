"""How much of a classification task a frozen base already separates: a linear probe.

Before blaming an adapter for a low score, ask what the frozen base gives it. This script encodes
each example the way the adapter recipe sees it at the start of denoising (the task's prompt, then
the answer positions all masked, ``t = 1``) and fits a logistic regression on two readouts of the
base's final states:

- ``answer``: the state at the first answer position, which is what the head (and a trajectory
  adapter) turns into the first answer token;
- ``mean``: the mean over the prompt's tokens (the classic sentence-embedding probe);
- ``blocks``: that mean taken at the output of every block, concatenated and standardised with
  the training examples' per-feature statistics -- what a lora-diffusion adapter with
  ``context: blocks`` conditions on.

A probe is trained on the train split and scored on the validation split, so it never sees the
numbers it reports. It is an estimate of what a *linear* readout of the frozen features can reach,
not a bound: an adapter also changes the states the head reads.

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


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="base folder (ldp pretrain output) or 'minilm'")
    p.add_argument("--task", default="sst2", help="a classification task (default sst2)")
    p.add_argument("--data-dir", required=True, help="the local data mirror")
    p.add_argument("--train-limit", type=int, default=2000)
    p.add_argument("--val-limit", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json", dest="json_path", help="also write the result here")
    args = p.parse_args(argv)
    for name in ("train_limit", "val_limit", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
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


@torch.no_grad()
def features(model, tok, examples, answer_width: int, batch: int) -> dict[str, torch.Tensor]:
    """``{"answer", "mean", "blocks"}`` readouts, one row per example (the module docstring);
    ``blocks`` is not yet standardised."""
    from ldp.data.collate import encode_example
    from ldp.methods.lora_diffusion.layer import context_encoding
    from ldp.methods.lora_diffusion.model import run_base

    rows: dict[str, list[torch.Tensor]] = {"answer": [], "mean": [], "blocks": []}
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
        rows["blocks"].append(prompt_means([captured[i] for i in inner] + [h]))
    return {name: torch.cat(parts) for name, parts in rows.items()}


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """``train`` and ``others`` shifted and scaled by ``train``'s per-feature mean and std."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, c: float = 1.0) -> torch.nn.Linear:
    """Multinomial logistic regression with an L2 penalty, fitted to convergence by L-BFGS:
    ``mean cross-entropy + ||W||^2 / (2 c n)`` (scikit-learn's objective with ``C = c``)."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], classes)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(x), y) + probe.weight.pow(2).sum() / (2 * c * len(x))
        loss.backward()
        return loss

    opt.step(closure)
    return probe


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
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
    train_x = features(model, tok, train, width, args.batch)
    val_x = features(model, tok, val, width, args.batch)
    train_x["blocks"], val_x["blocks"] = standardise(train_x["blocks"], val_x["blocks"])
    y_train = [ex.label for ex in train]
    y_val = [ex.label for ex in val]
    result = {"base": args.base, "task": args.task, "n_train": len(train), "n_val": len(val),
              "split": "validation", "majority": round(100 * max(map(y_val.count, set(y_val))) / len(y_val), 1)}
    classes = spec.num_labels
    for name in ("answer", "mean", "blocks"):
        probe = fit_logistic(train_x[name], torch.tensor(y_train), classes)
        pred = probe(val_x[name]).argmax(1)
        result[f"{name}_accuracy"] = round(100 * (pred == torch.tensor(y_val)).float().mean().item(), 1)
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_path:
        with open(args.json_path, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

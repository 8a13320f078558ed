"""Overfit check: train one method on N sst2 training examples and report how well it fits them.

Prints one JSON line:

- ``tT_acc``: the label token predicted with the whole answer masked (``t = T``), one example
  at a time;
- ``margin``: the mean log-margin of the gold label's token over the other label's;
- ``spread``: how much the final state at the first answer position differs between examples
  (mean distance from the mean, relative to the mean's norm). The frozen tiny base has about
  0.2. A method that fits only the label marginal drives it towards 0: every example gets the
  same answer state. That is how weight LoRA and prefix tuning fail on this base;
- ``elbo_acc_train``: the evaluation scorer (``ldp eval``'s path) on the same examples;
- ``val_acc``, with ``--val K``: validation accuracy on K examples.

Needs ``LDP_REGISTRY`` (holding ``bases/tiny``) and ``LDP_DATA_DIR``.

    LDP_REGISTRY=~/.ldp/registry LDP_DATA_DIR=../shared/data python benchmarks/overfit.py \
        --method weight-lora --steps 150 [--lr 3e-3] [--set method_config.r=16 ...]

Diagnostics: ``--only REGEX`` trains only the method's parameters whose names match (with
``--method full``: one part of the base, e.g. ``'attention\.(self|output\.dense)'``);
``--lr-scale REGEX=K`` trains parameters whose names match at K times the lr, and makes a
matching frozen parameter trainable (``'lm_head\.decoder\.bias=100'``: the output bias at 100x).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

import torch


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="lora-diffusion")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--n", type=int, default=32, help="training examples to fit")
    p.add_argument("--lr", type=float, default=None, help="default: the method's own")
    p.add_argument("--set", nargs="*", default=[], help="recipe overrides, a.b=c")
    p.add_argument("--elbo", type=int, default=4, help="scorer subsets per mask size")
    p.add_argument("--val", type=int, default=0, help="also score K validation examples")
    p.add_argument("--no-train-eval", action="store_true", help="skip the scorer on the N examples")
    p.add_argument("--only", default=None, help="train only the parameters whose names match")
    p.add_argument("--lr-scale", nargs="*", default=[], metavar="REGEX=K",
                   help="parameters whose names match train at K x the lr (frozen ones too)")
    return p.parse_args()


@torch.no_grad()
def first_token_fit(model, tok, rows: list[dict], verbalizers: list[str], width: int) -> dict[str, float]:
    """t = T accuracy, mean log-margin and answer-state spread over ``rows`` (encoded examples)."""
    label_ids = [tok(v, add_special_tokens=False)["input_ids"][0] for v in verbalizers]
    correct, margins, states = 0, [], []
    for ex in rows:
        prompt = ex["prompt_ids"]
        x = torch.tensor([prompt + [model.mask_token_id] * width])
        instruction = torch.tensor([list(map(bool, ex["instruction_mask"])) + [False] * width])
        h = model.hidden_states(x, torch.tensor([1.0]), None, instruction_mask=instruction)[0, len(prompt)]
        logits = model.head(h[None]).float()[0]
        gold = ex["target_ids"][0]
        other = label_ids[1] if gold == label_ids[0] else label_ids[0]
        margins.append(float(logits[gold] - logits[other]))
        correct += int(logits[gold] > logits[other])
        states.append(h.float())
    H = torch.stack(states)
    centre = H.mean(0)
    spread = float((H - centre).norm(dim=1).mean() / centre.norm())
    return {"tT_acc": correct / len(rows), "margin": sum(margins) / len(margins), "spread": spread}


def select_trainable(built, only: str | None, lr_scales: list[str]) -> list[torch.nn.Parameter]:
    """The parameters to train: the method's own (those matching ``only``), plus any parameter of
    the model matching a ``REGEX=K`` of ``lr_scales``, which trains at K x the lr."""
    from ldp.training.optim import set_lr_scale

    named = dict(built.named_trainable)
    if only is not None:
        for name, param in named.items():
            param.requires_grad_(bool(re.search(only, name)))
        named = {n: p for n, p in named.items() if p.requires_grad}
        if not named:
            raise SystemExit(f"--only {only!r} matches none of the method's parameters")
    for item in lr_scales:
        pattern, _, scale = item.rpartition("=")
        matched = {n: p for n, p in built.model.named_parameters() if re.search(pattern, n)}
        try:
            factor = float(scale)
            set_lr_scale(matched.values(), factor)
        except ValueError:
            matched = {}
        if not pattern or not matched:
            raise SystemExit(f"--lr-scale {item!r}: expected REGEX=K (K > 0) matching a parameter name")
        for param in matched.values():
            param.requires_grad_(True)
        named.update(matched)
    return list(named.values())


def main() -> None:
    from ldp import config as cfgmod
    from ldp.data.collate import build_sft_dataset
    from ldp.data.tasks import get_task
    from ldp.evaluation import evaluate_task
    from ldp.training.recipes import adapter as rec
    from ldp.training.trainer import Trainer

    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    a = _parse()
    data_dir = os.environ["LDP_DATA_DIR"]
    overrides = {"loop.max_steps": a.steps, "loop.batch_size": 16, "loop.log_every": 50}
    if a.lr is not None:
        overrides["optim.lr"] = a.lr
    cfg = {"task": "sst2", "method": a.method, "base": "bases/tiny@latest", "train_limit": a.n,
           "val_limit": 16, "data_dir": data_dir}
    cfg = cfgmod.apply_overrides(cfg, {**overrides, **cfgmod.parse_overrides(a.set)})
    built = rec.build(cfg, 0, 1)
    trainable = select_trainable(built, a.only, a.lr_scale)
    t0 = time.time()
    result = Trainer(built.model, built.loss_fn, built.train_loader, loop=built.loop, optim=built.optim,
                     trainable=trainable, progress=False).train()
    train_s = time.time() - t0
    model, tok = built.model.eval(), built.extra["tokenizer"]
    spec = get_task("sst2")
    rows = build_sft_dataset("sst2", "train", tok, data_dir, limit=a.n)
    out = {"method": a.method, "steps": a.steps, "lr": built.extra["cfg"].optim.lr, "set": a.set,
           "only": a.only, "lr_scale": a.lr_scale, "trained": sum(p.numel() for p in trainable),
           "train_s": round(train_s, 1), "final_loss": getattr(result, "train_loss", None),
           **first_token_fit(model, tok, [rows[i] for i in range(len(rows))], list(spec.label.verbalizers),
                             spec.max_new_tokens)}
    if not a.no_train_eval:
        ev = evaluate_task(model, tok, "sst2", split="train", data_dir=data_dir, limit=a.n,
                           elbo_samples=a.elbo, progress=False)
        out["elbo_acc_train"] = ev.metrics["accuracy"]
    if a.val:
        ev = evaluate_task(model, tok, "sst2", split="validation", data_dir=data_dir, limit=a.val,
                           elbo_samples=a.elbo, progress=False)
        out["val_acc"] = ev.metrics["accuracy"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()

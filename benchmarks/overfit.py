"""Overfit check: train one method on N sst2 training examples and report how well it fits them.

Prints one JSON line: ``tT_acc`` (the label token predicted with the whole answer masked, one
example at a time), ``margin`` (mean log-margin of the gold label over the other), and
``elbo_acc_train`` (the evaluation scorer on the same examples); ``--val K`` adds validation
accuracy on K examples. Needs ``LDP_REGISTRY`` (holding ``bases/tiny``) and ``LDP_DATA_DIR``.

    LDP_REGISTRY=~/.ldp/registry LDP_DATA_DIR=../shared/data python benchmarks/overfit.py \
        --method lora-diffusion --steps 150 [--set method_config.calibration_examples=0 ...]
"""
import sys, json, time, os, argparse
import torch
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
from ldp.jobs.recipe import train_locally
from ldp.training.recipes import adapter as rec
from ldp.evaluation import evaluate_task

p = argparse.ArgumentParser()
p.add_argument("--method", default="lora-diffusion")
p.add_argument("--steps", type=int, default=150)
p.add_argument("--n", type=int, default=32)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--set", nargs="*", default=[])
p.add_argument("--elbo", type=int, default=4)
p.add_argument("--val", type=int, default=0)
p.add_argument("--no-train-eval", action="store_true")
a = p.parse_args()
from ldp import config as cfgmod
cfg = {"task": "sst2", "method": a.method, "base": "bases/tiny@latest", "train_limit": a.n,
       "val_limit": 16, "data_dir": os.environ["LDP_DATA_DIR"]}
cfg = cfgmod.apply_overrides(cfg, {"loop.max_steps": a.steps, "loop.batch_size": 16, "optim.lr": a.lr,
                                    "loop.log_every": 50, **cfgmod.parse_overrides(a.set)})
built = rec.build(cfg, 0, 1)
from ldp.training.trainer import Trainer
t0 = time.time()
tr = Trainer(built.model, built.loss_fn, built.train_loader, loop=built.loop, optim=built.optim,
             trainable=list(built.named_trainable.values()), progress=False)
res = tr.train()
train_s = time.time() - t0
model = built.model; tok = built.extra["tokenizer"]
model.eval()
# t=T accuracy: whole answer masked, one example at a time
from ldp.data.collate import build_sft_dataset
ds = build_sft_dataset("sst2", "train", tok, os.environ["LDP_DATA_DIR"], limit=a.n)
verbs = ["negative", "positive"]
vid = [tok(v, add_special_tokens=False)["input_ids"][0] for v in verbs]
correct = 0; margins = [0.0]
with torch.no_grad():
    for i in ([] if a.no_train_eval else range(len(ds))):
        ex = ds[i]
        ids = torch.tensor([ex["prompt_ids"] + ex["target_ids"] + [ex["target_ids"][-1]] * (4 - len(ex["target_ids"]))])
        Lp = len(ex["prompt_ids"])
        x = ids.clone(); x[0, Lp:] = model.mask_token_id
        im = torch.zeros_like(ids, dtype=torch.bool); im[0, :Lp] = torch.tensor(ex["instruction_mask"])
        h = model.hidden_states(x, torch.tensor([1.0]), None, instruction_mask=im) if a.method != "full" or True else None
        lg = model.head(h[0, Lp]).float()
        gold = ex["target_ids"][0]
        other = vid[1] if gold == vid[0] else vid[0]
        margins.append(float(lg[gold] - lg[other]))
        correct += int(lg[gold] > lg[other])
ev = None if a.no_train_eval else evaluate_task(model, tok, "sst2", split="train", data_dir=os.environ["LDP_DATA_DIR"], limit=a.n,
                   elbo_samples=a.elbo, progress=False)
out = {"method": a.method, "steps": a.steps, "lr": a.lr, "set": a.set, "train_s": round(train_s, 1),
       "tT_acc": correct / len(ds), "margin": sum(margins) / len(margins), "elbo_acc_train": ev and ev.metrics["accuracy"],
       "final_loss": getattr(res, "train_loss", None)}
if a.val:
    ev2 = evaluate_task(model, tok, "sst2", split="validation", data_dir=os.environ["LDP_DATA_DIR"], limit=a.val,
                        elbo_samples=a.elbo, progress=False)
    out["val_acc"] = ev2.metrics["accuracy"]
print(json.dumps(out))

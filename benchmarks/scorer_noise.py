"""Scorer noise: one adapter scored on sst2 with seeds 0-2 at several subsets-per-size settings.

    LDP_REGISTRY=... LDP_DATA_DIR=../shared/data python benchmarks/scorer_noise.py \
        adapters/sst2/lora-diffusion@latest validation 80
"""
import sys, json, os, time
from ldp.bases import load_adapted
from ldp.evaluation import evaluate_task
ref = sys.argv[1]; split = sys.argv[2]; limit = int(sys.argv[3])
model, tok, info = load_adapted(ref, os.environ["LDP_REGISTRY"], None)
out = {}
for per in (1, 4):
    accs = []
    t0 = time.time()
    for seed in (0, 1, 2):
        ev = evaluate_task(model, tok, "sst2", split=split, data_dir=os.environ["LDP_DATA_DIR"], limit=limit,
                           elbo_samples=per, seed=seed, progress=False)
        accs.append(ev.metrics["accuracy"])
    out[per] = {"acc": accs, "sec_per_eval": round((time.time() - t0) / 3, 1)}
    print(per, out[per], flush=True)
print(json.dumps(out))

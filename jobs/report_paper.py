"""The numbers the LoRA-Diffusion paper reports (1.3B bases, 4 GPUs), put beside ours in a report.

Keys follow this project's names (task keys, method names). Only what a report section shows is
kept; each value is the paper's, copied once, so a report never reads anything outside the project.
"""

from __future__ import annotations

METHOD_LABELS = {
    "full": "full fine-tuning", "adapters": "Houlsby adapters", "weight-lora": "weight LoRA",
    "prefix": "prefix tuning", "lora-diffusion": "LoRA-Diffusion", "bitfit": "BitFit",
}

# Table 7: average over 15 tasks.
TABLE7 = {
    "full": {"trainable_pct": 100.0, "average": 82.3, "pct_of_full": 100.0, "time": 1.0},
    "adapters": {"trainable_pct": 2.1, "average": 79.1, "pct_of_full": 96.1, "time": 0.8},
    "weight-lora": {"trainable_pct": 0.9, "average": 77.4, "pct_of_full": 94.1, "time": 0.6},
    "prefix": {"trainable_pct": 1.0, "average": 75.8, "pct_of_full": 92.1, "time": 0.7},
    "lora-diffusion": {"trainable_pct": 0.7, "average": 80.7, "pct_of_full": 98.1, "time": 0.5},
    "bitfit": {"trainable_pct": 0.1, "average": 71.2, "pct_of_full": 86.5, "time": 0.5},
}

# Table 8: per task, primary metric.
TABLE8 = {
    "sst2": {"full": 94.5, "weight-lora": 92.1, "adapters": 93.4, "prefix": 91.8, "bitfit": 89.2, "lora-diffusion": 94.2},
    "agnews": {"full": 91.8, "weight-lora": 89.4, "adapters": 90.7, "prefix": 88.3, "bitfit": 85.1, "lora-diffusion": 91.3},
    "trec": {"full": 96.2, "weight-lora": 93.7, "adapters": 95.1, "prefix": 92.5, "bitfit": 88.9, "lora-diffusion": 95.8},
    "squad": {"full": 88.7, "weight-lora": 84.3, "adapters": 86.9, "prefix": 83.1, "bitfit": 77.4, "lora-diffusion": 87.9},
    "triviaqa": {"full": 75.4, "weight-lora": 71.2, "adapters": 73.6, "prefix": 69.8, "bitfit": 64.3, "lora-diffusion": 74.8},
    "nq": {"full": 79.3, "weight-lora": 75.1, "adapters": 77.5, "prefix": 73.9, "bitfit": 68.7, "lora-diffusion": 78.6},
    "gsm8k": {"full": 56.3, "weight-lora": 49.7, "adapters": 53.1, "prefix": 47.2, "bitfit": 41.8, "lora-diffusion": 55.4},
    "strategyqa": {"full": 68.9, "weight-lora": 64.3, "adapters": 67.1, "prefix": 62.5, "bitfit": 57.2, "lora-diffusion": 68.2},
    "cnndm": {"full": 41.2, "weight-lora": 38.7, "adapters": 40.3, "prefix": 37.1, "bitfit": 33.9, "lora-diffusion": 40.9},
    "xsum": {"full": 37.8, "weight-lora": 35.2, "adapters": 36.9, "prefix": 34.3, "bitfit": 30.7, "lora-diffusion": 37.4},
    "wmt14_en_de": {"full": 32.4, "weight-lora": 30.1, "adapters": 31.6, "prefix": 29.3, "bitfit": 26.8, "lora-diffusion": 32.0},
    "wmt14_en_fr": {"full": 40.7, "weight-lora": 38.2, "adapters": 39.8, "prefix": 37.4, "bitfit": 34.1, "lora-diffusion": 40.3},
    "commongen": {"full": 28.5, "weight-lora": 26.1, "adapters": 27.7, "prefix": 25.3, "bitfit": 22.9, "lora-diffusion": 28.2},
    "wikibio": {"full": 42.1, "weight-lora": 39.4, "adapters": 41.2, "prefix": 38.1, "bitfit": 34.7, "lora-diffusion": 41.7},
}

# Table 9: efficiency at 1.3B, batch 64 (seconds per step, storage MB, inference ms).
TABLE9 = {
    "full": {"params": "1.3B", "step_s": 1.82, "storage_mb": 5200, "gen_ms": 45, "memory_gb": 42.7},
    "adapters": {"params": "27M", "step_s": 1.54, "storage_mb": 108, "gen_ms": 48, "memory_gb": 38.1},
    "weight-lora": {"params": "12M", "step_s": 1.09, "storage_mb": 48, "gen_ms": 46, "memory_gb": 35.2},
    "prefix": {"params": "13M", "step_s": 1.23, "storage_mb": 52, "gen_ms": 47, "memory_gb": 36.4},
    "lora-diffusion": {"params": "9M", "step_s": 0.91, "storage_mb": 36, "gen_ms": 46, "memory_gb": 34.8},
    "bitfit": {"params": "1.3M", "step_s": 0.88, "storage_mb": 5.2, "gen_ms": 45, "memory_gb": 33.9},
}
TABLE9_RATIOS = {
    "step_vs_weight_lora": round(0.91 / 1.09, 4),
    "bytes_vs_weight_lora": round(36 / 48, 4),
    "peak_vs_weight_lora": round(34.8 / 35.2, 4),
}

# Table 10: ELBO perplexity after task training, and the relative change (%).
TABLE10 = {
    "base": {"wikitext": 18.2, "arxiv": 24.7, "code": 31.4},
    "full": {"wikitext": 30.8, "arxiv": 30.0, "code": 32.8},
    "weight-lora": {"wikitext": 8.2, "arxiv": 8.9, "code": 8.9},
    "adapters": {"wikitext": 10.4, "arxiv": 11.3, "code": 11.8},
    "lora-diffusion": {"wikitext": 3.8, "arxiv": 3.6, "code": 4.5},
}
"""``base``: perplexities; the methods: relative change in %."""

# Table 11: zero-shot composition, average over composite tasks.
TABLE11 = {"weight-lora": 66.9, "adapters": 69.7, "lora-diffusion": 74.1}

# Table 12: rank ablation (average score, trainable parameters, time relative to full FT).
TABLE12 = {
    "uniform r=8": {"score": 74.3, "params": "3.2M", "time": 0.82},
    "uniform r=16": {"score": 77.9, "params": "6.4M", "time": 0.87},
    "uniform r=32": {"score": 79.8, "params": "12.8M", "time": 0.93},
    "uniform r=64": {"score": 80.9, "params": "25.6M", "time": 1.05},
    "step-adaptive": {"score": 80.7, "params": "9.1M", "time": 0.91},
}

# Table 13: modules per phase (average score, trainable %).
TABLE13 = {1: {"score": 79.1, "pct": 0.35}, 2: {"score": 80.7, "pct": 0.70}, 4: {"score": 80.9, "pct": 1.40},
           8: {"score": 81.0, "pct": 2.80}}

# Section 6.2: effective rank of the learned modules by phase (ranges).
EFFECTIVE_RANK = {"early": (45, 55), "middle": (20, 28), "late": (6, 10)}

"""One line per trial event in a sweep's job log (Tune's own status tables are switched off)."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

__all__ = ["SweepProgress"]


def _values(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


class SweepProgress(Callback):
    def __init__(self, total: int) -> None:
        self.total = total

    def on_trial_start(self, iteration, trials, trial, **info):
        print(f"[ldp] trial {trial.trial_id} started: {_values(trial.config)}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        from ldp.jobs.sweep_trial import DONE_KEY

        last = trial.last_result or {}
        state = "finished" if last.get(DONE_KEY) else "stopped early"
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial) + 1
        print(f"[ldp] trial {trial.trial_id} {state} at step {last.get('step')} "
              f"({done}/{max(self.total, len(trials))} done)", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"[ldp] trial {trial.trial_id} failed (its log: {trial.local_path})", flush=True)

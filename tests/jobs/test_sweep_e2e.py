"""``ldp sweep`` end to end on a real local Ray: Tune trials that each run the adapter recipe through
Ray Train + DeepSpeed, ASHA stopping weak trials, the best adapter and the sweep record published,
and a sweep whose driver is killed resuming without rerunning the trials it had finished."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ldp.cli.main import main

from .conftest import subprocess_env


def _grid(path: Path, base: str, name: str, lrs, lambdas, scheduler) -> Path:
    data = {
        "name": name,
        "task": "sst2",
        "base": base,
        "steps": 6,
        "train": {"loop": {"batch_size": 8}, "train_limit": 96, "val_limit": 16,
                  "eval": {"limit": 16, "elbo_samples": 1}},
        "search": {"optim.lr": {"grid": lrs}, "method_config.lambda_rank": {"grid": lambdas}},
        "scheduler": scheduler,
        "report_every": 2,
    }
    path.write_text("# ldp sweep grid.yaml\n" + yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slow
def test_sweep_with_asha_publishes_the_best_trial(small_base, data_dir, tmp_path, capsys, in_jobs_env):
    # The validation loss includes the lambda_rank regulariser, so at the first rung (step 2) the
    # lambda_rank=0.01 trials trail the others' and ASHA stops at least one of them there.
    grid = _grid(tmp_path / "grid.yaml", str(small_base.folder), "lr-lambda",
                 [3e-3, 1e-9], [0.0, 0.01],
                 {"type": "asha", "grace_period": 2, "reduction_factor": 2})
    registry = (tmp_path / "registry").as_uri()
    code = main(["sweep", str(grid), "--data-dir", str(data_dir), "--registry", registry, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    job_id = out.out.splitlines()[0]
    assert job_id.startswith("ldp-sweep-lr-lambda-")
    result = _last_json(out.out)
    trials = result["trials"]
    assert len(trials) == 4
    finished = [t for t in trials if t["status"] == "finished"]
    stopped = [t for t in trials if t["status"] == "stopped early"]
    assert stopped, trials  # ASHA stopped at least one weak trial
    assert all(t["steps"] < 6 for t in stopped) and all(t["steps"] == 6 for t in finished)
    best = max(finished, key=lambda t: t["metric"])
    assert result["metrics"]["accuracy"] == best["metric"]
    assert result["best_params"] == best["params"]

    from ldp.store import Registry

    reg = Registry(registry)
    adapter_ref = result["best"]
    assert adapter_ref == "adapters/sst2/lora-diffusion@1"
    meta = reg.show(adapter_ref)["manifest"]["metadata"]
    assert meta["sweep"] == "lr-lambda" and meta["params"] == best["params"]
    assert meta["accuracy"] == best["metric"]

    assert result["ref"] == "sweeps/lr-lambda@1"
    folder = reg.pull(result["ref"])
    names = {p.name for p in folder.iterdir()}
    assert {"results.csv", "results.json", "grid.yaml", "best.json", "plot.png", "metrics.json"} <= names
    assert json.loads((folder / "best.json").read_text())["adapter"] == adapter_ref
    rows = (folder / "results.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("trial,optim.lr,method_config.lambda_rank,accuracy")
    assert (folder / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / "grid.yaml").read_text() == grid.read_text()
    weights = reg.pull(adapter_ref)
    assert (weights / "adapter_model.safetensors").is_file()

    assert main(["status", job_id, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["kind"] == "sweep" and status["state"] == "SUCCEEDED"
    assert status["result"]["best"] == adapter_ref
    assert main(["jobs"]) == 0
    assert job_id in capsys.readouterr().out


def _last_json(text: str) -> dict:
    """The JSON document ``--json`` prints last (Ray's forwarded worker lines come before it)."""
    return json.loads(text[text.rindex("\n{\n") + 1:])


def _wait_for(path: Path, pattern: str, count: int, proc, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.findall(pattern, path.read_text(errors="replace")) if path.exists() else []
        if len(found) >= count:
            return found
        if proc.poll() is not None:
            break
        time.sleep(1)
    pytest.fail(f"{count} x {pattern!r} not seen in {path}:\n{path.read_text()[-3000:]}")


@pytest.mark.slow
def test_killed_sweep_resumes_running_only_the_rest(small_base, data_dir, tmp_path, capsys,
                                                    in_jobs_env):
    import psutil

    grid = _grid(tmp_path / "grid.yaml", str(small_base.folder), "resume-me",
                 [3e-3, 1e-3, 3e-4], [0.0], "none")
    registry = (tmp_path / "registry").as_uri()
    log = tmp_path / "driver.log"
    args = [sys.executable, "-m", "ldp", "sweep", str(grid), "--data-dir", str(data_dir),
            "--registry", registry]
    with open(log, "wb") as fh:
        driver = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                  env=subprocess_env({"PYTHONUNBUFFERED": "1", "RAY_COLOR_PREFIX": "0"}))
    try:
        done = _wait_for(log, r"trial (\w+) finished at step", 2, driver, timeout=420)
        time.sleep(4)  # Tune saves its experiment state every 2 s in a sweep
        family = [driver, *psutil.Process(driver.pid).children(recursive=True)]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the embedded Ray it started
    driver.wait(timeout=30)
    for proc in family[1:]:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    first_job = log.read_text().splitlines()[0]

    code = main(["sweep", str(grid), "--data-dir", str(data_dir), "--registry", registry,
                 "--resume", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    job_id = out.out.splitlines()[0]
    from ldp.jobs import records

    resumed_log = records.log_path(job_id).read_text()
    started_again = set(re.findall(r"trial (\w+) started", resumed_log))
    assert f"resuming sweep resume-me (experiment {first_job}" in resumed_log
    assert started_again and not started_again & set(done), (done, started_again)
    result = _last_json(out.out)
    assert len(result["trials"]) == 3
    assert all(t["status"] == "finished" for t in result["trials"])
    # The finished trials' training ran once: one start in their Train runs' metrics.
    from ldp.jobs.runner import default_storage_path, read_metrics

    for trial in done:
        history = read_metrics(str(default_storage_path()), f"{first_job}-{trial}")
        assert sum(r.get("event") == "start" for r in history) == 1
    assert main(["sweep", str(grid), "--data-dir", str(data_dir), "--resume"]) == 2
    assert "no unfinished run of sweep 'resume-me'" in capsys.readouterr().err

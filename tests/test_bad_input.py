"""Bad input, as a new user types it, across the commands: every case must end with the expected
exit code, exactly one ``ldp: error:`` line, no traceback, before any expensive work, and leave the
registry exactly as it was.

Expensive entry points (Ray, pretraining, evaluation, loading a base, the benchmark, a local head,
a detached job) are replaced by a tripwire that raises :class:`ExpensiveWork` (a BaseException, so
the CLI's last-resort handler cannot swallow it): a case that gets that far fails the test.
Most cases run in-process through ``ldp.cli.main.main``; a few through a real ``ldp`` subprocess.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ldp.cli.main import main


class ExpensiveWork(BaseException):
    pass


def _tripwire(*_a, **_k):
    raise ExpensiveWork("expensive work started")


@pytest.fixture
def env(tmp_path, monkeypatch, data_dir):
    """A registry holding one adapter version, files for the config cases, tripwires."""
    import ray

    import ldp.bench
    import ldp.cluster.local
    import ldp.evaluation
    import ldp.jobs.launch
    import ldp.models.loading
    import ldp.training.recipes.pretrain
    from ldp.store import Registry

    reg = tmp_path / "registry"
    monkeypatch.setenv("LDP_REGISTRY", str(reg))
    monkeypatch.setenv("LDP_DATA_DIR", str(data_dir))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("LDP_DEBUG", raising=False)
    src = tmp_path / "adapter"
    src.mkdir()
    (src / "adapter_config.json").write_text('{"peft_type": "LORA_DIFFUSION"}')
    from safetensors.torch import save_file
    import torch

    save_file({"w": torch.zeros(2)}, str(src / "adapter_model.safetensors"))
    Registry(str(reg)).publish("adapters/sst2/lora-diffusion", src)
    for target, name in [
        (ray, "init"),
        (ldp.training.recipes.pretrain, "run_pretrain"),
        (ldp.evaluation, "evaluate_task"),
        (ldp.models.loading, "load_base"),
        (ldp.bench, "run_bench"),
        (ldp.cluster.local, "start_head"),
        (ldp.jobs.launch, "run_job"),
        (ldp.jobs.launch, "_spawn_detached"),
    ]:
        monkeypatch.setattr(target, name, _tripwire)
    files = tmp_path / "files"
    files.mkdir()
    (files / "nonutf8.yaml").write_bytes(b"task: sst2\nsize: \xff\xfe\n")
    (files / "intkey.yaml").write_text("task: sst2\n1: one\n")
    (files / "nested_intkey.yaml").write_text("task: sst2\ntrain:\n  loop:\n    3: x\n")
    (files / "list.yaml").write_text("- task\n- sst2\n")
    (files / "broken.yaml").write_text("task: [sst2\n")
    (files / "unknown.yaml").write_text("task: sst2\ntaks: sst2\n")
    (files / "nan.yaml").write_text("task: sst2\ntrain:\n  optim:\n    lr: .nan\n")
    (files / "evil").mkdir()
    (files / "evil" / "adapter_config.json").write_text("{}")
    (files / "evil" / "model.pkl").write_bytes(b"\x80\x04")
    (files / "notk8s.yaml").write_text("- a\n- b\n")
    (files / "wrongkind.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
    (files / "nonempty").mkdir()
    (files / "nonempty" / "x").write_text("x")
    (files / "empty_data").mkdir()
    (files / "a_file").write_text("x")
    monkeypatch.chdir(tmp_path)
    return {"reg": reg, "files": files, "tmp": tmp_path}


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


F = "{files}"
S = ["submit", "--task", "sst2"]
CASES: list[tuple[str, list[str], int]] = [
    # -- the command line itself
    ("unknown command", ["frobnicate"], 2),
    ("unknown option", ["submit", "--taks", "sst2"], 2),
    ("option without value", ["submit", "--task"], 2),
    ("int option given text", ["submit", "--task", "sst2", "--steps", "ten"], 2),
    ("int option given float", ["submit", "--task", "sst2", "--steps", "1e23"], 2),
    # -- submit: the spec
    ("unknown task", ["submit", "--task", "nope"], 2),
    ("unknown method", S + ["--method", "lora"], 2),
    ("unknown strategy", S + ["--strategy", "zero9"], 2),
    ("unknown size", S + ["--size", "13b"], 2),
    ("no 7b base", S + ["--size", "7b"], 2),
    ("workers 0", S + ["--workers", "0"], 2),
    ("workers negative", S + ["--workers", "-1"], 2),
    ("workers beyond CPUs", S + ["--workers", "64"], 2),
    ("steps 0", S + ["--steps", "0"], 2),
    ("steps negative", S + ["--steps", "-5"], 2),
    ("steps 1e23 via set", S + ["--set", "steps=1e23"], 2),
    ("max_steps 0", S + ["--set", "loop.max_steps=0"], 2),
    ("lr nan", S + ["--set", "optim.lr=.nan"], 2),
    ("lr inf", S + ["--set", "optim.lr=.inf"], 2),
    ("lr negative", S + ["--set", "optim.lr=-1"], 2),
    ("lr text", S + ["--set", "optim.lr=fast"], 2),
    ("spec eval batch 0", S + ["--set", "eval.batch_size=0"], 2),
    ("eval steps negative", S + ["--set", "eval.steps=-3"], 2),
    ("spec eval samples 0", S + ["--set", "eval.elbo_samples=0"], 2),
    ("spec eval split", S + ["--set", "eval.split=dev"], 2),
    ("spec eval limit 0", S + ["--set", "eval.limit=0"], 2),
    ("deepspeed section as number", S + ["--set", "deepspeed.zero_optimization=7"], 2),
    ("deepspeed stage 7", S + ["--set", "deepspeed.zero_optimization.stage=7"], 2),
    ("unknown recipe key", S + ["--set", "nokey=1"], 2),
    ("set without =", S + ["--set", "novalue"], 2),
    ("set without key", S + ["--set", "=3"], 2),
    ("set a section to a value", S + ["--set", "loop=3"], 2),
    ("checkpoint_every 0", S + ["--set", "checkpoint_every=0"], 2),
    ("max_failures negative", S + ["--set", "max_failures=-1"], 2),
    ("use_gpu without GPUs", S + ["--set", "use_gpu=true"], 2),
    ("use_gpu text", S + ["--set", "use_gpu=maybe"], 2),
    ("method ranks wrong", S + ["--set", "method_config.ranks=[1,2]"], 2),
    ("method unknown key", S + ["--set", "method_config.nope=1"], 2),
    ("batch size 0", S + ["--set", "loop.batch_size=0"], 2),
    ("storage not writable", S + ["--set", "storage_path=" + F + "/a_file/runs"], 2),
    ("storage bad scheme", S + ["--set", "storage_path=ftp://x/runs"], 2),
    ("config missing", S + ["--config", "missing.yaml"], 2),
    ("config not UTF-8", S + ["--config", F + "/nonutf8.yaml"], 2),
    ("config int key", S + ["--config", F + "/intkey.yaml"], 2),
    ("config nested int key", S + ["--config", F + "/nested_intkey.yaml"], 2),
    ("config a list", S + ["--config", F + "/list.yaml"], 2),
    ("config broken YAML", S + ["--config", F + "/broken.yaml"], 2),
    ("config unknown key", S + ["--config", F + "/unknown.yaml"], 2),
    ("config nan", S + ["--config", F + "/nan.yaml"], 2),
    ("config is a folder", S + ["--config", F], 2),
    ("address port too big", S + ["--address", "127.0.0.1:99999"], 2),
    ("address bad scheme", S + ["--address", "ftp://x:1"], 2),
    ("address no port", S + ["--address", "nonsense"], 2),
    ("submit registry bad scheme", S + ["--registry", "ftp://x/reg"], 2),
    ("registry not writable", S + ["--registry", F + "/a_file/registry"], 2),
    ("data dir missing", S + ["--data-dir", "/nonexistent/data"], 2),
    ("data dir bad scheme", S + ["--data-dir", "ftp://x/data"], 2),
    ("data dir without the task", S + ["--data-dir", F + "/empty_data"], 2),
    ("base folder missing", S + ["--base", "/nonexistent/base"], 2),
    ("base ref bad version", S + ["--base", "bases/tiny@x!"], 2),
    ("base ref missing", S + ["--base", "bases/tiny@7"], 2),
    ("gpus 0", S + ["--gpus", "0"], 2),
    ("gpu mem without gpus", S + ["--gpu-mem", "80"], 2),
    ("gpu mem nan", S + ["--gpus", "1", "--gpu-mem", "nan"], 2),
    ("gpus auto without gpu mem", S + ["--gpus", "1"], 2),
    ("gpus and workers disagree", S + ["--gpus", "2", "--workers", "3", "--strategy", "ddp"], 2),
    ("emit unknown kind", S + ["--emit", "deployment"], 2),
    ("emit with local registry", S + ["--size", "7b", "--base", "bases/7b@1", "--gpus", "1",
                                      "--strategy", "ddp", "--emit", "rayjob"], 2),
    ("emit and dry-run", S + ["--emit", "rayjob", "--dry-run"], 2),
    ("json with no-wait", S + ["--json", "--no-wait"], 2),
    ("resume unknown job", ["submit", "--resume", "ldp-nope-20200101-000000-0000"], 1),
    ("resume invalid id", ["submit", "--resume", "bad id!"], 2),
    ("spec-json not JSON", ["submit", "--spec-json", "{task:"], 2),
    ("spec-json a list", ["submit", "--spec-json", "[1]"], 2),
    # -- pretrain
    ("pretrain unknown size", ["pretrain", "--size", "13b"], 2),
    ("pretrain steps 0", ["pretrain", "--steps", "0"], 2),
    ("pretrain name not a name", ["pretrain", "--name", "UPPER CASE!"], 2),
    ("pretrain registry scheme", ["pretrain", "--registry", "ftp://x/reg"], 2),
    ("pretrain json folder missing", ["pretrain", "--json", "/missing/x.json"], 2),
    ("pretrain json is a folder", ["pretrain", "--json", F], 2),
    ("pretrain train_limit below a batch", ["pretrain", "--set", "train_limit=4"], 2),
    ("pretrain no-publish without out", ["pretrain", "--no-publish"], 2),
    ("pretrain out is a file", ["pretrain", "--out", F + "/a_file"], 2),
    ("pretrain config not UTF-8", ["pretrain", "--config", F + "/nonutf8.yaml"], 2),
    ("pretrain config int key", ["pretrain", "--config", F + "/intkey.yaml"], 2),
    ("pretrain batch 0", ["pretrain", "--set", "loop.batch_size=0"], 2),
    ("pretrain lr nan", ["pretrain", "--set", "optim.lr=.nan"], 2),
    ("pretrain data dir scheme", ["pretrain", "--data-dir", "ftp://x"], 2),
    ("pretrain unknown key", ["pretrain", "--set", "nope=1"], 2),
    # -- eval
    ("eval unknown task", ["eval", "--task", "nope", "--adapter", "adapters/sst2/lora-diffusion@1"], 2),
    ("eval nothing to evaluate", ["eval", "--task", "sst2"], 2),
    ("eval no task", ["eval", "--adapter", "adapters/sst2/lora-diffusion@1"], 2),
    ("eval batch 0", ["eval", "--task", "sst2", "--adapter", "adapters/sst2/lora-diffusion@1", "--batch-size", "0"], 2),
    ("eval batch negative", ["eval", "--task", "sst2", "--adapter", "adapters/sst2/lora-diffusion@1", "--batch-size", "-1"], 2),
    ("eval json folder missing", ["eval", "--task", "sst2", "--adapter", "adapters/sst2/lora-diffusion@1", "--json", "/missing/out.json"], 2),
    ("eval split", ["eval", "--task", "sst2", "--adapter", "adapters/sst2/lora-diffusion@1", "--split", "dev"], 2),
    ("eval limit 0", ["eval", "--task", "sst2", "--adapter", "adapters/sst2/lora-diffusion@1", "--limit", "0"], 2),
    ("eval steps 0", ["eval", "--task", "sst2", "--adapter", "adapters/sst2/lora-diffusion@1", "--steps", "0"], 2),
    ("eval mode", ["eval", "--task", "sst2", "--adapter", "adapters/sst2/lora-diffusion@1", "--mode", "magic"], 2),
    ("eval samples 0", ["eval", "--task", "sst2", "--adapter", "adapters/sst2/lora-diffusion@1", "--elbo-samples", "0"], 2),
    ("eval data dir scheme", ["eval", "--task", "sst2", "--adapter", "adapters/sst2/lora-diffusion@1", "--data-dir", "ftp://x"], 2),
    ("eval bundle and mix", ["eval", "--task", "sst2", "--bundle", "bundles/x@1", "--mix", "a=adapters/sst2/lora-diffusion@1"], 2),
    ("eval mix malformed", ["eval", "--task", "sst2", "--mix", "nonsense"], 2),
    ("eval adapter folder missing", ["eval", "--task", "sst2", "--adapter", "/nonexistent/adapter"], 2),
    ("eval base folder missing", ["eval", "--task", "sst2", "--base", "/nonexistent/base"], 2),
    ("eval adapter on a missing base folder", ["eval", "--task", "sst2", "--adapter", "adapters/sst2/lora-diffusion@1", "--base", "/nonexistent/base"], 2),
    ("serve base folder missing", ["serve", "--base", "/nonexistent/base"], 2),
    ("generate base folder missing", ["generate", "--prompt", "hi", "--base", "/nonexistent/base"], 2),
    # -- tasks, sizes, bench
    ("tasks data dir scheme", ["tasks", "--data-dir", "ftp://x"], 2),
    ("tasks data dir missing", ["tasks", "--data-dir", "/nonexistent/mirror"], 2),
    ("sizes gpus 0", ["sizes", "--gpus", "0"], 2),
    ("sizes gpu mem 0", ["sizes", "--gpus", "8", "--gpu-mem", "0"], 2),
    ("sizes gpu mem nan", ["sizes", "--gpus", "8", "--gpu-mem", "nan"], 2),
    ("bench size", ["bench", "--size", "13b"], 2),
    ("bench batch 0", ["bench", "--batch", "0"], 2),
    ("bench seq tiny", ["bench", "--seq", "4"], 2),
    ("bench method", ["bench", "--methods", "nope"], 2),
    ("bench dtype", ["bench", "--base-dtype", "fp8"], 2),
    ("bench json folder missing", ["bench", "--json", "/missing/b.json"], 2),
    # -- report
    ("report config missing", ["report", "--config", F + "/missing.yaml"], 2),
    ("report config unknown key", ["report", "--config", F + "/unknown.yaml"], 2),
    ("report unknown section", ["report", "--sections", "1,12"], 2),
    ("report unknown section key", ["report", "--sections", "forgeting"], 2),
    ("report unknown task", ["report", "--set", "tasks=[sst2,nope]"], 2),
    ("report unknown method", ["report", "--set", "methods=[lora]"], 2),
    ("report unknown ablation task", ["report", "--set", "ablations.tasks=[nope]"], 2),
    ("report fraction 0", ["report", "--set", "data_efficiency.fractions=[0,1]"], 2),
    ("report fraction above 1", ["report", "--set", "data_efficiency.fractions=[0.5,1.5]"], 2),
    ("report unknown corpus", ["report", "--set", "forgetting.corpora=[books]"], 2),
    ("report bad recipe override", ["report", "--set", "loop.batch_size=0"], 2),
    ("report out is a file", ["report", "--out", F + "/a_file"], 2),
    # -- registry
    ("registry ls bad prefix", ["registry", "ls", "models/x"], 2),
    ("registry bad scheme", ["registry", "ls", "--registry", "ftp://x"], 2),
    ("registry show bad ref", ["registry", "show", "nope"], 2),
    ("registry show missing version", ["registry", "show", "adapters/sst2/lora-diffusion@99"], 1),
    ("registry pull missing version", ["registry", "pull", "adapters/sst2/lora-diffusion@99"], 1),
    ("registry pull into non-empty folder", ["registry", "pull", "adapters/sst2/lora-diffusion@1", "--to", F + "/nonempty"], 2),
    ("registry rm without version", ["registry", "rm", "adapters/sst2/lora-diffusion"], 2),
    ("registry rm missing version", ["registry", "rm", "adapters/sst2/lora-diffusion@99"], 1),
    ("registry verify missing version", ["registry", "verify", "adapters/sst2/lora-diffusion@99"], 1),
    ("registry gc negative grace", ["registry", "gc", "--grace", "-1"], 2),
    ("registry publish pickle", ["registry", "publish", "adapters/sst2/lora-diffusion", F + "/evil"], 2),
    ("registry publish missing folder", ["registry", "publish", "adapters/sst2/lora-diffusion", "/nonexistent/x"], 2),
    ("registry publish bad kind", ["registry", "publish", "models/x", F + "/evil", "--force"], 2),
    ("registry alias bad name", ["registry", "alias", "adapters/sst2/lora-diffusion@1", "Bad Alias!"], 2),
    # -- jobs, status, logs, cluster, infra
    ("status unknown job", ["status", "ldp-nope-20200101-000000-0000"], 1),
    ("status invalid id", ["status", "bad id!"], 2),
    ("logs unknown job", ["logs", "ldp-nope-20200101-000000-0000"], 1),
    ("status bad address", ["status", "x", "--address", "ftp://x"], 2),
    ("jobs GCS address", ["jobs", "--address", "127.0.0.1:6380"], 2),
    ("cluster up port", ["cluster", "up", "--port", "99999"], 2),
    ("cluster up dashboard port", ["cluster", "up", "--dashboard-port", "0"], 2),
    ("cluster up cpus", ["cluster", "up", "--num-cpus", "0"], 2),
    ("infra check missing file", ["infra", "check", "missing.yaml"], 2),
    ("infra check not UTF-8", ["infra", "check", F + "/nonutf8.yaml"], 2),
    ("infra check broken YAML", ["infra", "check", F + "/broken.yaml"], 2),
    ("infra check no schemas folder", ["infra", "check", "--schemas", "/nonexistent", F + "/notk8s.yaml"], 2),
    ("infra check a list", ["infra", "check", F + "/notk8s.yaml"], 1),
    ("infra check wrong kind", ["infra", "check", F + "/wrongkind.yaml"], 1),
    ("infra check no file", ["infra", "check"], 2),
]


@pytest.mark.parametrize("argv, code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_cleanly(argv, code, env, capsys):
    argv = [a.replace(F, str(env["files"])) for a in argv]
    before = _snapshot(env["reg"])
    got = main(argv)
    out, err = capsys.readouterr()
    assert got == code, (got, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ldp: error: "), err
    assert "Traceback" not in err + out
    assert _snapshot(env["reg"]) == before


def test_table_is_large_enough():
    assert len(CASES) >= 100
    assert len({c[0] for c in CASES}) == len(CASES)


def test_last_resort_handler_prints_one_line_and_debug_shows_the_traceback(env, capsys, monkeypatch):
    import ldp.cli.tasks

    monkeypatch.setattr(ldp.cli.tasks, "task_rows", lambda *_: 1 / 0)
    assert main(["tasks"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "ldp: error: ZeroDivisionError: division by zero (run with --debug for the traceback)"
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "tasks"])


@pytest.mark.parametrize(
    "argv, code",
    [
        (["submit", "--task", "sst2", "--config", "{files}/nonutf8.yaml"], 2),
        (["submit", "--task", "sst2", "--set", "optim.lr=.nan"], 2),
        (["registry", "show", "adapters/sst2/lora-diffusion@99"], 1),
        (["infra", "check", "{files}/wrongkind.yaml"], 1),
    ],
    ids=["config not UTF-8", "lr nan", "missing version", "wrong kind"],
)
def test_bad_input_in_a_real_process(argv, code, env):
    argv = [a.replace("{files}", str(env["files"])) for a in argv]
    before = _snapshot(env["reg"])
    proc = subprocess.run(
        [sys.executable, "-m", "ldp", *argv], capture_output=True, text=True, timeout=240,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ldp: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert _snapshot(env["reg"]) == before

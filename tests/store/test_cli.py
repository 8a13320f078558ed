"""``ldp registry ...`` through ``ldp.cli.main.main``: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import hashlib
import json

import pytest

from ldp.cli.main import main
from ldp.store import Registry

ADAPTER = "adapters/sst2/lora-diffusion"


@pytest.fixture
def published(registry, store_workers, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA_DIFFUSION"}')
    (folder / "adapter_model.safetensors").write_bytes(store_workers.weights(2.0))
    (folder / "metrics.json").write_text('{"accuracy": 0.8}')
    registry.publish("bases/tiny", {"model.safetensors": store_workers.weights(1.0)})
    ref = registry.publish(ADAPTER, folder, job="job-1", base="bases/tiny@1")
    return ref, folder


def _run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_and_show_json(capsys, cli_opts, registry, published, monkeypatch):
    ref, folder = published
    monkeypatch.delenv("LDP_S3_ENDPOINT_URL", raising=False)  # --s3-endpoint alone must do
    code, out, err = _run(capsys, "registry", "ls", "--json", *cli_opts)
    assert code == 0, err
    rows = {row["ref"]: row for row in json.loads(out)}
    assert set(rows) == {"bases/tiny@1", f"{ADAPTER}@1"}
    row = rows[f"{ADAPTER}@1"]
    assert row["size"] == sum(p.stat().st_size for p in folder.iterdir())
    assert row["digest"] == registry.digest(ref) and row["job"] == "job-1"
    assert row["base"] == "bases/tiny@1" and row["latest"] is True and row["created"]

    code, out, err = _run(capsys, "registry", "ls", "bases", "--json", *cli_opts)
    assert [r["ref"] for r in json.loads(out)] == ["bases/tiny@1"]

    code, out, err = _run(capsys, "registry", "show", f"{ADAPTER}@latest", "--json", *cli_opts)
    assert code == 0, err
    shown = json.loads(out)
    data = (folder / "adapter_model.safetensors").read_bytes()
    assert shown["manifest"]["files"]["adapter_model.safetensors"] == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    assert shown["manifest"]["base"]["digest"] == registry.digest("bases/tiny@1")

    code, out, err = _run(capsys, "registry", "ls", *cli_opts)  # the table for people
    assert code == 0 and f"{ADAPTER}@1" in out and registry.digest(ref)[7:19] in out


def test_pull_alias_rm_gc(capsys, cli_opts, registry, published, tmp_path):
    ref, _folder = published
    code, out, err = _run(
        capsys, "registry", "alias", str(ref), "prod", "--expect", "none", *cli_opts
    )
    assert code == 0, err
    code, out, err = _run(
        capsys, "registry", "alias", str(ref), "prod", "--expect", "none", *cli_opts
    )
    assert code == 1 and err.startswith("ldp: error:") and "is at 1" in err

    code, out, err = _run(
        capsys, "registry", "pull", f"{ADAPTER}@prod", "--to", str(tmp_path / "out"), *cli_opts
    )
    assert code == 0, err
    assert out.strip() == str(tmp_path / "out")
    assert (tmp_path / "out" / "metrics.json").read_text() == '{"accuracy": 0.8}'

    code, out, err = _run(capsys, "registry", "rm", f"{ADAPTER}@1", *cli_opts)
    assert code == 1 and "aliased as prod" in err
    code, out, err = _run(capsys, "registry", "rm", f"{ADAPTER}@1", "--force", *cli_opts)
    assert code == 0, err
    code, out, err = _run(capsys, "registry", "show", f"{ADAPTER}@1", *cli_opts)
    assert code == 1 and "no longer exists" in err and len(err.strip().splitlines()) == 1
    code, out, err = _run(capsys, "registry", "gc", "--json", *cli_opts)
    assert code == 0 and json.loads(out) == []


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_blob_fails_pull_and_verify(
    capsys, cli_opts, registry, published, tmp_path, damage
):
    ref, _ = published
    path = registry.backend.path(f"{ADAPTER}/1/adapter_model.safetensors")
    data = registry.backend.fs.cat_file(path)
    bad = data[:-1] + bytes([data[-1] ^ 0xFF]) if damage == "flip" else data[: len(data) // 2]
    registry.backend.fs.pipe_file(path, bad)

    code, out, err = _run(
        capsys, "registry", "pull", str(ref), "--to", str(tmp_path / "o"), *cli_opts
    )
    assert code == 1
    assert err.startswith("ldp: error:") and "adapter_model.safetensors" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()

    code, out, err = _run(capsys, "registry", "verify", *cli_opts)
    assert code == 1 and "adapter_model.safetensors" in err and f"{ADAPTER}@1" in err
    code, out, err = _run(capsys, "registry", "verify", "bases/tiny@1", "--json", *cli_opts)
    assert code == 0 and json.loads(out) == [{"ref": "bases/tiny@1", "ok": True, "problems": []}]


BAD_INVOCATIONS = [
    ["show", "adapters/../../etc@1"],
    ["pull", "bases/..@1"],
    ["pull", "bases/tiny@1/../../../x"],
    ["rm", "/etc/passwd@1"],
    ["verify", "adapters/sst2/..@latest"],
    ["ls", "adapters/../bases"],
    ["alias", "bases/tiny@1", "../prod"],
    ["rm", "bases/tiny@latest"],
    ["publish", "bases/../../tmp", "."],
]


def test_bad_references_exit_2(capsys, cli_opts, registry, store_workers):
    registry.publish("bases/tiny", {"model.safetensors": store_workers.weights(1.0)})
    for args in BAD_INVOCATIONS:
        code, _, err = _run(capsys, "registry", *args, *cli_opts)
        assert code == 2, (args, err)
        assert err.startswith("ldp: error:") and len(err.strip().splitlines()) == 1, (args, err)
    code, _out, err = _run(capsys, "registry", "ls", "--registry", "memory://x")
    assert code == 2 and "unsupported protocol" in err
    assert [i.ref.version for i in registry.ls()] == [1]  # nothing was touched


def test_publish_command(capsys, cli_opts, registry, published, tmp_path):
    _, folder = published
    code, out, err = _run(
        capsys,
        "registry",
        "publish",
        ADAPTER,
        str(folder),
        "--base",
        "bases/tiny",
        "--meta",
        "steps=600",
        "--job",
        "j9",
        *cli_opts,
    )
    assert code == 0, err
    assert out.strip() == f"{ADAPTER}@2"
    manifest = Registry(cli_opts[1]).open_manifest(f"{ADAPTER}@2")
    assert manifest.metadata == {"steps": 600} and manifest.job == "j9"
    (folder / "optimizer.pt").write_bytes(b"\x80\x04")
    code, out, err = _run(capsys, "registry", "publish", ADAPTER, str(folder), *cli_opts)
    assert code == 2 and "optimizer.pt" in err

"""The registry API, run against file:// and s3:// (moto) alike."""

from __future__ import annotations

import hashlib
import json
import pickle
import threading

import pytest

from ldp.errors import IntegrityError, LdpError, NotFoundError, UsageError
from ldp.store import ANY, AliasConflictError, Ref, Registry

ADAPTER = "adapters/sst2/lora-diffusion"


@pytest.fixture
def files(store_workers):
    def make(value: float = 1.0, **extra: bytes) -> dict[str, bytes]:
        out = {
            "adapter_config.json": json.dumps({"peft_type": "LORA_DIFFUSION", "r": 8}).encode(),
            "adapter_model.safetensors": store_workers.weights(value),
            "metrics.json": json.dumps({"accuracy": value / 10}).encode(),
        }
        out.update(extra)
        return out

    return make


def _fs_path(registry: Registry, key: str) -> str:
    return registry.backend.path(key)


def test_publish_pull_roundtrip(registry, files, tmp_path):
    base = registry.publish(
        "bases/tiny", {"model.safetensors": files()["adapter_model.safetensors"]}
    )
    payload = files(3.0, **{"tokenizer/vocab.txt": b"[MASK]\nhello\n"})
    ref = registry.publish(
        ADAPTER, payload, job="job-7", base="bases/tiny@latest", metadata={"steps": 600}
    )
    assert ref == Ref("adapters", "sst2/lora-diffusion", 1)
    assert registry.resolve(f"{ADAPTER}@latest") == ref

    manifest = registry.open_manifest(ref)
    assert manifest.job == "job-7" and manifest.metadata == {"steps": 600} and manifest.created
    assert manifest.base == {"ref": str(base), "digest": registry.digest(base)}
    for name, data in payload.items():
        assert manifest.files[name].sha256 == hashlib.sha256(data).hexdigest()
        assert manifest.files[name].size == len(data)

    out = registry.pull(ref, to=tmp_path / "out")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [*payload, "manifest.json"]
    )
    for name, data in payload.items():
        assert (out / name).read_bytes() == data
    assert (
        registry.digest(ref)
        == "sha256:" + hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    )

    snap = registry.pull(f"{ADAPTER}@1")  # managed snapshot: linked from the read-only cache
    assert (snap / "adapter_model.safetensors").read_bytes() == payload["adapter_model.safetensors"]
    assert (snap / "adapter_model.safetensors").stat().st_mode & 0o222 == 0  # read-only blob
    assert registry.pull(ref) == snap  # second pull reuses the snapshot
    assert registry.read_json(ref, "metrics.json") == {"accuracy": 0.3}


def test_versions_increase_and_latest(registry, files):
    refs = [registry.publish(ADAPTER, files(v)) for v in (1.0, 2.0, 3.0)]
    assert [r.version for r in refs] == [1, 2, 3]
    assert registry.resolve(ADAPTER).version == 3
    assert registry.read_json(f"{ADAPTER}@2")["accuracy"] == pytest.approx(0.2)
    with pytest.raises(NotFoundError):
        registry.resolve(f"{ADAPTER}@4")
    with pytest.raises(NotFoundError):
        registry.resolve("adapters/sst2/prefix@latest")


def test_publish_refuses_bad_inputs_before_claiming(registry, files, tmp_path):
    bad = [
        {"training_args.bin": b"\x00"},
        {"model.pt": b"\x00"},
        {"weights.dat": pickle.dumps({"a": 1})},  # a pickle under an innocent name
        {"adapter_model.safetensors": b"not safetensors at all"},
        {"../escape.json": b"{}"},
        {"manifest.json": b"{}"},
    ]
    for mapping in bad:
        with pytest.raises(UsageError):
            registry.publish(ADAPTER, {**files(), **mapping})
    with pytest.raises(UsageError):
        registry.publish(f"{ADAPTER}@3", files())
    with pytest.raises(UsageError):
        registry.publish("adapters/../bases", files())
    with pytest.raises(NotFoundError):
        registry.publish(ADAPTER, files(), base="bases/missing")
    with pytest.raises(UsageError, match="not under bases"):
        registry.publish(ADAPTER, files(), base={"ref": ADAPTER + "@1", "digest": "sha256:00"})
    assert registry.backend.find("") == {}  # nothing claimed, nothing written

    folder = tmp_path / "adapter"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref")
    for name, data in files().items():
        (folder / name).write_bytes(data)
    (folder / "manifest.json").write_text("{}")  # e.g. a pulled folder: regenerated
    ref = registry.publish(ADAPTER, folder)
    assert sorted(registry.open_manifest(ref).files) == sorted(files())


def test_ls_and_show(registry, files):
    registry.publish("bases/tiny", {"model.safetensors": files()["adapter_model.safetensors"]})
    registry.publish("bases/tiny2", {"model.safetensors": files()["adapter_model.safetensors"]})
    a1 = registry.publish(ADAPTER, files(1.0), job="j1")
    a2 = registry.publish(ADAPTER, files(2.0), job="j2")
    registry.publish("adapters/agnews/prefix", files())
    registry.set_alias(a1, "prod")

    assert [str(i.ref) for i in registry.ls("bases/tiny")] == ["bases/tiny@1"]
    infos = registry.ls("adapters/sst2")
    assert [i.ref for i in infos] == [a1, a2]
    first = infos[0]
    assert first.size == sum(len(v) for v in files(1.0).values())
    assert first.digest == registry.digest(a1) and first.job == "j1"
    assert first.aliases == ("prod",) and not first.latest and infos[1].latest
    assert len(registry.ls()) == 5
    assert [str(i.ref) for i in registry.ls(f"{ADAPTER}@prod")] == [str(a1)]

    shown = registry.show(f"{ADAPTER}@prod")
    assert shown["ref"] == str(a1) and shown["aliases"] == ["prod"] and shown["latest"] is False
    assert shown["location"].endswith("adapters/sst2/lora-diffusion/1")
    assert set(shown["manifest"]["files"]) == set(files())


def test_aliases(registry, files):
    a1 = registry.publish(ADAPTER, files(1.0))
    a2 = registry.publish(ADAPTER, files(2.0))
    with pytest.raises(NotFoundError):
        registry.resolve(f"{ADAPTER}@prod")
    assert registry.set_alias(f"{ADAPTER}@1", "prod", expect=None) == a1
    assert registry.resolve(f"{ADAPTER}@prod") == a1
    with pytest.raises(AliasConflictError, match="is at 1"):
        registry.set_alias(a2, "prod", expect=None)
    with pytest.raises(AliasConflictError):
        registry.set_alias(a2, "prod", expect=2)
    registry.set_alias(a2, "prod", expect=1)
    assert registry.resolve(f"{ADAPTER}@prod") == a2
    registry.set_alias(f"{ADAPTER}@prod", "canary", expect=ANY)  # alias of an alias: resolved
    assert registry.aliases(ADAPTER) == {"prod": 2, "canary": 2}
    for bad in ("latest", "1", "Prod", "../x"):
        with pytest.raises(UsageError):
            registry.set_alias(a1, bad)


def test_rm(registry, files):
    a1 = registry.publish(ADAPTER, files(1.0))
    a2 = registry.publish(ADAPTER, files(2.0))
    registry.set_alias(a2, "prod")
    with pytest.raises(UsageError):
        registry.rm(f"{ADAPTER}@latest")
    with pytest.raises(UsageError):
        registry.rm(ADAPTER)
    with pytest.raises(LdpError, match="aliased as prod"):
        registry.rm(a2)
    assert registry.resolve(ADAPTER) == a2  # refused removal changed nothing

    assert registry.rm(f"{ADAPTER}@prod", force=True) == a2
    assert registry.resolve(ADAPTER) == a1  # latest falls back to the highest live version
    with pytest.raises(NotFoundError, match="no longer exists"):
        registry.resolve(a2)
    with pytest.raises(NotFoundError):
        registry.resolve(f"{ADAPTER}@prod")
    assert [i.ref for i in registry.ls()] == [a1]
    leftover = sorted(registry.backend.find(f"{ADAPTER}/2"))
    assert leftover == [f"{ADAPTER}/2/_claim.json", f"{ADAPTER}/2/manifest.json"]  # tombstone
    assert registry.publish(ADAPTER, files(3.0)).version == 3  # 2 is never reused
    assert registry.verify() and all(r.ok for r in registry.verify())


def test_latest_is_complete_while_a_publisher_is_midway(registry, files):
    v1 = registry.publish(ADAPTER, files(1.0))
    midway, release = threading.Event(), threading.Event()
    outcome: dict = {}

    def progress(name, i, n):
        if i == 1:
            midway.set()
            release.wait(30)

    def slow():
        try:
            outcome["ref"] = registry.publish(ADAPTER, files(2.0), progress=progress)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        assert midway.wait(30)
        assert registry.resolve(f"{ADAPTER}@latest") == v1
        assert registry.read_json(f"{ADAPTER}@latest")["accuracy"] == pytest.approx(0.1)
        assert [i.ref for i in registry.ls(ADAPTER)] == [v1]
        with pytest.raises(NotFoundError):
            registry.resolve(f"{ADAPTER}@2")
        assert registry.gc() == []  # a live publisher is not garbage (default grace)
    finally:
        release.set()
        thread.join(30)
    assert "error" not in outcome, outcome
    assert outcome["ref"].version == 2 and registry.resolve(ADAPTER).version == 2
    assert registry.verify(f"{ADAPTER}@2")[0].ok


def test_gc_and_a_stalled_publisher_race_safely(registry, files):
    stalled, resume = threading.Event(), threading.Event()
    outcome: dict = {}

    def progress(name, i, n):
        if i == 1:
            stalled.set()
            resume.wait(30)

    def slow():
        try:
            registry.publish(ADAPTER, files(2.0), progress=progress)
        except LdpError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        assert stalled.wait(30)
        records = registry.gc(grace_seconds=0)  # treat the stall as death
        assert [r.version for r in records] == [f"{ADAPTER}@1"]
        assert records[0].removed == (f"{ADAPTER}/1/adapter_config.json",)
    finally:
        resume.set()
        thread.join(30)
    assert "reclaimed by gc" in str(outcome.get("error"))  # the publisher learns it lost
    with pytest.raises(NotFoundError):
        registry.resolve(ADAPTER)
    assert sorted(registry.backend.find(f"{ADAPTER}/1")) == [
        f"{ADAPTER}/1/_claim.json",
        f"{ADAPTER}/1/manifest.json",
    ]
    assert registry.publish(ADAPTER, files()).version == 2


def test_failed_publish_leaves_nothing(registry, files):
    def explode(name, i, n):
        if i == 2:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        registry.publish(ADAPTER, files(), progress=explode)
    with pytest.raises(NotFoundError):
        registry.resolve(ADAPTER)
    assert registry.ls() == []
    assert sorted(registry.backend.find(ADAPTER)) == [
        f"{ADAPTER}/1/_claim.json",
        f"{ADAPTER}/1/manifest.json",
    ]
    assert registry.publish(ADAPTER, files()).version == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_blob_is_refused(registry, files, tmp_path, damage):
    ref = registry.publish(ADAPTER, files())
    key = registry.backend.path(f"{ADAPTER}/1/adapter_model.safetensors")
    fs = registry.backend.fs
    data = fs.cat_file(key)
    if damage == "flip":
        fs.pipe_file(key, data[:40] + bytes([data[40] ^ 0x01]) + data[41:])
    elif damage == "truncate":
        fs.pipe_file(key, data[:-5])
    else:
        fs.rm_file(key)
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        registry.pull(ref, to=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    [result] = registry.verify(ref)
    assert not result.ok and "adapter_model.safetensors" in result.problems[0]

    fs.pipe_file(key, data)  # repaired: the bad bytes never entered the cache
    assert (
        registry.pull(ref, to=tmp_path / "ok") / "adapter_model.safetensors"
    ).read_bytes() == data


def test_hostile_manifest_cannot_escape(registry, files, tmp_path):
    ref = registry.publish(ADAPTER, files())
    mkey = f"{ADAPTER}/1/manifest.json"
    doc = json.loads(registry.backend.read(mkey))
    doc["files"]["../../../escaped.txt"] = {"sha256": "0" * 64, "size": 1}
    registry.backend.write(mkey, json.dumps(doc).encode())
    with pytest.raises(IntegrityError, match="escaped"):
        registry.pull(ref, to=tmp_path / "a" / "b" / "out")
    assert not list(tmp_path.rglob("escaped.txt"))


def test_pull_destination_must_be_empty(registry, files, tmp_path):
    ref = registry.publish(ADAPTER, files())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        registry.pull(ref, to=tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert registry.pull(ref, to=tmp_path / "empty") == (tmp_path / "empty").absolute()


def test_unsupported_protocol():
    with pytest.raises(UsageError, match="unsupported protocol"):
        Registry("memory://x")


def test_default_registry_is_under_ldp_home(tmp_path, monkeypatch, files):
    monkeypatch.setenv("LDP_HOME", str(tmp_path / "home"))
    ref = Registry().publish(
        "bases/tiny", {"model.safetensors": files()["adapter_model.safetensors"]}
    )
    assert (tmp_path / "home" / "registry" / "bases" / "tiny" / "1" / "manifest.json").is_file()
    monkeypatch.setenv("LDP_REGISTRY", (tmp_path / "elsewhere").as_uri())
    assert Registry().ls() == []
    assert Registry((tmp_path / "home" / "registry").as_uri()).resolve("bases/tiny") == ref


def test_safetensors_whose_length_prefix_looks_like_a_pickle(registry, store_workers):
    import numpy as np
    from safetensors.numpy import save

    for pad in range(2000):  # find a header length of 0x2_80-ish: bytes 80 02 .. like a pickle
        data = save({"w": np.zeros(2, dtype=np.float32)}, metadata={"p": "x" * pad})
        if data[0] == 0x80 and 2 <= data[1] <= 5:
            break
    else:
        pytest.fail("no such padding")
    ref = registry.publish("bases/tiny", {"model.safetensors": data})
    assert registry.read_bytes(ref, "model.safetensors") == data
    with pytest.raises(UsageError, match="pickle"):
        registry.publish("bases/tiny", {"model.safetensors": data, "extra.dat": data})


def test_symlinked_folders_are_refused(registry, files, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "vocab.txt").write_text("a")
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "metrics.json").write_text("{}")
    (folder / "tokenizer").symlink_to(tmp_path / "real")
    with pytest.raises(UsageError, match="symlinked"):
        registry.publish(ADAPTER, folder)


@pytest.mark.parametrize("backend_kind", ["s3"])
def test_s3_store_that_ignores_conditional_writes_is_refused(registry, files, monkeypatch):
    from ldp.store import backend as backend_module

    fs = registry.backend.fs
    plain = fs.pipe_file
    monkeypatch.setattr(backend_module, "_PROBED", set())
    monkeypatch.setattr(
        fs, "pipe_file", lambda path, data, mode="overwrite", **kw: plain(path, data)
    )
    with pytest.raises(LdpError, match="ignores conditional writes"):
        registry.publish(ADAPTER, files())
    assert registry.backend.find(ADAPTER) == {}


def test_gc_removes_stale_alias_temp_files(registry, files):
    ref = registry.publish(ADAPTER, files())
    registry.set_alias(ref, "prod")
    stray = f"{ADAPTER}/_aliases/.tmp-prod.json-0123456789ab"
    registry.backend.write(stray, b"{}")
    assert registry.gc() == []  # fresh: maybe an alias move in progress
    [record] = registry.gc(grace_seconds=0)
    assert record.removed == (stray,)
    assert stray not in registry.backend.find(ADAPTER)
    assert registry.resolve(f"{ADAPTER}@prod") == ref

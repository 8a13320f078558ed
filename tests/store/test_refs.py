"""References, names and manifests: pure functions, no storage."""

from __future__ import annotations

import json

import pytest

from ldp.errors import IntegrityError, UsageError
from ldp.store import LATEST, Manifest, Ref, parse_ref
from ldp.store.manifest import check_file_name
from ldp.store.refs import parse_prefix


@pytest.mark.parametrize(
    "text, kind, name, version",
    [
        ("adapters/sst2/lora-diffusion@latest", "adapters", "sst2/lora-diffusion", LATEST),
        ("adapters/wmt14_en_de/weight-lora@12", "adapters", "wmt14_en_de/weight-lora", 12),
        ("bases/tiny@3", "bases", "tiny", 3),
        ("bases/tiny", "bases", "tiny", LATEST),
        ("routers/all@prod", "routers", "all", "prod"),
        ("bundles/v1.2@canary-2", "bundles", "v1.2", "canary-2"),
    ],
)
def test_parse_valid(text, kind, name, version):
    ref = parse_ref(text)
    assert (ref.kind, ref.name, ref.version) == (kind, name, version)
    assert parse_ref(str(ref)) == ref
    assert ref.key == f"{kind}/{name}"


@pytest.mark.parametrize(
    "text",
    [
        "bases/../etc@1",
        "bases/..@1",
        "adapters/sst2/..@1",
        "adapters/../../x@1",
        "/bases/tiny@1",
        "bases//tiny@1",
        "bases/tiny/extra@1",  # bases have one name part
        "adapters/sst2@1",  # adapters have two
        "bases/Tiny@1",
        "bases/.hidden@1",
        "bases/a b@1",
        "bases/tiny@0",
        "bases/tiny@01",
        "bases/tiny@-1",
        "bases/tiny@",
        "bases/tiny@1/../../x",
        "bases/tiny@../2",
        "models/tiny@1",
        "bases\\tiny@1",
        "",
    ],
)
def test_parse_refuses(text):
    with pytest.raises(UsageError):
        parse_ref(text)


def test_version_presence_rules():
    with pytest.raises(UsageError, match="without '@VERSION'"):
        parse_ref("bases/tiny@3", versioned=False)
    with pytest.raises(UsageError, match="explicit version"):
        parse_ref("bases/tiny", versioned=True)
    assert parse_ref("bases/tiny", versioned=False) == Ref("bases", "tiny", LATEST)


def test_prefix():
    assert parse_prefix(None) == ""
    assert parse_prefix("adapters/sst2/") == "adapters/sst2"
    for bad in ("adapters/../bases", "etc", "bases/tiny/1", "/abs"):
        with pytest.raises(UsageError):
            parse_prefix(bad)


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "a/../b",
        "/etc/passwd",
        "a//b",
        "",
        "manifest.json",
        ".hidden",
        "a\\b",
        "model.bin",
        "model.PT",
        "w.pkl",
        "state.ckpt",
        "arr.npy",
    ],
)
def test_file_names_refused(name):
    with pytest.raises(UsageError):
        check_file_name(name)


def test_file_names_accepted():
    for name in (
        "adapter_model.safetensors",
        "tokenizer/vocab.txt",
        "README.md",
        "sub/manifest.json",
    ):
        assert check_file_name(name) == name


def test_manifest_roundtrip_and_hostile_manifests():
    m = Manifest.from_bytes(
        json.dumps(
            {
                "format": "ldp.manifest/1",
                "ref": "bases/tiny@1",
                "files": {"w.safetensors": {"sha256": "a" * 64, "size": 3}},
            }
        ).encode(),
        where="t",
    )
    assert m.live and m.size == 3
    assert Manifest.from_bytes(m.to_bytes(), where="t") == m
    hostile = {
        "format": "ldp.manifest/1",
        "ref": "bases/tiny@1",
        "files": {"../../evil.sh": {"sha256": "a" * 64, "size": 3}},
    }
    with pytest.raises(IntegrityError, match="evil"):
        Manifest.from_bytes(json.dumps(hostile).encode(), where="t")
    with pytest.raises(IntegrityError):
        Manifest.from_bytes(b"{not json", where="t")
    tomb = Manifest.make_tombstone("bases/tiny@1", "removed")
    assert not Manifest.from_bytes(tomb.to_bytes(), where="t").live

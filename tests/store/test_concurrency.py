"""Many processes at once: distinct versions, alias compare-and-swap, a publisher killed mid-way.

The workers are ``multiprocessing`` spawn children (``store_workers`` module); a file barrier
releases them together so their requests really interleave.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

from ldp.errors import NotFoundError
from ldp.store import Registry

import pytest

ADAPTER = "adapters/sst2/lora-diffusion"


def test_eight_concurrent_publishers_get_distinct_intact_versions(
    registry_url, storage_options, spawn_pool, store_workers, tmp_path
):
    futures = [
        spawn_pool.submit(
            store_workers.publish_one, registry_url, storage_options, ADAPTER, me, str(tmp_path)
        )
        for me in range(8)
    ]
    store_workers.release(str(tmp_path), 8)
    versions = [f.result(timeout=120) for f in futures]
    assert sorted(versions) == list(range(1, 9))

    reg = Registry(registry_url, storage_options)
    assert [i.ref.version for i in reg.ls(ADAPTER)] == list(range(1, 9))
    assert all(r.ok for r in reg.verify())
    for me, version in enumerate(versions):
        ref = f"{ADAPTER}@{version}"
        manifest = reg.open_manifest(ref)
        assert manifest.job == f"worker-{me}" and manifest.metadata == {"worker": me}
        assert reg.read_json(ref, "metrics.json") == {"worker": me}
        weights = reg.read_bytes(ref, "adapter_model.safetensors")
        assert store_workers.read_weights(weights) == [float(me)] * 16


def test_alias_compare_and_swap_under_contention(
    registry_url, storage_options, spawn_pool, store_workers, tmp_path
):
    workers, times = 8, 2
    reg = Registry(registry_url, storage_options)
    for v in range(workers * times + 1):
        reg.publish(ADAPTER, {"metrics.json": str(v).encode()})
    reg.set_alias(f"{ADAPTER}@1", "prod", expect=None)

    futures = [
        spawn_pool.submit(
            store_workers.bump_alias,
            registry_url,
            storage_options,
            ADAPTER,
            "prod",
            times,
            me,
            str(tmp_path),
        )
        for me in range(workers)
    ]
    store_workers.release(str(tmp_path), workers)
    results = [f.result(timeout=120) for f in futures]
    moved_from = sorted(v for moved, _ in results for v in moved)
    # Every step v -> v+1 happened exactly once: no update was lost or applied twice.
    assert moved_from == list(range(1, workers * times + 1))
    assert reg.resolve(f"{ADAPTER}@prod").version == workers * times + 1


def test_publisher_killed_between_files(registry_url, storage_options, store_workers, tmp_path):
    reg = Registry(registry_url, storage_options)
    marker = tmp_path / "first-file-stored"
    proc = multiprocessing.get_context("spawn").Process(
        target=store_workers.publish_and_hang,
        args=(registry_url, storage_options, ADAPTER, str(marker)),
    )
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.is_alive() and time.monotonic() < deadline, "publisher never got going"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(30)
    assert proc.exitcode == -signal.SIGKILL

    # Nothing is visible, but the first file and the claim are there.
    with pytest.raises(NotFoundError):
        reg.resolve(ADAPTER)
    assert reg.ls() == []
    stored = sorted(reg.backend.find(ADAPTER))
    assert stored == [f"{ADAPTER}/1/_claim.json", f"{ADAPTER}/1/a_config.json"]

    # The claim names a process of this host that is gone: collected without waiting for grace.
    records = reg.gc()
    assert [r.version for r in records] == [f"{ADAPTER}@1"]
    assert "is gone" in records[0].reason
    assert sorted(reg.backend.find(ADAPTER)) == [
        f"{ADAPTER}/1/_claim.json",
        f"{ADAPTER}/1/manifest.json",  # a tombstone: the number stays used
    ]
    assert reg.gc() == []
    assert reg.publish(ADAPTER, {"metrics.json": b"{}"}).version == 2
    assert [i.ref.version for i in reg.ls()] == [2]

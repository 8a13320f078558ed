"""The job spec's resource check finds the cluster the way ``ldp.cluster.connect`` does: an
explicit address, ``RAY_ADDRESS``, or the head ``ldp cluster up`` recorded (no address needed).

The head record here is a real state file naming a live process (this test's own), which is all
``running_head`` needs; no Ray is started, so these run in well under a second."""

from __future__ import annotations

import dataclasses
import json
import os

import psutil
import pytest

from ldp.errors import UsageError
from ldp.jobs.spec import validate_spec

CPUS = os.cpu_count() or 1


@pytest.fixture
def head_record(monkeypatch):
    """A head recorded by ``ldp cluster up`` offering more CPUs than this machine has."""
    from ldp.cluster.local import HeadInfo, running_head, state_path

    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE"):
        monkeypatch.delenv(key, raising=False)
    me = psutil.Process()
    head = HeadInfo(pid=me.pid, create_time=me.create_time(), host="127.0.0.1", port=6391,
                    dashboard_port=8291, client_port=10091, num_cpus=CPUS + 4, auth="disabled",
                    temp_dir="/tmp/ray", log_path="/dev/null", started_at=0.0)
    state_path().parent.mkdir(parents=True, exist_ok=True)
    state_path().write_text(json.dumps(dataclasses.asdict(head)))
    assert running_head() is not None
    yield head
    state_path().unlink(missing_ok=True)


def _spec(data_dir, workers: int) -> dict:
    return {"task": "sst2", "workers": workers, "data_dir": str(data_dir)}


def test_embedded_ray_is_bounded_by_this_machine(data_dir, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert validate_spec(_spec(data_dir, CPUS)).workers == CPUS
    with pytest.raises(UsageError, match=f"this machine has {CPUS}"):
        validate_spec(_spec(data_dir, CPUS + 1))


def test_a_cluster_up_head_is_found_without_an_address(head_record, data_dir):
    # More workers than this machine has CPUs: fine, the head offers them.
    assert validate_spec(_spec(data_dir, CPUS + 2)).workers == CPUS + 2
    with pytest.raises(UsageError, match=r"the head started by `ldp cluster up` \(127.0.0.1:6391\) has"):
        validate_spec(_spec(data_dir, CPUS + 5))


@pytest.mark.parametrize("address", ["127.0.0.1:6391", "http://127.0.0.1:8291", "auto"])
def test_the_head_is_recognised_by_address_and_by_ray_address(head_record, data_dir, monkeypatch, address):
    too_many = _spec(data_dir, CPUS + 5)
    with pytest.raises(UsageError, match="ldp cluster up"):
        validate_spec(too_many, address=address)
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(UsageError, match="ldp cluster up"):
        validate_spec(too_many)
    assert validate_spec(_spec(data_dir, CPUS + 2)).workers == CPUS + 2


def test_another_cluster_is_left_to_the_runner(head_record, data_dir):
    # Not the recorded head: its size is unknown until the runner connects.
    assert validate_spec(_spec(data_dir, 64), address="10.1.2.3:6379").workers == 64
    # An embedded Ray is asked for explicitly: this machine's CPUs bound it, head or not.
    with pytest.raises(UsageError, match="this machine has"):
        validate_spec(_spec(data_dir, CPUS + 2), address="local")


def test_cpus_per_worker_beyond_the_machine_or_not_positive_is_refused(data_dir, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = {**_spec(data_dir, 1), "cpus_per_worker": CPUS}
    assert validate_spec(spec).cpus_per_worker == CPUS
    with pytest.raises(UsageError, match=f"needs {2 * CPUS} CPUs; this machine has {CPUS}"):
        validate_spec({**spec, "workers": 2})
    with pytest.raises(UsageError, match="cpus_per_worker must be > 0"):
        validate_spec({**spec, "cpus_per_worker": 0})


def test_threads_do_not_change_which_published_run_a_spec_matches(data_dir):
    from ldp.jobs.train_all_spec import spec_hash

    spec = validate_spec(_spec(data_dir, 1))
    assert spec_hash(dataclasses.asdict(spec)) == spec_hash({**dataclasses.asdict(spec), "cpus_per_worker": 1})

"""connect() tries a second time when the embedded Ray's dashboard fails to start (a timeout seen
on a busy 2-core CI machine), and still fails with one line on any other error."""

from __future__ import annotations

import pytest
from ldp.cluster.connect import connect
from ldp.errors import LdpError


@pytest.mark.slow
def test_a_dashboard_that_failed_to_start_gets_one_more_try(ray_home, monkeypatch):
    import ray

    assert not ray.is_initialized()
    real_init, calls = ray.init, []

    def flaky_init(*args, **kwargs):
        calls.append(kwargs.get("dashboard_port"))
        if len(calls) == 1:
            raise RuntimeError("Failed to start the dashboard\nThe last 20 lines of dashboard.log ...")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(ray, "init", flaky_init)
    handle = connect(num_cpus=1)
    try:
        assert len(calls) == 2 and ray.is_initialized() and handle.started_cluster
        assert handle.resources().cpus == 1
    finally:
        handle.shutdown()
    assert not ray.is_initialized()


def test_other_start_errors_are_not_retried(monkeypatch):
    import ray

    calls = []

    def broken_init(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("object store memory too small\nmore detail")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", broken_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(LdpError, match="^could not start a local Ray: object store memory too small$"):
        connect(num_cpus=1)
    assert calls == [1]

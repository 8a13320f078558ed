"""connect() tries a second time when the embedded Ray fails to start because the machine is busy
(its dashboard or its node timing out, seen on busy 2-core CI machines), and still fails with one
line on any other error."""

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


@pytest.mark.parametrize("message, retried", [
    ("Failed to start the dashboard\nThe last 20 lines of dashboard.log ...", True),
    ("The current node timed out during startup. This could happen because some of the raylet "
     "failed to startup or the GCS has become overloaded.", True),
    ("object store memory too small\nmore detail", False),
])
def test_which_start_failures_get_a_second_try(message, retried, monkeypatch):
    import re

    import ray

    calls = []

    def failing_init(*args, **kwargs):
        calls.append(1)
        raise RuntimeError(message)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", failing_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    first_line = re.escape(message.splitlines()[0])
    with pytest.raises(LdpError, match=f"^could not start a local Ray: {first_line}$"):
        connect(num_cpus=1)
    assert len(calls) == (2 if retried else 1)

"""A Jobs API submission to a head whose job agent has not registered yet is retried, not failed;
every other error still fails at once."""

from __future__ import annotations

import pytest

from ldp.jobs import launch


class _Client:
    """Answers like ``JobSubmissionClient.submit_job`` on a head: ``errors`` first, then success."""

    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = 0

    def submit_job(self, **job):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return job["submission_id"]


def _no_agent():
    return RuntimeError("Request failed with status code 500: No available agent to submit job, "
                        "please try again later..")


def test_no_agent_yet_is_retried_until_the_submission_goes_through(monkeypatch):
    monkeypatch.setattr(launch.time, "sleep", lambda s: None)
    client = _Client([_no_agent(), _no_agent()])
    launch._submit_when_an_agent_is_up(client, entrypoint="x", submission_id="j1")
    assert client.calls == 3


def test_other_errors_are_not_retried(monkeypatch):
    monkeypatch.setattr(launch.time, "sleep", lambda s: None)
    client = _Client([RuntimeError("Request failed with status code 400: bad runtime_env")])
    with pytest.raises(RuntimeError, match="bad runtime_env"):
        launch._submit_when_an_agent_is_up(client, entrypoint="x", submission_id="j1")
    assert client.calls == 1


def test_no_agent_for_longer_than_the_patience_fails():
    client = _Client([_no_agent()] * 100)
    with pytest.raises(RuntimeError, match="No available agent"):
        launch._submit_when_an_agent_is_up(client, patience_s=0.0, entrypoint="x", submission_id="j1")
    assert client.calls == 1

"""`ldp cluster` argument handling (no Ray started): one-line errors, exit codes, --help."""

from __future__ import annotations

import json

import pytest
from ldp.cli.main import main


def test_help_lists_the_commands(capsys):
    assert main(["cluster", "--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("up", "down", "status"):
        assert cmd in out
    assert main(["cluster", "up", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--num-cpus" in out and "--dashboard-port" in out and "6380" in out and "8265" in out


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (
            ["cluster", "up", "--auth", "maybe"],
            2,
            "ldp: error: unknown auth mode 'maybe'; choose token or disabled",
        ),
        (
            ["cluster", "up", "--port", "70000"],
            2,
            "ldp: error: --port must be a TCP port (1-65535), got 70000",
        ),
        (
            ["cluster", "up", "--port", "7000", "--dashboard-port", "7000"],
            2,
            "ldp: error: --port, --dashboard-port and --client-port must differ",
        ),
        (
            ["cluster", "status", "--address", "http://127.0.0.1:8265"],
            2,
            "ldp: error: cluster status needs a driver address (host:port or ray://), not 'http://127.0.0.1:8265'",
        ),
        (
            ["cluster", "status", "--address", "nohost"],
            2,
            "ldp: error: Ray address 'nohost' is not host:port",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, code, message, capsys, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_num_cpus_must_be_positive(capsys):
    assert main(["cluster", "up", "--num-cpus", "0"]) == 2
    assert capsys.readouterr().err == "ldp: error: --num-cpus must be >= 1, got 0\n"


def test_down_and_status_without_a_head(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["cluster", "down"]) == 0
    assert "no Ray head started by `ldp cluster up` is running" in capsys.readouterr().out
    assert main(["cluster", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["running"] is False
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.1:8265")
    assert main(["cluster", "status"]) == 0
    assert "RAY_ADDRESS is a Jobs API URL" in capsys.readouterr().out


def test_stale_state_is_cleaned_up(capsys):
    """A head record whose process is gone is not a running head."""
    from ldp.cluster.local import HeadInfo, running_head, state_path

    state_path().parent.mkdir(parents=True)
    dead = HeadInfo(
        pid=2**22 + 12345,
        create_time=0.0,
        host="127.0.0.1",
        port=1,
        dashboard_port=2,
        client_port=3,
        num_cpus=1,
        auth="token",
        temp_dir="/nonexistent",
        log_path="/nonexistent",
        started_at=0.0,
    )
    state_path().write_text(json.dumps(dead.__dict__))
    assert running_head() is None
    assert not state_path().exists()

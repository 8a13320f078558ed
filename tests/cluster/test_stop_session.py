"""``ldp cluster down`` stops every process of the head it started, including those in process
groups of their own (Ray puts each worker in one) within the head's session. Fast: a stand-in
head process tree, no Ray."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import psutil

from ldp.cluster.local import HeadInfo, stop_head, state_path

# A "head" that ignores nothing and a "worker" that leaves the head's process group (as Ray's
# workers do) but stays in its session.
_TREE = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setpgrp(); time.sleep(120)'])\n"
    "time.sleep(120)\n"
)


def _session(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (OSError, psutil.Error):
            continue
    return out


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_down_kills_workers_in_their_own_process_groups(tmp_path):
    head = subprocess.Popen([sys.executable, "-c", _TREE], start_new_session=True)
    try:
        def own_group() -> list[psutil.Process]:
            return [p for p in _session(head.pid) if _pgid(p.pid) not in (head.pid, None)]

        deadline = time.monotonic() + 30
        while not own_group() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(own_group()) == 1  # the worker left the head's group, as a Ray worker does

        info = HeadInfo(pid=head.pid, create_time=psutil.Process(head.pid).create_time(),
                        host="127.0.0.1", port=1, dashboard_port=2, client_port=3, num_cpus=1,
                        auth="disabled", temp_dir=str(tmp_path), log_path="/dev/null", started_at=0.0)
        state_path().parent.mkdir(parents=True, exist_ok=True)
        state_path().write_text(json.dumps(dataclasses.asdict(info)))
        assert stop_head(timeout=2) is not None
        head.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _session(head.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _session(head.pid), "a process of the head's session survived `down`"
    finally:
        for p in _session(head.pid):
            p.kill()
        if head.poll() is None:
            head.kill()

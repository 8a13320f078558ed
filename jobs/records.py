"""Job records: what ``ldp status``, ``ldp logs`` and ``ldp jobs`` show.

Local jobs (embedded Ray, or a driver attached to a cluster) keep a folder
``LDP_HOME/jobs/<job id>/``:

- ``spec.yaml``: the resolved job spec (what ``ldp _run-job`` executes);
- ``status.json``: ``state`` (``PENDING|RUNNING|SUCCEEDED|FAILED|STOPPED``), submitted/started/
  ended times (Unix seconds), ``result`` (``{"ref": registry reference, "metrics": {...}}``),
  ``error`` (one line), the runner's ``pid``; rewritten atomically (temp file + rename);
- ``job.log``: everything the job printed (driver and Ray workers).

Jobs submitted to a remote cluster's Jobs API (an ``http://`` address) live in that cluster; the
``remote_*`` functions read them through ``ray.job_submission.JobSubmissionClient`` and turn them
into the same :class:`JobRecord` shape. The job's result reaches the Jobs API through its log:
``ldp _run-job`` prints one ``LDP_RESULT {json}`` line at the end. A local record made when
submitting remotely carries the ``address``, so ``ldp status ID`` finds the job without
``--address``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from ldp.errors import LdpError, NotFoundError, UsageError, first_line
from ldp.paths import ldp_home

__all__ = [
    "RESULT_PREFIX",
    "STATES",
    "TERMINAL_STATES",
    "JobRecord",
    "create_job",
    "get_job",
    "head_lost_line",
    "interruption_line",
    "job_dir",
    "jobs_root",
    "last_checkpoint_step",
    "list_jobs",
    "log_path",
    "new_job_id",
    "parse_result_line",
    "read_log",
    "read_spec",
    "remote_client",
    "remote_follow",
    "remote_get",
    "remote_list",
    "remote_logs",
    "update_job",
]

STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED")
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
RESULT_PREFIX = "LDP_RESULT "
"""``ldp _run-job`` prints ``LDP_RESULT {"ref": ..., "metrics": ...}`` as its last line."""

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class JobRecord:
    """One job's status (``status.json``), local or read from a remote Jobs API."""

    job_id: str
    kind: str = "adapter"
    state: str = "PENDING"
    submitted_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    result: dict[str, Any] | None = None
    """``{"ref": "adapters/sst2/lora-diffusion@3", "metrics": {...}}`` once SUCCEEDED."""
    error: str | None = None
    """One line saying why the job FAILED (or was STOPPED)."""
    address: str | None = None
    """The Jobs API address for a job submitted to a remote cluster; None for local jobs."""
    pid: int | None = None
    """The process running the job (local jobs), with its start time to spot a reused pid."""
    pid_started: float | None = None
    host: str = ""
    label: str = ""
    """A short description (the task), shown by ``ldp jobs``."""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


# -- local records ----------------------------------------------------------------------------
def jobs_root() -> Path:
    return ldp_home() / "jobs"


def _check_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _ID_RE.match(job_id):
        raise UsageError(f"invalid job id {job_id!r} (letters, digits, '.', '_', '-')")
    return job_id


def job_dir(job_id: str) -> Path:
    return jobs_root() / _check_id(job_id)


def log_path(job_id: str) -> Path:
    return job_dir(job_id) / "job.log"


def new_job_id(label: str = "job") -> str:
    """``ldp-<label>-<yyyymmdd-hhmmss>-<4 hex>``, e.g. ``ldp-sst2-20260101-120000-3fa2``."""
    slug = re.sub(r"[^a-z0-9]+", "-", (label or "job").lower()).strip("-")[:40] or "job"
    return f"ldp-{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _write_status(record: JobRecord) -> None:
    folder = job_dir(record.job_id)
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(record.as_dict(), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, folder / "status.json")


def create_job(
    spec: dict[str, Any],
    *,
    job_id: str | None = None,
    address: str | None = None,
    label: str | None = None,
) -> JobRecord:
    """Make the record folder of a new job (state PENDING); refuses an existing id."""
    if not isinstance(spec, dict):
        raise UsageError("a job spec is a mapping")
    kind = str(spec.get("kind") or "adapter")
    label = label or str(spec.get("task") or kind.rsplit(":", 1)[-1])
    job_id = _check_id(job_id or new_job_id(label))
    folder = job_dir(job_id)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        raise UsageError(f"job {job_id} exists already; job ids are never reused") from None
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (folder / "job.log").touch()
    record = JobRecord(
        job_id=job_id,
        kind=kind,
        submitted_at=time.time(),
        address=address,
        host=socket.gethostname(),
        label=label,
    )
    _write_status(record)
    return record


def _read_status(job_id: str) -> JobRecord:
    path = job_dir(job_id) / "status.json"
    try:
        return JobRecord.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise NotFoundError(f"no job {job_id} in {jobs_root()} (ldp jobs lists them)") from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise LdpError(f"job {job_id}: unreadable {path}: {exc}") from exc


def _process_alive(pid: int, started: float | None) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 1.0:
            return False  # the pid was reused by another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def get_job(job_id: str) -> JobRecord:
    """The local record; a job whose process died without recording an end becomes FAILED."""
    record = _read_status(job_id)
    if _orphaned(record):
        with _locked(job_id):
            record = _read_status(job_id)  # again, under the lock: it may just have ended
            if _orphaned(record):
                record.state, record.ended_at = "FAILED", time.time()
                record.error = interruption_line(record)
                _write_status(record)
    return record


def interruption_line(record: JobRecord) -> str:
    """One line for a job whose process ended without recording a result: what was lost (the
    Ray head it was attached to, when that no longer answers), the step of its last committed
    checkpoint, and how to go on."""
    job_id = record.job_id
    address = record.extra.get("ray_address")
    if address and not _ray_head_answers(address):
        what = f"interrupted: the Ray head at {address} was lost, and the job's driver with it"
    else:
        what = f"interrupted: the job's process (pid {record.pid}) exited without recording a result"
    step = last_checkpoint_step(job_id)
    if step is None:
        where = "no checkpoint was committed (a resume starts at step 0)"
    else:
        where = f"last checkpoint at step {step}"
    return f"{what}; {where}; continue with `ldp submit --resume {job_id}` (log: `ldp logs {job_id}`)"


def head_lost_line(record: JobRecord) -> str | None:
    """For a job whose driver still runs: one line when the Ray head it is attached to does not
    answer any more (the job cannot go on; its driver will exit), else None."""
    address = record.extra.get("ray_address")
    if not address or _ray_head_answers(address):
        return None
    step = last_checkpoint_step(record.job_id)
    where = "no checkpoint was committed" if step is None else f"last checkpoint at step {step}"
    return (
        f"the Ray head at {address} was lost: the job cannot go on; {where}; once its driver "
        f"(pid {record.pid}) has exited, continue with `ldp submit --resume {record.job_id}`"
    )


def last_checkpoint_step(job_id: str) -> int | None:
    """The step of the last checkpoint job ``job_id``'s training run saw committed to its
    storage (the run's ``checkpoint`` metrics events), or None (none yet, or unreadable)."""
    from ldp.jobs.runner import default_storage_path, read_metrics

    try:
        spec = read_spec(job_id)
        storage = spec.get("storage_path") or str(default_storage_path())
        events = read_metrics(storage, job_id)
    except Exception:  # noqa: BLE001 - a status line must not fail on an unreadable run folder
        return None
    steps = [int(e["step"]) for e in events if e.get("event") == "checkpoint" and "step" in e]
    return max(steps) if steps else None


def _ray_head_answers(address: str, timeout: float = 1.0) -> bool:
    """Does anything listen at a Ray GCS address (``host:port``, ``ray://host:port``)? Unknown
    forms (``auto``) count as answering: nothing is claimed about them."""
    from urllib.parse import urlparse

    url = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = url.hostname, url.port
    except ValueError:
        return True
    if not host or not port:
        return True
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _orphaned(record: JobRecord) -> bool:
    return (
        not record.finished
        and record.address is None
        and record.pid is not None
        and record.host == socket.gethostname()
        and not _process_alive(record.pid, record.pid_started)
    )


def update_job(job_id: str, **changes: Any) -> JobRecord:
    """Change fields of a local record (``state`` must be one of :data:`STATES`).

    Read-modify-write under an exclusive lock on the record folder, so the launcher and the
    job's process never lose each other's updates."""
    if "state" in changes and changes["state"] not in STATES:
        raise ValueError(f"unknown job state {changes['state']!r}")
    with _locked(job_id):
        record = _read_status(job_id)
        for key, value in changes.items():
            if not hasattr(record, key) or key == "job_id":
                raise ValueError(f"JobRecord has no field {key!r}")
            setattr(record, key, value)
        _write_status(record)
    return record


def reopen_job(job_id: str) -> JobRecord:
    """Put a FAILED or STOPPED job back to PENDING so that it runs again under the same id (its
    training resumes from the run folder's last checkpoint). ``extra["attempts"]`` counts the runs
    and ``extra["resumed_after"]`` keeps the error that ended the previous one."""
    with _locked(job_id):
        record = _read_status(job_id)
        if record.state not in ("FAILED", "STOPPED"):
            raise UsageError(f"job {job_id} is {record.state}; only a FAILED or STOPPED job can be resumed")
        attempts = int(record.extra.get("attempts", 1)) + 1
        record.extra = {**record.extra, "attempts": attempts, "resumed_after": record.error}
        record.state, record.error = "PENDING", None
        record.ended_at = record.started_at = record.pid = record.pid_started = None
        _write_status(record)
    return record


@contextlib.contextmanager
def _locked(job_id: str):
    import fcntl

    folder = job_dir(job_id)
    if not folder.is_dir():
        raise NotFoundError(f"no job {job_id} in {jobs_root()} (ldp jobs lists them)")
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def list_jobs() -> list[JobRecord]:
    """Every local job, newest first."""
    root = jobs_root()
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if (folder / "status.json").is_file():
            try:
                out.append(get_job(folder.name))
            except LdpError:
                continue
    return sorted(out, key=lambda r: r.submitted_at, reverse=True)


def read_spec(job_id: str) -> dict[str, Any]:
    path = job_dir(job_id) / "spec.yaml"
    if not path.is_file():
        raise NotFoundError(f"job {job_id} has no spec ({path})")
    return yaml.safe_load(path.read_text()) or {}


def read_log(job_id: str) -> str:
    _read_status(job_id)  # NotFoundError for an unknown id
    path = log_path(job_id)
    return path.read_text(errors="replace") if path.is_file() else ""


def parse_result_line(text: str) -> dict[str, Any] | None:
    """The last ``LDP_RESULT {...}`` line of a job log, decoded (None if there is none)."""
    for line in reversed(text.splitlines()):
        at = line.find(RESULT_PREFIX)
        if at >= 0:
            try:
                return json.loads(line[at + len(RESULT_PREFIX) :])
            except json.JSONDecodeError:
                return None
    return None


def _error_line(text: str) -> str | None:
    for line in reversed(text.splitlines()):
        at = line.find("ldp: error: ")
        if at >= 0:
            return line[at + len("ldp: error: ") :].strip()
    return None


# -- remote (Jobs API) ------------------------------------------------------------------------
def remote_client(address: str):
    """A ``JobSubmissionClient`` for ``http(s)://host:port`` (token auth per ``RAY_AUTH_MODE``)."""
    from ldp.cluster import resolve_address
    from ray.job_submission import JobSubmissionClient

    kind, addr = resolve_address(address)
    if kind != "jobs":
        raise UsageError(
            f"{address!r} is not a Jobs API address; jobs of a remote cluster are read through "
            "its dashboard, e.g. --address http://127.0.0.1:8265"
        )
    try:
        return JobSubmissionClient(addr)
    except Exception as exc:  # ConnectionError, 401 without the token, bad URL
        line = first_line(exc)
        raise LdpError(f"cannot reach the Ray Jobs API at {addr}: {line}") from exc


def _record_from_details(details: Any, address: str, logs: str | None) -> JobRecord:
    meta = dict(details.metadata or {})
    state = str(getattr(details.status, "value", details.status))
    start = details.start_time / 1000 if details.start_time else 0.0
    end = details.end_time / 1000 if details.end_time else None
    result = parse_result_line(logs) if logs and state == "SUCCEEDED" else None
    error = None
    if state in ("FAILED", "STOPPED"):
        error = (_error_line(logs) if logs else None) or (details.message or "").strip() or None
        if error:
            error = error.splitlines()[0]
    return JobRecord(
        job_id=details.submission_id or details.job_id or "",
        kind=meta.get("ldp_kind", "ray-job"),
        state=state if state in STATES else "PENDING",
        submitted_at=start,
        started_at=start or None,
        ended_at=end,
        result=result,
        error=error,
        address=address,
        label=meta.get("ldp_label", details.entrypoint[:40] if details.entrypoint else ""),
        extra={"entrypoint": details.entrypoint, "message": details.message},
    )


def _remote_call(address: str, what: str, fn):
    try:
        return fn()
    except RuntimeError as exc:  # the SDK raises RuntimeError for 404 and other HTTP errors
        text = str(exc)
        if "does not exist" in text or "404" in text:
            raise NotFoundError(f"no job {what} on the cluster at {address}") from exc
        raise LdpError(f"Jobs API at {address}: {text.strip().splitlines()[0]}") from exc


def remote_get(address: str, job_id: str) -> JobRecord:
    client = remote_client(address)
    details = _remote_call(address, job_id, lambda: client.get_job_info(job_id))
    state = str(getattr(details.status, "value", details.status))
    logs = None
    if state in TERMINAL_STATES:
        logs = _remote_call(address, job_id, lambda: client.get_job_logs(job_id))
    return _record_from_details(details, address, logs)


def remote_list(address: str) -> list[JobRecord]:
    client = remote_client(address)
    jobs = _remote_call(address, "list", client.list_jobs)
    records = [_record_from_details(d, address, None) for d in jobs if d.submission_id]
    return sorted(records, key=lambda r: r.submitted_at, reverse=True)


def remote_logs(address: str, job_id: str) -> str:
    client = remote_client(address)
    return _remote_call(address, job_id, lambda: client.get_job_logs(job_id))


def remote_follow(address: str, job_id: str):
    """Yield the job's log in chunks until it ends (``tail_job_logs``)."""
    import asyncio

    client = remote_client(address)
    _remote_call(address, job_id, lambda: client.get_job_info(job_id))
    agen = client.tail_job_logs(job_id)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                chunk = loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()

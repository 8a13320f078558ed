"""Start a job where it should run, and run one from its record (``ldp _run-job``).

:func:`launch` is what ``ldp submit`` calls once it has a resolved spec:

=====================  =========  ============================================================
address                wait       what happens
=====================  =========  ============================================================
none / ``local``       yes        runs here, in this process: the job kind connects an
                                  embedded Ray (:func:`ldp.cluster.connect`); output is also
                                  written to the record's ``job.log``
none / ``local``       no         ``python -m ldp _run-job <id>`` detached (own session),
                                  stdout/stderr into ``job.log``; the record holds its pid
``host:port``,         yes / no   as above, with ``RAY_ADDRESS`` set so the job's driver
``ray://``, ``auto``              attaches to that cluster
``http(s)://``         yes / no   Jobs API: entrypoint ``ldp _run-job <id> --spec-json '...'``
                                  with ``submission_id=<id>`` and the workers' runtime env;
                                  inside the cluster it attaches with a plain ``ray.init()``;
                                  ``--wait`` follows its log
=====================  =========  ============================================================

:func:`run_job` is the body of ``ldp _run-job``: it moves the record to RUNNING, runs
:func:`ldp.jobs.execute.execute`, records SUCCEEDED with the result (and prints it as an
``LDP_RESULT`` line, which is how a remote caller gets it), or FAILED/STOPPED with one error line.

The embedded cluster lives as long as one job: two ``--no-wait`` jobs start two embedded Rays
that share the machine's CPUs. To queue jobs, start a head once (``ldp cluster up``) and submit
with ``--address``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ldp.errors import LdpError, UsageError, first_line
from ldp.jobs import records
from ldp.jobs.execute import execute

__all__ = ["launch", "relaunch", "run_job"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def launch(
    spec: dict[str, Any],
    *,
    job_id: str | None = None,
    wait: bool,
    address: str | None = None,
) -> str:
    """Start the job ``spec`` describes (see the module docstring); returns its id.

    With ``wait`` it returns once the job SUCCEEDED and raises :class:`LdpError` (the job's
    error line) if it FAILED or was STOPPED.
    """
    from ldp.cluster import resolve_address

    if not isinstance(spec, dict):
        raise UsageError("a job spec is a mapping")
    json.dumps(spec)  # must travel as JSON (records, --spec-json)
    kind, addr = resolve_address(address)
    if kind == "jobs":
        return _submit_remote(spec, job_id, addr, wait)
    ray_address = None if kind == "local" else addr
    record = records.create_job(spec, job_id=job_id)
    if wait:
        run_job(record.job_id, address=ray_address)
    else:
        _spawn_detached(record.job_id, ray_address)
    return record.job_id


def relaunch(job_id: str, *, wait: bool, address: str | None = None) -> str:
    """Run a FAILED or STOPPED local job again under the same id (``ldp submit --resume``).

    The job's spec is read from its record and checked again; the record goes back to PENDING
    (its ``extra["attempts"]`` counts the runs). Training resumes from the last checkpoint because
    Ray Train finds the run folder ``<storage>/<job id>`` again (the job id is the run's name)."""
    from ldp.cluster import resolve_address
    from ldp.jobs.spec import validate_spec

    record = records.get_job(job_id)  # also turns a job whose process died into FAILED
    if record.address is not None:
        raise UsageError(f"job {job_id} ran on {record.address}; resume it there (ldp submit --resume runs local records)")
    if record.state == "SUCCEEDED":
        raise UsageError(f"job {job_id} SUCCEEDED; nothing to resume")
    if record.state not in ("FAILED", "STOPPED"):
        raise UsageError(f"job {job_id} is {record.state}; only a FAILED or STOPPED job can be resumed")
    spec = records.read_spec(job_id)
    validate_spec(spec, address=address)
    kind, addr = resolve_address(address)
    if kind == "jobs":
        raise UsageError("--resume runs the job's driver here: give a Ray address (host:port), not the Jobs API")
    records.reopen_job(job_id)
    ray_address = None if kind == "local" else addr
    if wait:
        run_job(job_id, address=ray_address)
    else:
        _spawn_detached(job_id, ray_address)
    return job_id


# -- running a job from its record --------------------------------------------------------------
def run_job(
    job_id: str, *, spec: dict[str, Any] | None = None, address: str | None = None
) -> dict[str, Any]:
    """Run job ``job_id`` here (the body of ``ldp _run-job``) and return its result.

    ``spec`` is given when the record does not exist on this machine yet (a Jobs API
    entrypoint on a remote cluster): the record is created from it. ``address`` is a Ray
    address for the job's driver (default: ``RAY_ADDRESS``, else an embedded Ray).
    """
    import psutil

    try:
        record = records.get_job(job_id)
    except records.NotFoundError:
        if spec is None:
            raise
        record = records.create_job(spec, job_id=job_id)
    if record.state != "PENDING":
        raise LdpError(f"job {job_id} is {record.state}, not PENDING; it runs only once")
    spec = records.read_spec(job_id)
    me = psutil.Process()
    # The Ray cluster the driver attaches to: when it vanishes with the driver, `ldp status`
    # can say so (records.interruption_line). An embedded Ray lives and dies with this process.
    ray_address = address or os.environ.get("RAY_ADDRESS") or None
    records.update_job(
        job_id,
        state="RUNNING",
        started_at=time.time(),
        pid=me.pid,
        pid_started=me.create_time(),
        extra={**record.extra, "ray_address": ray_address},
    )
    with _tee_to(records.log_path(job_id)):
        print(f"[ldp] job {job_id} ({record.kind}) started on {socket.gethostname()}", flush=True)
        try:
            with _ray_address(address), _jobs_api_driver():
                result = execute(spec, job_id)
        except KeyboardInterrupt:
            records.update_job(job_id, state="STOPPED", ended_at=time.time(), error="interrupted")
            raise
        except BaseException as exc:
            line = _error_line(exc)
            records.update_job(job_id, state="FAILED", ended_at=time.time(), error=line)
            print(f"[ldp] job {job_id} FAILED: {line}", flush=True)
            if isinstance(exc, LdpError):
                raise
            raise LdpError(line) from exc
        records.update_job(job_id, state="SUCCEEDED", ended_at=time.time(), result=result)
        print(f"[ldp] job {job_id} SUCCEEDED", flush=True)
        print(records.RESULT_PREFIX + json.dumps(result, separators=(",", ":")), flush=True)
    return result


def _error_line(exc: BaseException) -> str:
    return first_line(exc, with_type=True)


@contextlib.contextmanager
def _ray_address(address: str | None):
    """Point :func:`ldp.cluster.connect` (no address = ``RAY_ADDRESS``) at ``address``."""
    if address is None:
        yield
        return
    old = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = address
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = old


@contextlib.contextmanager
def _jobs_api_driver():
    """Inside a Jobs API entrypoint, attach to the cluster with a plain ``ray.init()``.

    The submission already carries the runtime env (workers' env vars); Ray refuses a second
    ``runtime_env`` from ``ray.init`` in the same job ("failed to merge ... because of a
    conflict"), which :func:`ldp.cluster.connect` would pass. Connected here first, the job
    kinds' ``connect()`` reuses this connection."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        yield
        return
    import ray

    owned = not ray.is_initialized()
    if owned:
        ray.init()  # RAY_ADDRESS and the job's runtime env come from the Jobs API
    try:
        yield
    finally:
        if owned and ray.is_initialized():
            ray.shutdown()


class _Tee:
    """A text stream writing to the original stream and (without colour codes) to a log file."""

    def __init__(self, stream: Any, log: Any) -> None:
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._log.write(_ANSI.sub("", text))
        self._log.flush()
        return self._stream.write(text)

    def flush(self) -> None:
        self._log.flush()
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _tee_to(path: Path):
    """Copy this process's Python-level stdout/stderr (Ray forwards worker output there) into
    ``path`` — unless stdout already is that file (a detached ``_run-job``)."""
    try:
        already = os.path.samestat(os.fstat(sys.stdout.fileno()), os.stat(path))
    except (OSError, ValueError, AttributeError):
        already = False
    if already:
        yield
        return
    with open(path, "a", encoding="utf-8", errors="replace") as log:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(old_out, log), _Tee(old_err, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = old_out, old_err


def _spawn_detached(job_id: str, address: str | None) -> None:
    """``python -m ldp _run-job <id>`` in its own session, output into the job's log."""
    env = dict(os.environ, RAY_COLOR_PREFIX="0", PYTHONUNBUFFERED="1")
    if address is not None:
        env["RAY_ADDRESS"] = address
    log = open(records.log_path(job_id), "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ldp", "_run-job", job_id],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        log.close()
    import psutil

    try:
        started = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        started = None
    # The child records RUNNING with this same pid; recording it here too lets `ldp status`
    # notice a child that died before it got that far (update_job is locked: no lost update).
    records.update_job(job_id, pid=proc.pid, pid_started=started)


# -- remote clusters (Jobs API) -----------------------------------------------------------------
def _submit_remote(spec: dict[str, Any], job_id: str | None, address: str, wait: bool) -> str:
    from ldp.cluster import connect

    handle = connect(address)  # a JobSubmissionClient plus the workers' runtime env
    record = records.create_job(spec, job_id=job_id, address=address)
    job_id = record.job_id
    payload = json.dumps(spec, separators=(",", ":"), sort_keys=True)
    entrypoint = f"ldp _run-job {job_id} --spec-json {shlex.quote(payload)}"
    try:
        _submit_when_an_agent_is_up(
            handle.job_client,
            entrypoint=entrypoint,
            submission_id=job_id,
            runtime_env=handle.runtime_env,
            metadata={"ldp_job_id": job_id, "ldp_kind": record.kind, "ldp_label": record.label},
        )
    except Exception as exc:
        line = first_line(exc)
        records.update_job(job_id, state="FAILED", ended_at=time.time(), error=line)
        raise LdpError(f"could not submit job {job_id} to {address}: {line}") from exc
    print(f"[ldp] submitted {job_id} to {address}", file=sys.stderr, flush=True)
    if not wait:
        return job_id
    for chunk in records.remote_follow(address, job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    final = wait_remote(address, job_id)
    if final.state != "SUCCEEDED":
        raise LdpError(f"job {job_id} {final.state}: {final.error or 'see ldp logs'}")
    return job_id


_NO_AGENT = "No available agent to submit job"
"""What the Jobs API answers (HTTP 500) while no node's job agent has registered yet: a head
that has just started (``ldp cluster up``, a new KubeRay cluster) serves the API before it."""


def _submit_when_an_agent_is_up(client: Any, *, patience_s: float = 60.0, **job: Any) -> None:
    """``client.submit_job(**job)``, retried while the cluster says it has no job agent yet.

    Ray asks to "try again later"; any other error, or no agent after ``patience_s``, is raised.
    Retrying cannot start the job twice: a submission that reached an agent either succeeded or
    failed with another error, and the submission id is fixed."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            client.submit_job(**job)
            return
        except Exception as exc:
            if _NO_AGENT not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(2.0)


def wait_remote(address: str, job_id: str, timeout_s: float = 60.0) -> records.JobRecord:
    """Poll until the remote job is in a final state; mirror it into the local record."""
    deadline = time.monotonic() + timeout_s
    while True:
        rec = records.remote_get(address, job_id)
        if rec.finished or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    mirror_remote(rec)
    return rec


def mirror_remote(rec: records.JobRecord) -> None:
    """Copy a remote job's state into its local record, if this machine submitted it."""
    try:
        records.update_job(
            rec.job_id,
            state=rec.state,
            started_at=rec.started_at,
            ended_at=rec.ended_at,
            result=rec.result,
            error=rec.error,
        )
    except records.NotFoundError:
        pass

"""Reaching Ray: an embedded local cluster by default, ``--address`` / ``RAY_ADDRESS`` otherwise.

================================  ============================================================
address                           what :func:`connect` does
================================  ============================================================
none, ``local``                   starts an embedded Ray in this process (``address="local"``,
                                  all of this machine's CPUs, with the dashboard, which Tune +
                                  Train need); :meth:`ClusterHandle.shutdown` stops it
``auto``                          attaches to the Ray already running on this machine
``host:port``, ``ray://host:p``   attaches a driver to that cluster (GCS or Ray Client);
                                  ``shutdown`` disconnects and leaves the cluster running
``http://host:8265``              no driver: a Jobs API handle (``JobSubmissionClient``) for
                                  submitting the job into the cluster, where it connects itself
================================  ============================================================

Workers (and Jobs API submissions, via :attr:`ClusterHandle.runtime_env`) get
``RAY_TRAIN_ENABLE_STATE_TRACKING=1`` (the dashboard's Train tab) and ``TORCH_EXTENSIONS_DIR``
under LDP's cache, where DeepSpeed JIT-builds its CPU communication op once. For a remote
cluster this machine's cache path means nothing to its nodes, so ``TORCH_EXTENSIONS_DIR`` is
passed only when set explicitly (``TORCH_EXTENSIONS_DIR`` or ``LDP_CACHE``).

An embedded cluster's workers also get ``RAY_API_SERVER_ADDRESS`` (its own dashboard), so that
Ray's internal state-API lookups find this cluster and not another Ray on the same machine.

Token auth: a head started by ``ldp cluster up`` with token auth is recognised by its address,
and ``RAY_AUTH_MODE=token`` is set for this process so the driver and the Jobs client send the
token from ``~/.ray/auth_token``. For other clusters set ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN``
yourself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

from ldp.cluster.ports import preferred_port
from ldp.errors import LdpError, UsageError, first_line
from ldp.paths import cache_dir

__all__ = ["ClusterHandle", "connect", "local_head_at", "resolve_address", "worker_env"]

Kind = Literal["local", "ray", "jobs"]


@dataclass
class ClusterHandle:
    """A connection to a Ray cluster, as made by :func:`connect`."""

    kind: Kind
    """``local``: embedded Ray started here; ``ray``: driver attached to a running cluster;
    ``jobs``: Jobs API client only (no driver in this process)."""
    address: str
    """GCS address (``local``/``ray``), Ray Client URL, or the Jobs API URL."""
    dashboard_url: str | None
    runtime_env: dict[str, Any] = field(default_factory=dict)
    """What workers get; pass it as ``submit_job(runtime_env=...)`` for Jobs API submissions."""
    job_client: Any = None
    """``ray.job_submission.JobSubmissionClient`` for ``jobs`` handles, else None."""
    owns_driver: bool = False
    """This handle called ``ray.init``; :meth:`shutdown` calls ``ray.shutdown``."""

    @property
    def uses_jobs_api(self) -> bool:
        return self.kind == "jobs"

    @property
    def started_cluster(self) -> bool:
        """True when shutting this handle down stops a Ray cluster (the embedded one)."""
        return self.kind == "local" and self.owns_driver

    def resources(self):
        """The cluster's :class:`~ldp.cluster.resources.ClusterResources` (driver handles)."""
        if self.uses_jobs_api:
            raise LdpError(
                "a Jobs API handle (http:// address) has no driver to read resources; the "
                "submitted job checks them inside the cluster"
            )
        from ldp.cluster.resources import cluster_resources

        return cluster_resources()

    def shutdown(self) -> None:
        """Stop what :func:`connect` started: the embedded Ray, or this driver's connection.

        A cluster this handle attached to keeps running; calling twice is harmless."""
        if self.owns_driver:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            self.owns_driver = False

    def __enter__(self) -> ClusterHandle:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def resolve_address(address: str | None = None) -> tuple[Kind, str]:
    """``(kind, address)`` for ``address`` or ``RAY_ADDRESS``; raises :class:`UsageError`."""
    raw = (address if address is not None else os.environ.get("RAY_ADDRESS", "")).strip()
    if raw == "":
        head = _cluster_up_head()
        if head is not None:  # a head started by `ldp cluster up`: jobs use it, no address needed
            return "ray", head
        return "local", "local"
    if raw == "local":
        return "local", "local"
    if raw == "auto":
        return "ray", "auto"
    scheme = urlparse(raw).scheme.lower() if "://" in raw else ""
    if scheme in ("http", "https"):
        return "jobs", raw.rstrip("/")
    if scheme == "ray":
        return "ray", raw
    if scheme:
        raise UsageError(
            f"unsupported Ray address {raw!r}: use host:port, ray://host:port, http://host:port "
            "(Jobs API) or nothing for an embedded local Ray"
        )
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(
            f"Ray address {raw!r} is not host:port (e.g. 127.0.0.1:6380), ray://host:port or "
            "http://host:8265"
        )
    return "ray", raw


def _cluster_up_head() -> str | None:
    """The address of the local head ``ldp cluster up`` started (and that still runs), or None."""
    from ldp.cluster.local import running_head

    try:
        head = running_head()
    except LdpError:
        return None
    return head.address if head is not None else None


def worker_env(*, local: bool = True) -> dict[str, str]:
    """Environment variables every Ray worker of an LDP job gets (see the module docstring)."""
    env = {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        env["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
    elif local or os.environ.get("LDP_CACHE"):
        env["TORCH_EXTENSIONS_DIR"] = str(cache_dir("torch_extensions"))
    return env


def local_head_at(kind: Kind, address: str):
    """The :class:`~ldp.cluster.local.HeadInfo` of the running ``ldp cluster up`` head when
    ``(kind, address)`` (as :func:`resolve_address` returns them) points at it, else None."""
    from ldp.cluster.local import running_head

    if kind == "local":
        return None
    head = running_head()
    if head is None:
        return None
    if address == "auto":
        return head
    url = urlparse(address if "://" in address else f"tcp://{address}")
    hosts = {"127.0.0.1", "localhost", head.host}
    ports = {"jobs": {head.dashboard_port}, "ray": {head.port, head.client_port}}.get(kind, set())
    return head if url.hostname in hosts and url.port in ports else None


def _is_local_head(kind: Kind, address: str) -> bool:
    """Is ``address`` the head recorded by ``ldp cluster up``? Sets token auth for it."""
    from ldp.cluster.local import use_token_auth

    head = local_head_at(kind, address)
    if head is None:
        return False
    if head.auth == "token":
        use_token_auth()
    return True


def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    *,
    include_dashboard: bool = True,
    env_vars: dict[str, str] | None = None,
) -> ClusterHandle:
    """Reach Ray as the module docstring describes and return a :class:`ClusterHandle`.

    ``num_cpus`` only applies to the embedded cluster (default: this machine's CPUs).
    ``env_vars`` are added to the workers' environment. If Ray is already initialised in this
    process the existing connection is reused and left alone by ``shutdown``.
    """
    kind, addr = resolve_address(address)
    if kind != "local" and num_cpus is not None:
        raise UsageError("--num-cpus applies to the embedded local Ray only, not to --address")
    local_head = kind != "local" and _is_local_head(kind, addr)
    env = worker_env(local=kind == "local" or local_head)
    env.update(env_vars or {})
    runtime_env = {"env_vars": env}

    if kind == "jobs":
        from ray.job_submission import JobSubmissionClient

        try:
            client = JobSubmissionClient(addr)
        except Exception as exc:  # ConnectionError, auth errors, bad URL
            raise LdpError(f"cannot reach the Ray Jobs API at {addr}: {first_line(exc)}") from exc
        return ClusterHandle("jobs", addr, addr, runtime_env, job_client=client)

    import ray

    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return ClusterHandle(
            kind, ctx.gcs_address, _dashboard_url(None), runtime_env, owns_driver=False
        )

    if kind == "local":
        cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
        if cpus < 1:
            raise UsageError(f"--num-cpus must be >= 1, got {cpus}")
        # Starting can time out on a loaded machine ("Failed to start the dashboard"; "The
        # current node timed out during startup", both seen in CI runs on 2 busy cores): one
        # more try, on a port chosen again, before giving up.
        for attempt in (1, 2):
            dashboard: dict[str, Any] = {}
            if include_dashboard:
                # Ray Train's helper actors (the placement-group cleaner, the state actor) look
                # their cluster up through the state API with no address; with a second Ray on the
                # machine that lookup fails ("Found multiple active Ray instances"), the cleaner
                # thread dies and a stopped trial's placement group is never freed (a sweep then
                # waits forever for CPUs). Pinning the dashboard port lets every worker be told
                # its own API server.
                from ray._private.ray_constants import DEFAULT_DASHBOARD_PORT

                port = preferred_port(DEFAULT_DASHBOARD_PORT)
                dashboard = {"dashboard_port": port}
                runtime_env = {"env_vars": {**env, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}}
            try:
                info = ray.init(
                    address="local",
                    num_cpus=cpus,
                    include_dashboard=include_dashboard,
                    runtime_env=runtime_env,
                    **dashboard,
                )
                break
            except Exception as exc:
                ray.shutdown()
                if attempt == 2 or not _transient_start_failure(exc):
                    raise LdpError(f"could not start a local Ray: {first_line(exc)}") from exc
        gcs = info.address_info.get("gcs_address") or ray.get_runtime_context().gcs_address
        return ClusterHandle("local", gcs, _dashboard_url(info), runtime_env, owns_driver=True)

    # Inside a Jobs API job the job's own runtime env applies; passing another makes Ray refuse
    # to merge them ("Failed to merge the Job's runtime env"), so only the env vars are set here.
    in_job = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
    if in_job:
        for key, value in runtime_env.get("env_vars", {}).items():
            os.environ.setdefault(key, value)
    try:
        info = ray.init(address=addr, runtime_env=None if in_job else runtime_env)
    except Exception as exc:
        raise LdpError(f"cannot reach Ray at {addr}: {first_line(exc)}") from exc
    return ClusterHandle("ray", addr, _dashboard_url(info), runtime_env, owns_driver=True)


def _transient_start_failure(exc: BaseException) -> bool:
    """A local Ray start that failed because the machine was busy, not because of its settings."""
    text = str(exc).lower()
    return "dashboard" in text or "timed out during startup" in text


def _dashboard_url(info: Any) -> str | None:
    url = getattr(info, "dashboard_url", None) if info is not None else None
    if not url:
        return None
    return url if "://" in url else f"http://{url}"

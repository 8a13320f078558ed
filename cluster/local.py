"""A long-lived local Ray head for ``ldp cluster up|down|status``.

``up`` runs ``ray start --head --block`` as a child in its own session (process group) and
records it in ``$LDP_HOME/cluster/head.json``; ``down`` stops exactly that process (SIGTERM to
it, which stops its Ray processes; SIGKILL to what lingers of its session: the process group,
and the workers, which Ray puts in process groups of their own within the same session). It never runs
``ray stop``, which kills every Ray process of the user on the machine, other jobs' included.
``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0`` makes the head stop in seconds instead of draining
for 30 s.

Auth: token auth is on by default (``--auth token``, or ``RAY_AUTH_MODE`` from the environment):
a token is generated once into ``~/.ray/auth_token`` (``ray get-auth-token --generate``); drivers
and the Jobs client need ``RAY_AUTH_MODE=token`` (:func:`ldp.cluster.connect` sets it for this
head), the dashboard asks for the token once in the browser, HTTP clients send
``Authorization: Bearer <token>``. ``--auth disabled`` (or ``RAY_AUTH_MODE=disabled``) opts out.
The dashboard and Jobs API listen on 127.0.0.1 only; the GCS port on the node's address, so other
machines can join with ``ray start --address=<address>``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ldp.cluster.ports import port_free, preferred_port
from ldp.errors import LdpError, UsageError, first_line
from ldp.paths import ldp_home

__all__ = [
    "HeadInfo",
    "auth_token_path",
    "head_status",
    "ray_temp_dir",
    "running_head",
    "start_head",
    "state_path",
    "stop_head",
    "use_token_auth",
]

_AUTH_MODES = ("token", "disabled")


@dataclass
class HeadInfo:
    """A head started by :func:`start_head` (the contents of the state file)."""

    pid: int
    """The ``ray start --block`` process; also its process-group id."""
    create_time: float
    """Its start time (psutil), so a recycled pid is never mistaken for it."""
    host: str
    port: int
    dashboard_port: int
    client_port: int
    num_cpus: int
    auth: str
    temp_dir: str
    log_path: str
    started_at: float

    @property
    def address(self) -> str:
        """GCS address: ``--address`` / ``RAY_ADDRESS`` for drivers, ``ray start --address`` for
        nodes joining."""
        return f"{self.host}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """Dashboard and Jobs API (``--address http://...`` submits through the Jobs API)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def client_address(self) -> str:
        return f"ray://{self.host}:{self.client_port}"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            address=self.address,
            dashboard_url=self.dashboard_url,
            client_address=self.client_address,
        )
        return out


def state_path() -> Path:
    return ldp_home() / "cluster" / "head.json"


def ray_temp_dir() -> Path:
    """Ray's temp folder as ``ray start`` picks it (``RAY_TMPDIR``, ``TMPDIR``, /tmp) + ``ray``."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / "ray"


def auth_token_path() -> str:
    """Where Ray reads the token: ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")


def use_token_auth() -> None:
    """Make this process's Ray clients send the token (unless ``RAY_AUTH_MODE`` is set already).

    Ray reads ``RAY_AUTH_MODE`` into a cached config and caches the token on first use, so
    besides the variable both caches are refreshed, as Ray itself does when ``ray.init()``
    turns token auth on. Skipped while a driver is connected (the connection keeps its mode).
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # pragma: no cover - the variable alone then
        return
    if not ray.is_initialized():
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def _process(head: HeadInfo):
    """The live psutil.Process of ``head`` or None (gone, or the pid was reused)."""
    import psutil

    try:
        proc = psutil.Process(head.pid)
        if abs(proc.create_time() - head.create_time) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def _read_state() -> HeadInfo | None:
    path = state_path()
    if not path.is_file():
        return None
    try:
        return HeadInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise LdpError(f"unreadable cluster state {path}: {exc}; delete it") from exc


def running_head() -> HeadInfo | None:
    """The head recorded by ``ldp cluster up`` if it is still running (a stale record is removed)."""
    head = _read_state()
    if head is None:
        return None
    if _process(head) is None:
        state_path().unlink(missing_ok=True)
        return None
    return head


def _agent_port() -> int:
    """Ray's default port for a node's dashboard agent (HTTP; it serves the Jobs API's
    submissions), or a free one when another Ray on this machine holds it (an
    embedded job's cluster, say): a head whose agent cannot bind serves the Jobs API but answers
    every submission with "No available agent"."""
    from ray._private.ray_constants import DEFAULT_DASHBOARD_AGENT_LISTEN_PORT as default

    return preferred_port(default)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, n: int = 5) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(ln.strip() for ln in lines[-n:])


def _ray_cli() -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts"]


def start_head(
    num_cpus: int | None = None,
    port: int = 6380,
    dashboard_port: int = 8265,
    client_port: int = 10001,
    *,
    auth: str | None = None,
    timeout: float = 180.0,
) -> HeadInfo:
    """Start a local head (``ray start --head --block`` in the background) and wait until its
    GCS and dashboard answer. Raises :class:`LdpError` if one is already running, a port is
    taken, or Ray fails to start (with the end of its log)."""
    auth = (auth or os.environ.get("RAY_AUTH_MODE") or "token").lower()
    if auth not in _AUTH_MODES:
        raise UsageError(f"unknown auth mode {auth!r}; choose token or disabled")
    cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
    if cpus < 1:
        raise UsageError(f"--num-cpus must be >= 1, got {cpus}")
    ports = {"--port": port, "--dashboard-port": dashboard_port, "--client-port": client_port}
    for flag, p in ports.items():
        if not 1 <= p <= 65535:
            raise UsageError(f"{flag} must be a TCP port, got {p}")
    if len(set(ports.values())) != len(ports):
        raise UsageError("--port, --dashboard-port and --client-port must differ")

    existing = running_head()
    if existing is not None:
        raise LdpError(
            f"a Ray head is already running (pid {existing.pid}, address {existing.address}); "
            "stop it with `ldp cluster down` first"
        )
    for flag, p in ports.items():
        if not port_free(p):
            raise LdpError(f"port {p} ({flag}) is in use; pick another with {flag}")

    env = dict(os.environ)
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    env["RAY_AUTH_MODE"] = auth
    if auth == "token":
        gen = subprocess.run(
            [*_ray_cli(), "get-auth-token", "--generate"],
            env=env,
            capture_output=True,  # stdout is the token itself: never echo it
            check=False,
            text=True,
            timeout=120,
        )
        if gen.returncode != 0:
            raise LdpError(f"could not create a Ray auth token: {gen.stderr.strip()[-300:]}")
        token = Path(auth_token_path())
        if token.is_file() and token.stat().st_uid == os.getuid():
            token.chmod(0o600)  # Ray writes it world-readable; it grants running code here

    folder = state_path().parent
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "head.log"
    temp_dir = ray_temp_dir()
    cmd = [
        *_ray_cli(),
        "start",
        "--head",
        "--block",
        f"--num-cpus={cpus}",
        f"--port={port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={client_port}",
        f"--dashboard-agent-listen-port={_agent_port()}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    args = (cmd, env, log_path, port, dashboard_port, client_port, cpus, auth, temp_dir, timeout)
    try:
        return _launch_head(*args)
    except LdpError as exc:
        # `ray start` can give up on a busy machine ("The current node timed out during
        # startup", seen on 2 loaded cores): one more try before reporting it.
        if "timed out during startup" not in str(exc):
            raise
    return _launch_head(*args)


def _launch_head(
    cmd: list[str], env: dict[str, str], log_path: Path, port: int, dashboard_port: int,
    client_port: int, cpus: int, auth: str, temp_dir: Path, timeout: float,
) -> HeadInfo:
    """Run ``ray start`` once, record it in the state file and wait until it answers."""
    import psutil

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: down stops exactly this
        )
    head = HeadInfo(
        pid=proc.pid,
        create_time=psutil.Process(proc.pid).create_time(),
        host=_node_ip(),
        port=port,
        dashboard_port=dashboard_port,
        client_port=client_port,
        num_cpus=cpus,
        auth=auth,
        temp_dir=str(temp_dir),
        log_path=str(log_path),
        started_at=time.time(),
    )
    state_path().write_text(json.dumps(asdict(head), indent=2))

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            _stop(head)  # what it started before giving up (a GCS may still hold the port)
            state_path().unlink(missing_ok=True)
            raise LdpError(f"ray start exited with code {code}: {_tail(log_path)}")
        text = log_path.read_text(errors="replace")
        if (
            "Ray runtime started" in text
            and _port_open(dashboard_port)
            and _port_open(port, head.host)
        ):
            return head
        time.sleep(0.5)
    _stop(head)
    raise LdpError(f"Ray head did not come up within {timeout:.0f}s: {_tail(log_path)}")


def _node_ip() -> str:
    import ray.util

    try:
        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - any failure: fall back to loopback
        return "127.0.0.1"


def _stop(head: HeadInfo, timeout: float = 30.0) -> None:
    """SIGTERM the head process, wait for its process group to go, SIGKILL what lingers."""
    import psutil

    proc = _process(head)
    if proc is not None:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass

    def group_alive() -> bool:
        return any(_in_group(p, head.pid) for p in psutil.process_iter(["pid"]))

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and group_alive():
        if proc is not None:
            try:
                proc.wait(timeout=0)  # reap it if it is our child (same process as up)
            except (psutil.TimeoutExpired, psutil.Error):
                pass
        time.sleep(0.25)
    if group_alive():
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in psutil.process_iter(["pid"]):  # workers sit in process groups of their own
            if _in_group(p, head.pid):
                try:
                    p.kill()
                except psutil.Error:
                    pass
    # Ray leaves its address file behind; a stale one breaks later ray.init() calls.
    address_file = Path(head.temp_dir) / "ray_current_cluster"
    try:
        if address_file.read_text().strip() in (head.address, f"127.0.0.1:{head.port}"):
            address_file.unlink()
    except OSError:
        pass


def _in_group(p: Any, pgid: int) -> bool:
    """Is ``p`` a live process of the head started as session (and group) leader ``pgid``?

    Ray puts each worker in a process group of its own, but they all stay in the head's session,
    so both are checked."""
    try:
        ours = os.getpgid(p.pid) == pgid or os.getsid(p.pid) == pgid
        return ours and p.pid != os.getpid() and p.status() != "zombie"
    except Exception:  # noqa: BLE001 - gone meanwhile (OSError, psutil.Error)
        return False


def stop_head(timeout: float = 30.0) -> HeadInfo | None:
    """Stop the head started by ``ldp cluster up``; returns it, or None if none was running."""
    head = _read_state()
    if head is None:
        return None
    alive = _process(head) is not None
    _stop(head, timeout)
    state_path().unlink(missing_ok=True)
    return head if alive else None


def head_status(address: str | None = None) -> dict[str, Any]:
    """What ``ldp cluster status`` prints: the recorded head (if any) and the resources of the
    cluster at ``address`` (default: that head), read through a short-lived driver."""
    head = running_head()
    out: dict[str, Any] = {
        "running": head is not None,
        "head": head.as_dict() if head else None,
        "address": address or (head.address if head else None),
        "reachable": False,
        "resources": None,
    }
    if out["address"] is None:
        return out
    if head is not None and head.auth == "token":
        use_token_auth()
    import ray
    from ldp.cluster.resources import cluster_resources

    if ray.is_initialized():
        raise LdpError("Ray is already initialised in this process; cannot query another cluster")
    try:
        ray.init(address=out["address"], log_to_driver=False, logging_level="ERROR")
    except Exception as exc:  # noqa: BLE001 - reported as unreachable, with the reason
        out["error"] = first_line(exc)
        return out
    try:
        out["resources"] = cluster_resources().as_dict()
        out["reachable"] = True
    finally:
        ray.shutdown()
    return out

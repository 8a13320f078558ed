"""Store fixtures: every registry test runs against ``file://`` and against ``s3://`` on moto.

``s3_server`` does not depend on anything in this folder, so it can move to ``tests/conftest.py``
as is when other packages need S3: a session-scoped moto standalone server on loopback, dummy
credentials in the environment, the endpoint URL as its value.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
import threading
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

_DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance-metadata endpoint
}


class _AtomicWrites:
    """WSGI middleware: one mutating request at a time.

    moto evaluates ``If-None-Match`` / ``If-Match`` and then stores the object without a lock,
    so two threads of its server can both pass the check. S3 evaluates conditional writes
    atomically; serialising writes gives the emulator that guarantee (reads stay concurrent).
    """

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            return self.app(environ, start_response)
        with self.lock:
            return list(self.app(environ, start_response))


@pytest.fixture(scope="session")
def s3_server():
    """Endpoint URL (``http://127.0.0.1:<port>``) of a moto S3 server for this test session."""
    moto_server = pytest.importorskip("moto.server")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _DUMMY_AWS.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(key, raising=False)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        inner = getattr(server, "_server", None)
        if inner is not None:  # see _AtomicWrites
            inner.app = _AtomicWrites(inner.app)
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(autouse=True)
def _fresh_s3fs():
    yield
    if "s3fs" in sys.modules:
        sys.modules["s3fs"].S3FileSystem.clear_instance_cache()


@pytest.fixture(params=["file", "s3"])
def backend_kind(request) -> str:
    return request.param


@pytest.fixture
def registry_url(backend_kind, tmp_path, monkeypatch, request) -> str:
    """A fresh, empty registry: a tmp folder, or a new bucket on the moto server."""
    if backend_kind == "file":
        return (tmp_path / "registry").as_uri()
    endpoint = request.getfixturevalue("s3_server")
    monkeypatch.setenv("LDP_S3_ENDPOINT_URL", endpoint)
    import s3fs

    bucket = f"ldp-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir(bucket)
    return f"s3://{bucket}/registry"


@pytest.fixture
def storage_options(registry_url, backend_kind, request) -> dict | None:
    """Explicit options for code that does not see our environment (spawned workers)."""
    if backend_kind == "file":
        return None
    return {"client_kwargs": {"endpoint_url": request.getfixturevalue("s3_server")}}


@pytest.fixture
def registry(registry_url):
    from ldp.store import Registry

    return Registry(registry_url)


@pytest.fixture
def cli_opts(registry_url, backend_kind, request) -> list[str]:
    """``--registry`` (and ``--s3-endpoint``) for ``ldp registry ...`` calls."""
    opts = ["--registry", registry_url]
    if backend_kind == "s3":
        opts += ["--s3-endpoint", request.getfixturevalue("s3_server")]
    return opts


@pytest.fixture(scope="session")
def store_workers():
    """The helper module, importable by spawned children (its folder stays on sys.path)."""
    sys.path.insert(0, str(HERE))
    try:
        import store_workers

        yield store_workers
    finally:
        sys.path.remove(str(HERE))


@pytest.fixture(scope="session")
def spawn_pool(store_workers, s3_server):
    """Eight warm spawn workers, shared by the concurrency tests (they inherit the AWS env)."""
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=8,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=store_workers.warm,
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

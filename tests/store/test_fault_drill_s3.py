"""Fault drill: the S3 registry behind a loopback proxy that injects errors and latency.

The proxy sits between s3fs and the moto server and, per request and with a fixed seed, answers
503 without forwarding, drops the connection before forwarding, forwards and then drops the
connection (the request took effect but the client never hears so), or forwards and trickles the
answer slowly. Publishes and pulls run through it; afterwards a clean client (no proxy) checks:

- every publish that returned a reference resolves and verifies (no acknowledged data lost);
- every visible version verifies (a failed publish left nothing half-written visible);
- every failed operation raised one of LDP's errors, or an OSError, with a one-line message.

The drill prints its figure: operations tried, failures injected by type, data lost (must be 0).
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.s3]


class _FaultyProxy:
    """A threaded HTTP proxy to ``upstream`` that injects faults with probability ``rate``."""

    KINDS = ("503", "drop_before", "drop_after", "slow")

    def __init__(self, upstream: str, rate: float, seed: int = 0) -> None:
        self.upstream = urlparse(upstream)
        self.rate = rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.injected = {k: 0 for k in self.KINDS}
        self.enabled = True
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                fault = proxy.draw()
                if fault == "503":
                    payload = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "drop_before":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "transfer-encoding")}
                if "Transfer-Encoding" in self.headers:
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if fault == "drop_after":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # HEAD answers carry the object's length and no body
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if fault == "slow":
                    for i in range(0, len(data), max(1, len(data) // 4)):
                        self.wfile.write(data[i:i + max(1, len(data) // 4)])
                        self.wfile.flush()
                        time.sleep(0.02)
                else:
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def draw(self) -> str | None:
        with self.lock:
            self.requests += 1
            if not self.enabled or self.random.random() >= self.rate:
                return None
            kind = self.random.choice(self.KINDS)
            self.injected[kind] += 1
            return kind

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _adapter(folder, i: int):
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(f'{{"peft_type": "LORA_DIFFUSION", "i": {i}}}')
    save_file({"w": torch.full((64, 64), float(i))}, str(folder / "adapter_model.safetensors"))
    return folder


def test_registry_through_a_faulty_s3(s3_server, tmp_path, monkeypatch):
    import s3fs

    from ldp.errors import LdpError
    from ldp.store import Registry

    bucket = "drill-bucket"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}).mkdir(bucket)
    url = f"s3://{bucket}/registry"
    monkeypatch.setenv("LDP_CACHE", str(tmp_path / "cache"))
    publishes, pulls = 8, 8
    acknowledged, errors = [], []
    with _FaultyProxy(s3_server, rate=0.2, seed=7) as proxy:
        s3fs.S3FileSystem.clear_instance_cache()
        faulty = Registry(url, storage_options={"client_kwargs": {"endpoint_url": proxy.url},
                                                "config_kwargs": {"connect_timeout": 5, "read_timeout": 10}})
        for i in range(publishes):
            try:
                acknowledged.append(str(faulty.publish("adapters/sst2/lora-diffusion", _adapter(tmp_path / f"a{i}", i))))
            except (LdpError, OSError) as exc:
                errors.append(exc)
        pulled = 0
        for i in range(pulls):
            ref = acknowledged[i % len(acknowledged)] if acknowledged else "adapters/sst2/lora-diffusion@1"
            try:
                folder = faulty.pull(ref, to=tmp_path / f"pull{i}")
                assert (folder / "adapter_model.safetensors").is_file()
                pulled += 1
            except (LdpError, OSError) as exc:
                errors.append(exc)
        proxy.enabled = False
    s3fs.S3FileSystem.clear_instance_cache()
    clean = Registry(url, storage_options={"client_kwargs": {"endpoint_url": s3_server}})
    lost = 0
    for ref in acknowledged:
        try:
            clean.resolve(ref)
        except LdpError:
            lost += 1
    bad_visible = [r for r in clean.verify() if not r.ok]
    visible = len(clean.ls("adapters/sst2/lora-diffusion"))
    for exc in errors:
        text = str(exc).strip()
        assert text and "\n" not in text.strip() or isinstance(exc, OSError), repr(exc)
    injected = sum(proxy.injected.values())
    print(
        f"\nS3 fault drill: {proxy.requests} requests, {injected} faults injected {proxy.injected}; "
        f"{publishes} publishes ({len(acknowledged)} acknowledged, {visible} visible), "
        f"{pulls} pulls ({pulled} verified); {len(errors)} operations failed with one line; "
        f"data lost = {lost + len(bad_visible)}; errors seen: {sorted({str(e)[:120] for e in errors})}"
    )
    assert injected > 0
    assert lost == 0 and bad_visible == []
    assert len(acknowledged) >= publishes // 2  # retries with backoff carry most operations through
    assert pulled >= pulls // 2

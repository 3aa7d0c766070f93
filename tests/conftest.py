"""Shared fixtures: a store on local disk and on a real S3-compatible HTTP server (moto on 127.0.0.1)."""

from __future__ import annotations

import os
import uuid

import pytest

# Tests never reach a model hub, and in-process vLLM must not fork workers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # its INFO lines at exit hit closed streams


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server over HTTP on a free loopback port, with the AWS env pointed at it.

    It runs in a process of its own: moto's server is a Flask app, and Flask's context proxies in
    this process's modules break vLLM's kernel registration when an engine starts later.
    """
    import subprocess
    import sys

    from net import free_port, wait_until_healthy

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(endpoint, timeout=60, process=process)
    except AssertionError:
        process.kill()
        raise
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield endpoint
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def new_bucket(endpoint: str) -> str:
    import boto3

    name = f"bh-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def data_url(request, tmp_path):
    """A fresh, empty storage URL on each backend."""
    if request.param == "local":
        return str(tmp_path / "data")
    endpoint = request.getfixturevalue("s3_endpoint")
    return f"s3://{new_bucket(endpoint)}/data"


@pytest.fixture
def store(data_url):
    from repo_store import Store

    return Store(data_url)

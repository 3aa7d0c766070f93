"""Fixtures for the engine tests: the tiny model, one in-process vLLM engine, a vLLM server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from net import free_port, wait_until_healthy

# Before anything imports torch or vllm: no hub, in-process engine core, one OpenMP thread
# (vLLM's engine core in this process starts in 3-5 s instead of 20-35 s in its own, on 2 cores).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

SERVER_START_TIMEOUT = 120.0


@pytest.fixture(scope="session")
def tiny_model_dir():
    from flows.engines.tiny_model import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir):
    """One in-process VllmEngine on the tiny model for the whole module."""
    from flows.engines import open_engine

    engine = open_engine("tiny-random", max_model_len=2048, kv_cache_bytes=64 * 2**20)
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (right now)."""
    return free_port()


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir, tmp_path_factory):
    """vLLM's OpenAI-compatible server on the tiny model, in its own process group.

    Yields the base URL (".../v1"). Start-up is bounded by SERVER_START_TIMEOUT; the whole group
    is terminated (then killed) at teardown.
    """
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny_model_dir),
        "--served-model-name", "tiny-random",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--dtype", "float32",
        "--enforce-eager",
        "--max-model-len", "2048",
        "--kv-cache-memory-bytes", str(64 * 2**20),
        "--no-enable-chunked-prefill",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_healthy(f"{base}/health", timeout=SERVER_START_TIMEOUT, process=proc,
                           why=lambda: log_path.read_text(errors="replace")[-3000:])
        yield f"{base}/v1"
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, wait, then SIGKILL whatever is left of it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # e.g. the engine-core child, if still there
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)

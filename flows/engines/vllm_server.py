"""vLLM's own OpenAI-compatible server as a child process, with LoRA adapters loaded on demand.

    server = VllmServer.start(model_folder, served_name="tiny-random", adapters=True)
    server.ensure_adapter("ws/repo/bake/6", adapter_folder)   # loaded once; least recently used evicted
    httpx.post(f"{server.base_url}/chat/completions", json={"model": "ws/repo/bake/6", ...})
    server.stop()

One server serves one set of weights (a base model, or the merged parent of a sequential bake) and
any number of adapters trained on it, up to `max_adapters` loaded at once. The server runs in its
own process group, so stopping it stops its engine core too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import httpx

from flows.engines.base import EngineError
from flows.engines.device import cuda_available, server_arguments, vllm_settings

DEFAULT_MAX_LORA_RANK = 64  # one of vLLM's allowed ranks (1, 8, 16, 32, 64, ...); bakes default to r=16
DEFAULT_MAX_ADAPTERS = 4


class VllmServer:
    def __init__(self, process: subprocess.Popen, base_url: str, served_name: str, log_path: Path, max_adapters: int):
        self.process = process
        self.base_url = base_url  # ".../v1"
        self.served_name = served_name
        self.log_path = log_path
        self.max_adapters = max_adapters
        self._adapters: OrderedDict[str, str] = OrderedDict()  # loaded adapter name -> folder, oldest use first
        self._lock = threading.Lock()

    @classmethod
    def start(cls, model_folder: str, *, served_name: str, adapters: bool = False,
              max_lora_rank: int = DEFAULT_MAX_LORA_RANK, max_adapters: int = DEFAULT_MAX_ADAPTERS,
              start_timeout: float = 600.0) -> VllmServer:
        """Start a server on `model_folder` (served as `served_name`; with `adapters`, LoRA enabled)
        and wait until it answers; EngineError with the end of its log if it does not. LoRA is off
        otherwise: enabled, it slows every request, adapter or not."""
        settings = vllm_settings(model_folder, cuda=cuda_available())
        port = _free_port()
        arguments = [*server_arguments(settings), "--served-model-name", served_name, "--host", "127.0.0.1",
                     "--port", str(port)]
        if adapters:
            arguments += ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_adapters)]
        # Adapters are loaded and unloaded while it runs (POST /v1/load_lora_adapter).
        env = {**settings.env, **os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1"}
        log_path = Path(tempfile.mkdtemp(prefix="bakehouse-vllm-server-")) / "server.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", *arguments],
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                       start_new_session=True)
        server = cls(process, f"http://127.0.0.1:{port}/v1", served_name, log_path, max_adapters)
        server._wait_healthy(start_timeout)
        return server

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        health = self.base_url.removesuffix("/v1") + "/health"
        while True:
            if self.process.poll() is not None:
                raise EngineError(f"vLLM server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(health, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"vLLM server not ready after {timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def ensure_adapter(self, name: str, folder: str) -> None:
        """Have adapter `name` loaded (from `folder`), unloading the least recently used beyond
        `max_adapters`."""
        with self._lock:
            if name in self._adapters:
                self._adapters.move_to_end(name)
                return
            while len(self._adapters) >= self.max_adapters:
                oldest, _ = self._adapters.popitem(last=False)
                self._post("unload_lora_adapter", {"lora_name": oldest})
            self._post("load_lora_adapter", {"lora_name": name, "lora_path": folder})
            self._adapters[name] = folder

    def loaded_adapters(self) -> list[str]:
        with self._lock:
            return list(self._adapters)

    def _post(self, endpoint: str, body: dict) -> None:
        response = httpx.post(f"{self.base_url}/{endpoint}", json=body, timeout=300)
        if response.status_code >= 400:
            raise EngineError(f"vLLM {endpoint} failed ({response.status_code}): {response.text[:500]}")

    def stop(self) -> None:
        """SIGTERM the server's process group, then SIGKILL what is left after 20 s."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

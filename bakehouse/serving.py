"""Chat with base and baked models: `POST /v1/chat/completions` and `GET /v1/models` behind the API.

The API answers no chat itself: each request goes to a vLLM OpenAI-compatible server. By default
this process starts them on first use (flows.engines.vllm_server), the least recently used stopped
past BAKEHOUSE_SERVE_MAX_SERVERS. With BAKEHOUSE_OPENAI_BASE_URL set, requests go to that fleet
instead, model names unchanged (the fleet must know them).

A baked checkpoint is served one of two ways (BAKEHOUSE_SERVE_CHECKPOINTS, else by device):
- `adapter` (with a GPU): one server per set of weights (a base model, or the merged parent of a
  sequential bake) holds many checkpoints as LoRA adapters, each fetched from storage once and
  loaded on demand, the least recently used unloaded past 4. vLLM's LoRA kernels make that cheap
  on a GPU, and one server holds them all.
- `merged` (on the CPU): the checkpoint's merged weights (built once in the model cache) get a
  server of their own. On vLLM CPU an adapter generated 0.21-0.69x the tokens per second of the
  same checkpoint merged (bench/serving.py, n = 4 at concurrency 8), which outweighs a small
  model's seconds of server start.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repo_store import Workspace
from repo_store.bakes import ADAPTER_FILES
from targets import BakehouseError, NotFound
from repo_store.settings import get_settings

RESOLVED_SECONDS = 5.0


class ChatRefused(Exception):
    """A chat request that cannot be served, as OpenAI's error shape says it."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Route:
    """Where one chat request goes: the server's `/v1` URL and the model name it serves it under."""

    base_url: str
    served_model: str


@dataclass(frozen=True)
class _Weights:
    """What a server loads (a folder) and the name it serves those weights under."""

    folder: str
    served_name: str


class ChatServing:
    def __init__(self, *, fleet_url: str | None = None, max_servers: int | None = None, max_n: int | None = None,
                 checkpoints_as: str | None = None):
        settings = get_settings()
        self.fleet_url = fleet_url if fleet_url is not None else settings.openai_base_url
        self.checkpoints_as = checkpoints_as or settings.serve_checkpoints or _default_checkpoints_as()
        if self.checkpoints_as not in ("adapter", "merged"):
            raise ValueError(f"BAKEHOUSE_SERVE_CHECKPOINTS must be 'adapter' or 'merged', not {self.checkpoints_as!r}")
        self.max_servers = max_servers or settings.serve_max_servers
        self.max_n = max_n or settings.serve_max_n
        self._servers: OrderedDict[str, Any] = OrderedDict()  # weights folder -> VllmServer, oldest use first
        self._resolved: dict[tuple[str, str], tuple[float, tuple[_Weights, str | None]]] = {}
        self._lock = threading.Lock()
        self._adapter_cache = Path(tempfile.mkdtemp(prefix="bakehouse-adapters-"))

    # -- which models a workspace may chat with ------------------------------------------------

    def list_models(self, ws: Workspace) -> list[dict[str, Any]]:
        """OpenAI's model cards: the repos' base models, then every checkpoint of a finished bake."""
        cards, seen = [], set()
        for repo_name in ws.list_repos():
            base = ws.get_repo(repo_name).base_model
            if base not in seen:
                seen.add(base)
                cards.append({"id": base, "object": "model", "created": 0, "owned_by": ws.name})
            for bake_name in ws.list_bakes(repo_name):
                run = ws.bake_run(repo_name, ws.get_bake(repo_name, bake_name))
                status = run.job.status()
                if status.status != "complete":
                    continue
                for record in reversed(run.checkpoints()):
                    cards.append({"id": f"{ws.name}/{repo_name}/{bake_name}/{record.step}", "object": "model",
                                  "created": int(status.completed_at or 0), "owned_by": ws.name, "parent": bake_name})
        return cards

    def check_request(self, body: dict[str, Any]) -> str:
        """The requested model name, after the checks that need no model."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ChatRefused(400, "'model' is required", code="invalid_request", param="model")
        n = body.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= self.max_n:
            raise ChatRefused(400, f"'n' must be an integer from 1 to {self.max_n}", code="invalid_value", param="n")
        return model

    # -- routing -------------------------------------------------------------------------------

    def route(self, ws: Workspace, model: str) -> Route:
        """Where to send a chat with `model` (starting a server or loading an adapter if needed)."""
        weights, adapter = self._resolve(ws, model)
        if self.fleet_url:
            return Route(self.fleet_url.rstrip("/"), model)
        server = self._server(weights)
        if adapter is None:
            return Route(server.base_url, weights.served_name)
        server.ensure_adapter(model, adapter)
        return Route(server.base_url, model)

    def ready_route(self, ws: Workspace, model: str) -> Route | None:
        """The route when it needs no I/O (resolved lately, its server up, its adapter loaded), so
        the request path can skip a thread hop; None otherwise (then `route`)."""
        hit = self._resolved.get((ws.name, model))
        if hit is None or hit[0] <= time.monotonic():
            return None
        weights, adapter = hit[1]
        if self.fleet_url:
            return Route(self.fleet_url.rstrip("/"), model)
        server = self._servers.get(weights.folder)
        if server is None or not server.alive or (adapter is not None and model not in server.loaded_adapters()):
            return None
        return Route(server.base_url, model if adapter is not None else weights.served_name)

    def _resolve(self, ws: Workspace, model: str) -> tuple[_Weights, str | None]:
        """What serves `model` in `ws`. Kept for RESOLVED_SECONDS: a chat costs no storage read
        then, and a deleted bake stops being served within that time."""
        from flows.models import BakedCheckpoint

        key, now = (ws.name, model), time.monotonic()
        if (hit := self._resolved.get(key)) is not None and hit[0] > now:
            return hit[1]
        checkpoint = BakedCheckpoint.parse(model)
        resolved = self._checkpoint(ws, model, checkpoint) if checkpoint else (self._base(ws, model), None)
        self._resolved[key] = (now + RESOLVED_SECONDS, resolved)
        return resolved

    def _base(self, ws: Workspace, model: str) -> _Weights:
        from flows.models import model_folder

        if model not in {ws.get_repo(name).base_model for name in ws.list_repos()}:
            raise ChatRefused(404, f"The model '{model}' does not exist", code="model_not_found", param="model")
        try:
            return _Weights(model_folder(ws, model), model)
        except BakehouseError as error:
            raise ChatRefused(404, f"The model '{model}' is not available here: {error.message}",
                              code="model_not_found", param="model") from None

    def _checkpoint(self, ws: Workspace, model: str, checkpoint) -> tuple[_Weights, str | None]:
        """What serves a checkpoint: its merged weights alone, or the weights its adapter was trained
        on and the adapter's local folder."""
        from flows.models import model_folder

        missing = ChatRefused(404, f"The model '{model}' does not exist", code="model_not_found", param="model")
        if checkpoint.workspace != ws.name:  # another workspace's checkpoint reads as missing
            raise missing
        try:
            bake = ws.get_bake(checkpoint.repo, checkpoint.bake)
        except NotFound:
            raise missing from None
        run = ws.bake_run(checkpoint.repo, bake)
        status = run.job.status()
        if status.status != "complete":
            why = f"it is {status.status}" + (f" ({status.error})" if status.error else "")
            raise ChatRefused(409, f"Bake '{checkpoint.bake}' has not completed: {why}", code="model_not_ready",
                              param="model")
        record = run.checkpoint(checkpoint.step)
        if record is None:
            raise missing
        if self.checkpoints_as == "merged":
            return _Weights(model_folder(ws, model), model), None
        parent = bake.config.model.parent_model_name or ws.get_repo(checkpoint.repo).base_model
        folder = self._adapter_cache / record.token
        if not folder.exists():
            staging = Path(tempfile.mkdtemp(dir=self._adapter_cache))
            for name in ADAPTER_FILES:
                (staging / name).write_bytes(run.read_checkpoint_file(record, name))
            try:
                staging.rename(folder)  # whole or not at all
            except OSError:  # a concurrent request put it there first
                shutil.rmtree(staging, ignore_errors=True)
        return _Weights(model_folder(ws, parent), parent), str(folder)

    def _server(self, weights: _Weights):
        from flows.engines.vllm_server import VllmServer

        with self._lock:
            server = self._servers.get(weights.folder)
            if server is not None and server.alive:
                self._servers.move_to_end(weights.folder)
                return server
            while len(self._servers) >= self.max_servers:
                self._servers.popitem(last=False)[1].stop()
            # Started under the lock: a second request for the same weights waits for this one.
            server = self._servers[weights.folder] = VllmServer.start(
                weights.folder, served_name=weights.served_name, adapters=self.checkpoints_as == "adapter")
            return server

    def server_for(self, served_name: str):
        """The running server that serves `served_name` (a base model, a merged checkpoint, or an
        adapter it has loaded); None when there is none."""
        with self._lock:
            return next((s for s in self._servers.values()
                         if s.served_name == served_name or served_name in s.loaded_adapters()), None)

    def servers(self) -> list[Any]:
        with self._lock:
            return list(self._servers.values())

    def close(self) -> None:
        with self._lock:
            for server in self._servers.values():
                server.stop()
            self._servers.clear()


def _default_checkpoints_as() -> str:
    from flows.engines.device import cuda_available

    return "adapter" if cuda_available() else "merged"

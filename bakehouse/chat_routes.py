"""OpenAI-compatible chat: `POST /v1/chat/completions` and `GET /v1/models` (bakehouse.serving).

Requests are passed to a vLLM server as they came, the model name aside; answers come back as the
server wrote them, streamed chunk by chunk when `stream` is set. A client that hangs up closes the
upstream stream, and vLLM frees the request's sequences. (No `from __future__ import annotations`:
FastAPI must see the dependency types themselves.)
"""

from typing import Any

import anyio
import httpx
from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse, Response, StreamingResponse

from bakehouse import schemas as s
from bakehouse.dependencies import Read, Serving, Upstream
from bakehouse.serving import ChatRefused
from flows.engines.base import EngineError

UPSTREAM_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
# Refusals of the chat itself come in OpenAI's shape (what its clients parse); the key's (401, 403,
# 429) and a body that is not JSON (400) or not an object (422) come in Bread's, like every other
# endpoint's.
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": s.OpenAIErrorResponse | s.ErrorResponse,
          "description": "Bad sampling settings (OpenAI's shape), or a body that is not JSON (Bread's)"},
    **{status: {"model": s.OpenAIErrorResponse, "description": description} for status, description in (
        (404, "No such model in this workspace"), (409, "The checkpoint's bake has not completed"),
        (502, "The model server did not answer"), (503, "The model server could not start"))}}


# The body goes upstream as it came, so it is read as any object; the schema still declares what
# `ChatServing.check_request` insists on before anything else: a model name.
CHAT_REQUEST: dict[str, Any] = {"requestBody": {"content": {"application/json": {"schema": {
    "required": ["model"], "properties": {"model": {"type": "string", "minLength": 1}}}}}}}

router = APIRouter(tags=["chat"])


@router.get("/models", description="OpenAI-compatible: the base models of this workspace's "
                                   "repos and every checkpoint of its finished bakes.")
async def list_models(service: Read, serving: Serving):
    cards = await anyio.to_thread.run_sync(service.model_cards, serving)
    return {"object": "list", "data": cards}


@router.post("/chat/completions", responses=OPENAI_ERRORS, openapi_extra=CHAT_REQUEST,
             description="OpenAI-compatible chat with a base model or a baked checkpoint `<workspace>/<repo>/<bake>/<step>` "
                         "(`n`, `temperature`, `max_tokens`, `seed`, `stop`, `logprobs`, `stream`).")
async def chat_completions(service: Read, serving: Serving, upstream: Upstream, body: dict[str, Any] = Body(...)):
    try:
        model = serving.check_request(body)
        route = (service.ready_chat_route(serving, model)
                 or await anyio.to_thread.run_sync(service.chat_route, serving, model))
    except ChatRefused as refused:
        return JSONResponse(refused.body(), status_code=refused.status)
    except EngineError as error:
        return JSONResponse(ChatRefused(503, f"The model server could not start: {error}", code="server_unavailable").body(),
                            status_code=503)
    request = upstream.build_request("POST", f"{route.base_url}/chat/completions",
                                     json={**body, "model": route.served_model}, timeout=UPSTREAM_TIMEOUT)
    try:
        response = await upstream.send(request, stream=True)
    except httpx.TransportError as error:
        return JSONResponse(ChatRefused(502, f"The model server did not answer: {error}", code="bad_gateway").body(),
                            status_code=502)
    if response.status_code >= 400 or not body.get("stream"):
        data = await response.aread()
        await response.aclose()
        # The server names the model as asked (the routes serve each model under its own name).
        return Response(data, status_code=response.status_code, media_type="application/json")
    return StreamingResponse(_relay(response), media_type="text/event-stream")


async def _relay(response: httpx.Response):
    """The upstream stream's bytes as they come. A client that hangs up cancels this while it
    waits: the upstream connection is closed then (shielded from that cancel), so vLLM aborts the
    request and frees its sequences."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await response.aclose()

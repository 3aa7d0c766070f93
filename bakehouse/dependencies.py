"""What the routes depend on, in one place: the app's shared state (`create_app` sets it up in
`app.state`: store, runner, job_index, usage, limiter, serving, upstream, watches), the caller's API
key, a `Service` over the key's workspace, and the parameters many routes share.

(No `from __future__ import annotations`: FastAPI must see the `Annotated` types themselves.)
"""

from typing import Annotated, Any, Literal

import httpx
from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bakehouse.errors import AuthError
from bakehouse.events import JobWatches
from bakehouse.limits import retry_after_header
from bakehouse.service import Service
from bakehouse.serving import ChatServing
from repo_store import MAX_PAGE_LIMIT, ApiKey, Store


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_watches(request: Request) -> JobWatches:
    return request.app.state.watches


def get_serving(request: Request) -> ChatServing:
    return request.app.state.serving


def get_upstream(request: Request) -> httpx.AsyncClient:
    """The HTTP client to the model servers behind /v1/chat/completions."""
    return request.app.state.upstream


Stored = Annotated[Store, Depends(get_store)]
Watches = Annotated[JobWatches, Depends(get_watches)]
Serving = Annotated[ChatServing, Depends(get_serving)]
Upstream = Annotated[httpx.AsyncClient, Depends(get_upstream)]
bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _authorize(request: Request, credentials: HTTPAuthorizationCredentials | None, needed: str) -> ApiKey:
    state = request.app.state
    if credentials is None:
        raise AuthError(401, "Missing API key: send 'Authorization: Bearer <key>'", "UNAUTHORIZED")
    key = state.store.keys.verify(credentials.credentials)
    if key is None:
        raise AuthError(401, "Invalid API key", "UNAUTHORIZED")
    state.usage.record(key.key_id)
    # Every authenticated request costs a token, refused ones too, and its response tells the figures
    # (RateLimitHeaders adds them, also to error responses raised from here on).
    allowance = request.state.rate_limit = state.limiter.take(key.key_id)
    if allowance.wait:
        raise AuthError(429, "Too many requests for this key; slow down", "RATE_LIMITED",
                        headers={"Retry-After": retry_after_header(allowance.wait)})
    if not key.allows(needed):
        raise AuthError(403, f"This key has '{key.scope}' scope; this needs '{needed}'", "FORBIDDEN")
    return key


def read_key(request: Request, credentials: Credentials) -> ApiKey:
    return _authorize(request, credentials, "read")


def write_key(request: Request, credentials: Credentials) -> ApiKey:
    return _authorize(request, credentials, "write")


def _service(request: Request, key: ApiKey) -> Service:
    state = request.app.state
    return Service(state.store.workspace(key.workspace), state.runner, state.job_index)


def reader(request: Request, key: Annotated[ApiKey, Depends(read_key)]) -> Service:
    return _service(request, key)


def writer(request: Request, key: Annotated[ApiKey, Depends(write_key)]) -> Service:
    return _service(request, key)


Read = Annotated[Service, Depends(reader)]
Write = Annotated[Service, Depends(writer)]

# The other answer of a create (201): the resource was there already, as asked for.
EXISTED: dict[int | str, dict[str, Any]] = {200: {"description": "Already existed with identical content"}}
# Accepted on every call for SDK compatibility; acting for another user is not supported.
UserId = Annotated[str | None, Query(description="Ignored (Bread's master-key override)")]
Offset = Annotated[int, Query(ge=0, description="Starting line number (0-indexed)")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT, description="Number of lines to return (max 1000)")]
Include = Annotated[Literal["logprobs"] | None, Query(
    description="bakehouse extension: `logprobs` adds each rollout row's `response_token_ids`, "
                "`teacher_top_ids` and `teacher_top_logprobs` (null where not recorded)")]
LastEventId = Annotated[str | None, Header(description="Resume an event stream after this event id")]


def event_position(last_event_id: str | None) -> int | None:
    """The timeline position a reconnecting client saw last (an id it cannot have got is ignored)."""
    return int(last_event_id) if last_event_id and last_event_id.isdigit() else None

"""The Python SDK: Bread's resource layout, with polling that ends, typed responses and errors, and page iterators.

    from bakehouse import Client

    client = Client(base_url="http://127.0.0.1:8000", api_key=KEY)   # or BAKEHOUSE_BASE_URL / _API_KEY
    client.repo.create(repo_name="demo", base_model="tiny-random")
    client.targets.stim.run("pirate", repo_name="demo")                 # polls until complete
    job = client.targets.rollout.run("pirate", repo_name="demo", on_progress=print)
    job.status, job.lines                                               # typed (job["status"] works too)
    for row in client.targets.rollout.iter_output("pirate", repo_name="demo"):
        ...

`AsyncClient` has the same resources and arguments with `async` methods (`async for` over
`iter_output`); it runs on asyncio or trio. Both send the same requests, built once
(bakehouse/_sdk/requests.py); they differ only in how they send them and wait.
"""

from __future__ import annotations

import os
import time
from typing import Any, TypeVar

import anyio
import httpx

from bakehouse._sdk.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    BakehouseError,
    ConflictError,
    InternalServerError,
    JobFailed,
    JobNotComplete,
    JobTimeout,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnexpectedResponseError,
    UnprocessableEntityError,
    raise_for_status,
)
from bakehouse._sdk.models import HealthResponse, Response
from bakehouse._sdk.requests import Request
from bakehouse._sdk.resources import (
    AsyncBakes,
    AsyncJob,
    AsyncJobs,
    AsyncPrompts,
    AsyncRecipes,
    AsyncRepos,
    AsyncTargets,
    Bakes,
    Job,
    Jobs,
    Prompts,
    Recipes,
    Repos,
    Targets,
)
from bakehouse._sdk.waiting import BAKE_IN_PROGRESS, IN_PROGRESS, EventStream, Sleep, Wait

__all__ = [
    "APIConnectionError", "APIError", "AsyncBakes", "AsyncClient", "AsyncJob", "AsyncJobs", "AsyncPrompts",
    "AsyncRecipes", "AsyncRepos", "AsyncTargets", "AuthenticationError", "BAKE_IN_PROGRESS", "BadRequestError",
    "BakehouseError", "Bakes", "Client", "ConflictError", "IN_PROGRESS", "InternalServerError", "Job", "JobFailed",
    "JobNotComplete", "JobTimeout", "Jobs", "NotFoundError", "PermissionDeniedError", "Prompts", "RateLimitError",
    "Recipes", "Repos", "Response", "Targets", "UnexpectedResponseError", "UnprocessableEntityError",
]

T = TypeVar("T")
J = TypeVar("J", bound=Response)


class BaseClient:
    """What Client and AsyncClient share: settings, and reading answers into the SDK's types and errors."""

    def __init__(self, poll_interval: float):
        self.poll_interval = poll_interval

    @staticmethod
    def _http_settings(base_url: str | None, api_key: str | None) -> dict[str, Any]:
        base_url = base_url or os.environ.get("BAKEHOUSE_BASE_URL") or "http://127.0.0.1:8000"
        api_key = api_key or os.environ.get("BAKEHOUSE_API_KEY")
        return {"base_url": base_url.rstrip("/"), "headers": {"Authorization": f"Bearer {api_key}"} if api_key else {}}

    @staticmethod
    def _read(response: httpx.Response) -> Any:
        raise_for_status(response)
        return response.json()

    @staticmethod
    def _health() -> Request[HealthResponse]:
        return Request("GET", "/v1/health", HealthResponse.model_validate)


class Client(BaseClient):
    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        poll_interval: float = 2.0,
        http_client: httpx.Client | None = None,
    ):
        super().__init__(poll_interval)
        self._http = http_client or httpx.Client(**self._http_settings(base_url, api_key), timeout=timeout)
        self.repo = Repos(self)
        self.prompts = Prompts(self)
        self.targets = Targets(self)
        self.bakes = Bakes(self)
        self.recipes = Recipes(self)
        self.jobs = Jobs(self)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of any endpoint (`kwargs` go to httpx); failures raise the SDK's errors."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise APIConnectionError.of(error) from error
        return self._read(response)

    def health(self) -> HealthResponse:
        return self._send(self._health())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, request: Request[T]) -> T:
        return request.parse(self.request(request.method, request.path, params=request.params, json=request.json))

    def _wait(self, wait: Wait[J], first: J) -> J:
        """Run the steps of a wait (bakehouse/_sdk/waiting.py) with blocking calls."""
        steps, done = wait.steps(first), None
        while True:
            try:
                step = steps.send(done)
            except StopIteration as end:
                return end.value
            done = self._do(step)

    def _do(self, step: Request[Any] | Sleep | EventStream) -> Any:
        """One step of a wait; a Request's answer goes back to it."""
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
        elif isinstance(step, EventStream):
            self._follow(step)
        else:
            return self._send(step)
        return None

    def _follow(self, events: EventStream) -> None:
        try:
            with self._http.stream("GET", events.path, timeout=events.timeout()) as response:
                if events.opened(response):
                    for line in response.iter_lines():
                        if events.feed(line):
                            return
        except (httpx.TransportError, ValueError):
            return  # polling goes on from here


class AsyncClient(BaseClient):
    """`Client` for async code: the same resources, arguments and errors; methods are coroutines."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        poll_interval: float = 2.0,
        http_client: httpx.AsyncClient | None = None,
    ):
        super().__init__(poll_interval)
        self._http = http_client or httpx.AsyncClient(**self._http_settings(base_url, api_key), timeout=timeout)
        self.repo = AsyncRepos(self)
        self.prompts = AsyncPrompts(self)
        self.targets = AsyncTargets(self)
        self.bakes = AsyncBakes(self)
        self.recipes = AsyncRecipes(self)
        self.jobs = AsyncJobs(self)

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise APIConnectionError.of(error) from error
        return self._read(response)

    async def health(self) -> HealthResponse:
        return await self._send(self._health())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, request: Request[T]) -> T:
        return request.parse(await self.request(request.method, request.path, params=request.params, json=request.json))

    async def _wait(self, wait: Wait[J], first: J) -> J:
        """`Client._wait` with awaits; `timeout` also bounds a status fetch that hangs (a cancel scope
        can, where the blocking client has only the deadline between its steps)."""
        steps, done = wait.steps(first), None
        try:
            with anyio.fail_after(wait.timeout):
                while True:
                    try:
                        step = steps.send(done)
                    except StopIteration as end:
                        return end.value
                    done = await self._do(step)
        except TimeoutError:
            raise JobTimeout(f"{wait.what} did not finish within {wait.timeout}s") from None

    async def _do(self, step: Request[Any] | Sleep | EventStream) -> Any:
        if isinstance(step, Sleep):
            await anyio.sleep(step.seconds)
        elif isinstance(step, EventStream):
            await self._follow(step)
        else:
            return await self._send(step)
        return None

    async def _follow(self, events: EventStream) -> None:
        try:
            async with self._http.stream("GET", events.path, timeout=events.timeout()) as response:
                if events.opened(response):
                    async for line in response.aiter_lines():
                        if events.feed(line):
                            return
        except (httpx.TransportError, ValueError):
            return  # polling goes on from here

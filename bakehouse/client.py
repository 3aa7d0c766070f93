"""The Python SDK: Bread's resource layout, with polling that ends, typed errors and page iterators.

    from bakehouse import Client

    client = Client(base_url="http://127.0.0.1:8000", api_key=KEY)   # or BAKEHOUSE_BASE_URL / _API_KEY
    client.repo.create(repo_name="demo", base_model="tiny-random")
    client.targets.stim.run("pirate", repo_name="demo")                 # polls until complete
    job = client.targets.rollout.run("pirate", repo_name="demo", on_progress=print)
    for row in client.targets.rollout.iter_output("pirate", repo_name="demo"):
        ...

`AsyncClient` has the same resources and arguments with `async` methods (`async for` over
`iter_output`); it runs on asyncio or trio.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx

# One root for every error bakehouse raises, server side or here: `except BakehouseError` catches them all.
from targets.errors import BakehouseError

IN_PROGRESS = ("not_started", "pending", "running")
BAKE_IN_PROGRESS = ("not_started", "preparing", "pending", "running", "incomplete")  # as Bread's SDK waits


class APIError(BakehouseError):
    """The server answered with an error. `code` and `message` are Bread's envelope."""

    def __init__(self, status_code: int, message: str, code: str | None, body: Any = None):
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code, self.message, self.code, self.body = status_code, message, code, body


class BadRequestError(APIError): ...  # 400: well-formed but not possible now


class AuthenticationError(APIError): ...  # 401


class PermissionDeniedError(APIError): ...  # 403


class NotFoundError(APIError): ...  # 404


class ConflictError(APIError): ...  # 409: an immutable resource exists with other content


class UnprocessableEntityError(APIError): ...  # 422: invalid name, config or parameter


class RateLimitError(APIError): ...  # 429


class InternalServerError(APIError): ...  # 5xx


class JobFailed(BakehouseError):
    def __init__(self, job: dict[str, Any]):
        super().__init__(f"job failed: {job.get('error')}")
        self.job = job


class JobTimeout(BakehouseError): ...


class JobNotComplete(BakehouseError):
    """Reading all of a job's output while it is not complete would silently give part of it."""


_ERRORS = {400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
           409: ConflictError, 422: UnprocessableEntityError, 429: RateLimitError}


def _http_settings(base_url: str | None, api_key: str | None) -> dict[str, Any]:
    base_url = base_url or os.environ.get("BAKEHOUSE_BASE_URL") or "http://127.0.0.1:8000"
    api_key = api_key or os.environ.get("BAKEHOUSE_API_KEY")
    return {"base_url": base_url.rstrip("/"), "headers": {"Authorization": f"Bearer {api_key}"} if api_key else {}}


def _json_or_raise(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text}
    message = body.get("message") or str(body.get("detail") or response.reason_phrase)
    cls = _ERRORS.get(response.status_code, InternalServerError if response.status_code >= 500 else APIError)
    raise cls(response.status_code, message, body.get("code"), body)


def _job_path(kind: str, target_name: str, repo_name: str) -> str:
    return f"/v1/repo/{repo_name}/targets/{target_name}/{kind}"


def _output_params(limit: int, offset: int, include_logprobs: bool) -> dict[str, Any]:
    return {"limit": limit, "offset": offset, **({"include": "logprobs"} if include_logprobs else {})}


def _check_first_page(page: dict[str, Any], where: str, allow_partial: bool) -> None:
    if page["status"] != "complete" and not allow_partial:
        raise JobNotComplete(f"{where} is {page['status']} ({page['lines']} rows so far); "
                             "pass allow_partial=True (CLI: --partial) to read them")


def _settle(job: dict[str, Any], raise_on_failure: bool) -> dict[str, Any]:
    if job["status"] == "failed" and raise_on_failure:
        raise JobFailed(job)
    return job


def _poll(first: dict[str, Any], fetch: Callable[[], dict[str, Any]], *, in_progress: tuple[str, ...], what: str,
          poll_interval: float, timeout: float | None, raise_on_failure: bool,
          on_progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """Fetch a job's status until it leaves `in_progress`, showing each to `on_progress`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    job = first
    while job["status"] in in_progress:
        if on_progress:
            on_progress(job)
        if deadline is not None and time.monotonic() > deadline:
            raise JobTimeout(f"{what} still {job['status']} after {timeout}s")
        time.sleep(poll_interval)
        job = fetch()
    if on_progress:
        on_progress(job)
    return _settle(job, raise_on_failure)


class _EventParser:
    """Server-Sent Events from a stream's lines: (event name, JSON data) at each blank line."""

    def __init__(self) -> None:
        self._event, self._data = "message", []

    def feed(self, line: str) -> tuple[str, Any] | None:
        if not line:
            event, data = self._event, self._data
            self._event, self._data = "message", []
            return (event, json.loads("\n".join(data))) if data else None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None  # ids, retries and ": ping" comments: nothing to act on here


STREAM_READ_TIMEOUT = 40.0  # the server pings every 15 s; silence past this means the stream is stuck


def _is_event_stream(response: httpx.Response) -> bool:
    return response.status_code == 200 and response.headers.get("content-type", "").startswith("text/event-stream")


def _remaining(deadline: float | None) -> float:
    return STREAM_READ_TIMEOUT if deadline is None else max(0.1, min(STREAM_READ_TIMEOUT, deadline - time.monotonic()))


def _stream(http: httpx.Client, path: str, job: dict[str, Any], deadline: float | None,
            on_progress: Callable[[dict[str, Any]], None] | None) -> None:
    """Follow a job's event stream until the server ends it, showing each `progress` event. Any
    trouble (an older server without the endpoint, a proxy that blocks streaming, a stuck
    connection) ends it quietly: the caller polls from there."""
    parser = _EventParser()
    try:
        with http.stream("GET", path, timeout=httpx.Timeout(10.0, read=_remaining(deadline))) as response:
            if not _is_event_stream(response):
                return
            for line in response.iter_lines():
                event = parser.feed(line)
                if event and event[0] == "progress" and on_progress:
                    on_progress({**job, **event[1]})
                if deadline is not None and time.monotonic() > deadline:
                    return
    except (httpx.TransportError, ValueError):
        return


async def _astream(http: httpx.AsyncClient, path: str, job: dict[str, Any], deadline: float | None,
                   on_progress: Callable[[dict[str, Any]], None] | None) -> None:
    """`_stream` for AsyncClient."""
    parser = _EventParser()
    try:
        async with http.stream("GET", path, timeout=httpx.Timeout(10.0, read=_remaining(deadline))) as response:
            if not _is_event_stream(response):
                return
            async for line in response.aiter_lines():
                event = parser.feed(line)
                if event and event[0] == "progress" and on_progress:
                    on_progress({**job, **event[1]})
                if deadline is not None and time.monotonic() > deadline:
                    return
    except (httpx.TransportError, ValueError):
        return


def _follow(http: httpx.Client, events_path: str, first: dict[str, Any], fetch: Callable[[], dict[str, Any]], *,
            timeout: float | None, on_progress: Callable[[dict[str, Any]], None] | None, **poll: Any) -> dict[str, Any]:
    """Wait for a job: over its event stream while the server streams, then (or instead) by polling."""
    deadline = None if timeout is None else time.monotonic() + timeout
    job = first
    if job["status"] in poll["in_progress"]:
        _stream(http, events_path, job, deadline, on_progress)
        job = fetch()
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    return _poll(job, fetch, timeout=left, on_progress=on_progress, **poll)


async def _afollow(http: httpx.AsyncClient, events_path: str, first: dict[str, Any], fetch: Callable[[], Any], *,
                   timeout: float | None, on_progress: Callable[[dict[str, Any]], None] | None, **poll: Any) -> dict[str, Any]:
    """`_follow` for AsyncClient."""
    deadline = None if timeout is None else time.monotonic() + timeout
    job = first
    if job["status"] in poll["in_progress"]:
        await _astream(http, events_path, job, deadline, on_progress)
        job = await fetch()
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    return await _apoll(job, fetch, timeout=left, on_progress=on_progress, **poll)


async def _apoll(first: dict[str, Any], fetch: Callable[[], Any], *, in_progress: tuple[str, ...], what: str,
                 poll_interval: float, timeout: float | None, raise_on_failure: bool,
                 on_progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """`_poll` for AsyncClient (`fetch` returns an awaitable)."""
    job = first
    try:
        with anyio.fail_after(timeout):
            while job["status"] in in_progress:
                if on_progress:
                    on_progress(job)
                await anyio.sleep(poll_interval)
                job = await fetch()
    except TimeoutError:
        raise JobTimeout(f"{what} still {job['status']} after {timeout}s") from None
    if on_progress:
        on_progress(job)
    return _settle(job, raise_on_failure)


def _dataframe(rows: list[dict[str, Any]]):
    import polars as pl

    # Keys such as `error` appear on some rows only: infer the schema from all of them, not the first 100.
    return pl.DataFrame(rows, infer_schema_length=None)


def _training_row(row: dict[str, Any]) -> dict[str, Any] | None:
    """A rollout row as a bake training example, or None when its trajectory failed (`error` set):
    there is nothing to learn from it."""
    response = row.get("response")
    if row.get("error") or not response:
        return None
    answer = {"role": "assistant", "content": response["content"]}
    return {
        "stimulus_id": row.get("stimulus_id"),
        "trajectory_id": row.get("trajectory_id"),
        "teacher_messages": [*row["unconditioned_stimulus"]["messages"], answer],
        "student_messages": [*row["conditioned_stimulus"]["messages"], answer],
    }


class Client:
    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        poll_interval: float = 2.0,
        http_client: httpx.Client | None = None,
    ):
        self._http = http_client or httpx.Client(**_http_settings(base_url, api_key), timeout=timeout)
        self.poll_interval = poll_interval
        self.repo = Repos(self)
        self.prompts = Prompts(self)
        self.targets = Targets(self)
        self.bakes = Bakes(self)
        self.recipes = Recipes(self)
        self.jobs = Jobs(self)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return _json_or_raise(self._http.request(method, path, **kwargs))

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/v1/health")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Resource:
    def __init__(self, client: Client):
        self._client = client


class Repos(_Resource):
    def create(self, *, repo_name: str, base_model: str | None = None) -> dict[str, Any]:
        body = {"repo_name": repo_name, **({"base_model": base_model} if base_model else {})}
        return self._client.request("POST", "/v1/repo", json=body)

    def get(self, repo_name: str) -> dict[str, Any]:
        return self._client.request("GET", f"/v1/repo/{repo_name}")

    def list(self) -> list[str]:
        return self._client.request("GET", "/v1/repo")["repos"]

    def get_tree(self, repo_name: str) -> dict[str, Any]:
        """Every bake with its status and checkpoints, and `edges` [bake, child, bake, parent]."""
        return self._client.request("GET", f"/v1/repo/{repo_name}/tree")


class Prompts(_Resource):
    def create(self, repo_name: str, *, prompt_name: str, messages: list[dict[str, Any]],
               tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body = {"prompt_name": prompt_name, "messages": messages, **({"tools": tools} if tools else {})}
        return self._client.request("POST", f"/v1/repo/{repo_name}/prompts", json=body)

    def get(self, prompt_name: str, *, repo_name: str) -> dict[str, Any]:
        return self._client.request("GET", f"/v1/repo/{repo_name}/prompts/{prompt_name}")

    def list(self, repo_name: str) -> list[str]:
        return self._client.request("GET", f"/v1/repo/{repo_name}/prompts")["prompts"]


class Targets(_Resource):
    def __init__(self, client: Client):
        super().__init__(client)
        self.stim = Job(client, "stim")
        self.rollout = Job(client, "rollout")

    def create(self, repo_name: str, *, target_name: str, template: str = "default",
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"target_name": target_name, "template": template, "overrides": overrides}
        return self._client.request("POST", f"/v1/repo/{repo_name}/targets", json=body)

    def get(self, target_name: str, *, repo_name: str) -> dict[str, Any]:
        return self._client.request("GET", f"/v1/repo/{repo_name}/targets/{target_name}")

    def list(self, repo_name: str) -> list[str]:
        return self._client.request("GET", f"/v1/repo/{repo_name}/targets")["targets"]

    def delete(self, target_name: str, *, repo_name: str) -> dict[str, Any]:
        return self._client.request("DELETE", f"/v1/repo/{repo_name}/targets/{target_name}")

    def validate(self, repo_name: str, *, target_name: str, template: str = "default",
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """What `create` would make, or every reason it cannot: {valid, errors, resolved_config,
        sample_stimuli, estimated}. Creates nothing."""
        body = {"target_name": target_name, "template": template, "overrides": overrides}
        return self._client.request("POST", f"/v1/repo/{repo_name}/targets/validate", json=body)


class Jobs(_Resource):
    """`client.jobs`: every job of the key's workspace."""

    def list(self, **filters: Any) -> dict[str, Any]:
        """{total, offset, limit, jobs}, newest first; filters: repo, target, bake, kind, status,
        created_after, created_before (ISO 8601), limit (≤ 200), offset."""
        return self._client.request("GET", "/v1/jobs", params=_job_filters(filters))


class Job(_Resource):
    """`client.targets.stim` and `client.targets.rollout`."""

    def __init__(self, client: Client, kind: str):
        super().__init__(client)
        self.kind = kind

    def _path(self, target_name: str, repo_name: str) -> str:
        return _job_path(self.kind, target_name, repo_name)

    def run(
        self,
        target_name: str,
        *,
        repo_name: str,
        poll: bool = True,
        poll_interval: float | None = None,
        timeout: float | None = None,
        raise_on_failure: bool = True,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Start the job (or join it if it exists); with `poll`, wait until it leaves the running states.

        Raises JobFailed when it ends `failed` (unless `raise_on_failure=False`) and JobTimeout after
        `timeout` seconds. `on_progress` gets every status seen while waiting.
        """
        job = self._client.request("POST", self._path(target_name, repo_name))
        if not poll:
            return job
        return self.wait(target_name, repo_name=repo_name, job=job, poll_interval=poll_interval, timeout=timeout,
                         raise_on_failure=raise_on_failure, on_progress=on_progress)

    def wait(self, target_name: str, *, repo_name: str, job: dict[str, Any] | None = None,
             poll_interval: float | None = None, timeout: float | None = None, raise_on_failure: bool = True,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Wait until the job leaves the running states, following its event stream (polling where
        the server or a proxy does not stream)."""
        return _follow(self._client._http, f"{self._path(target_name, repo_name)}/events",
                       job or self.get(target_name, repo_name=repo_name), lambda: self.get(target_name, repo_name=repo_name),
                       in_progress=IN_PROGRESS, what=f"{self.kind} of {repo_name}/{target_name}",
                       poll_interval=poll_interval or self._client.poll_interval, timeout=timeout,
                       raise_on_failure=raise_on_failure, on_progress=on_progress)

    def get(self, target_name: str, *, repo_name: str) -> dict[str, Any]:
        return self._client.request("GET", self._path(target_name, repo_name))

    def cancel(self, target_name: str, *, repo_name: str) -> dict[str, Any]:
        """Stop the job; finished rows stay readable and a later `run` resumes from them."""
        return self._client.request("POST", f"{self._path(target_name, repo_name)}/cancel")

    def delete_output(self, target_name: str, *, repo_name: str) -> dict[str, Any]:
        """Remove the job's output so that a later `run` makes it anew: {message, deleted: {lines, files}}."""
        return self._client.request("DELETE", self._path(target_name, repo_name))

    def get_output(self, target_name: str, *, repo_name: str, limit: int = 100, offset: int = 0,
                   include_logprobs: bool = False) -> dict[str, Any]:
        """One page of rows; `include_logprobs` adds each rollout row's `response_token_ids`,
        `teacher_top_ids` and `teacher_top_logprobs`."""
        return self._client.request("GET", f"{self._path(target_name, repo_name)}/output",
                                    params=_output_params(limit, offset, include_logprobs))

    def iter_output(self, target_name: str, *, repo_name: str, page_size: int = 1000,
                    allow_partial: bool = False, include_logprobs: bool = False) -> Iterator[dict[str, Any]]:
        """Every row, page by page. Raises JobNotComplete unless the job is complete or
        `allow_partial` (then: the rows committed so far, which never shift as the job grows)."""
        offset = 0
        while True:
            page = self.get_output(target_name, repo_name=repo_name, limit=page_size, offset=offset,
                                   include_logprobs=include_logprobs)
            if offset == 0:
                _check_first_page(page, f"{self.kind} of {repo_name}/{target_name}", allow_partial)
            yield from page["output"]
            offset += len(page["output"])
            if not page["has_more"] or not page["output"]:
                return

    def read_dataframe(self, target_name: str, *, repo_name: str, allow_partial: bool = False):
        """All rows as a polars DataFrame (nested columns as structs)."""
        return _dataframe(list(self.iter_output(target_name, repo_name=repo_name, allow_partial=allow_partial)))

    def parquet_urls(self, target_name: str, *, repo_name: str, allow_partial: bool = False) -> list[str]:
        """The storage URLs of the job's Parquet parts (local paths or s3://…), for readers that can
        reach the storage themselves. Raises JobNotComplete unless complete or `allow_partial`."""
        parts = self._client.request("GET", f"{self._path(target_name, repo_name)}/parquet")
        _check_first_page(parts, f"{self.kind} of {repo_name}/{target_name}", allow_partial)
        return parts["urls"]

    def scan_parquet(self, target_name: str, *, repo_name: str, allow_partial: bool = False, **options: Any):
        """A polars LazyFrame over the job's parts, read straight from storage with typed columns
        (`options` go to `pl.scan_parquet`, e.g. `storage_options` for S3)."""
        import polars as pl

        return pl.scan_parquet(self.parquet_urls(target_name, repo_name=repo_name, allow_partial=allow_partial), **options)

    def iter_training_rows(self, target_name: str, *, repo_name: str) -> Iterator[dict[str, Any]]:
        """Rollout rows as bake training examples: teacher and student chats ending in the response.
        Failed trajectories are skipped."""
        for row in self.iter_output(target_name, repo_name=repo_name):
            if (example := _training_row(row)) is not None:
                yield example


def _job_filters(filters: dict[str, Any]) -> dict[str, Any]:
    return {name: value.isoformat() if hasattr(value, "isoformat") else value
            for name, value in filters.items() if value is not None}


def _bake_path(repo_name: str, bake_name: str = "") -> str:
    return f"/v1/repo/{repo_name}/bakes" + (f"/{bake_name}" if bake_name else "")


class Bakes(_Resource):
    """`client.bakes`: define a bake, run it, watch its loss, read its metrics."""

    _path = staticmethod(_bake_path)

    def create(self, repo_name: str, *, bake_name: str, template: str = "default",
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"bake_name": bake_name, "template": template, "overrides": overrides}
        return self._client.request("POST", self._path(repo_name), json=body)

    def create_batch(self, repo_name: str, *, bakes: list[dict[str, Any]]) -> dict[str, Any]:
        return self._client.request("POST", f"{self._path(repo_name)}/batch", json={"bakes": bakes})

    def get(self, bake_name: str, *, repo_name: str) -> dict[str, Any]:
        return self._client.request("GET", self._path(repo_name, bake_name))

    def list(self, repo_name: str) -> list[str]:
        return self._client.request("GET", self._path(repo_name))["bakes"]

    def delete(self, bake_name: str, *, repo_name: str) -> dict[str, Any]:
        return self._client.request("DELETE", self._path(repo_name, bake_name))

    def validate(self, repo_name: str, *, bake_name: str, template: str = "default",
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every reason `create` or `run` would refuse this bake, and its estimated steps; creates nothing."""
        body = {"bake_name": bake_name, "template": template, "overrides": overrides}
        return self._client.request("POST", f"{self._path(repo_name)}/validate", json=body)

    def run(self, bake_name: str, *, repo_name: str, poll: bool = True, poll_interval: float | None = None,
            timeout: float | None = None, raise_on_failure: bool = True,
            on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Start the bake (or join it); with `poll`, wait until it ends. `on_progress` gets every
        status seen (`progress_percent`, `loss`); JobFailed and JobTimeout as for jobs."""
        bake = self._client.request("POST", self._path(repo_name, bake_name))
        if not poll:
            return bake
        return _follow(self._client._http, f"{self._path(repo_name, bake_name)}/events", bake,
                       lambda: self.get(bake_name, repo_name=repo_name), in_progress=BAKE_IN_PROGRESS,
                       what=f"bake {repo_name}/{bake_name}", poll_interval=poll_interval or self._client.poll_interval,
                       timeout=timeout, raise_on_failure=raise_on_failure, on_progress=on_progress)

    def download(self, bake_name: str, *, repo_name: str, checkpoint: int | None = None,
                 expires_in: int | None = None) -> dict[str, Any]:
        """An expiring URL of a checkpoint's adapter archive: {url, bake_name, checkpoint, expires_in}."""
        params = {k: v for k, v in {"checkpoint": checkpoint, "expires_in": expires_in}.items() if v is not None}
        return self._client.request("GET", f"{self._path(repo_name, bake_name)}/download", params=params)

    def cancel(self, bake_name: str, *, repo_name: str) -> dict[str, Any]:
        """Stop the bake; its checkpoints stay and a later `run` resumes from the last one."""
        return self._client.request("POST", f"{self._path(repo_name, bake_name)}/cancel")

    def get_metrics(self, bake_name: str, *, repo_name: str, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        params = {"offset": offset, **({"limit": limit} if limit else {})}
        return self._client.request("GET", f"{self._path(repo_name, bake_name)}/metrics", params=params)

    def iter_metrics(self, bake_name: str, *, repo_name: str, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every metrics row (one per logged step), a page at a time."""
        offset = 0
        while page := self.get_metrics(bake_name, repo_name=repo_name, offset=offset, limit=page_size):
            yield from page
            offset += len(page)


class Recipes(_Resource):
    """`client.recipes`: what a bake was made from, and the steps that make it again."""

    def get_dependency_graph(self, bake_name: str, *, repo_name: str) -> dict[str, Any]:
        return self._client.request("GET", f"/v1/repo/{repo_name}/recipe/{bake_name}/dependency-graph")

    def get_recreation_plan(self, bake_name: str, *, repo_name: str) -> dict[str, Any]:
        """Ordered steps; `bakehouse recipe replay` (bakehouse.replay) runs them into another repo."""
        return self._client.request("GET", f"/v1/repo/{repo_name}/recipe/{bake_name}/recreation-plan")


# -- async ---------------------------------------------------------------------------------------


class AsyncClient:
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
        self._http = http_client or httpx.AsyncClient(**_http_settings(base_url, api_key), timeout=timeout)
        self.poll_interval = poll_interval
        self.repo = AsyncRepos(self)
        self.prompts = AsyncPrompts(self)
        self.targets = AsyncTargets(self)
        self.bakes = AsyncBakes(self)
        self.jobs = AsyncJobs(self)

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return _json_or_raise(await self._http.request(method, path, **kwargs))

    async def health(self) -> dict[str, Any]:
        return await self.request("GET", "/v1/health")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _AsyncResource:
    def __init__(self, client: AsyncClient):
        self._client = client


class AsyncRepos(_AsyncResource):
    async def create(self, *, repo_name: str, base_model: str | None = None) -> dict[str, Any]:
        body = {"repo_name": repo_name, **({"base_model": base_model} if base_model else {})}
        return await self._client.request("POST", "/v1/repo", json=body)

    async def get(self, repo_name: str) -> dict[str, Any]:
        return await self._client.request("GET", f"/v1/repo/{repo_name}")

    async def list(self) -> list[str]:
        return (await self._client.request("GET", "/v1/repo"))["repos"]


class AsyncPrompts(_AsyncResource):
    async def create(self, repo_name: str, *, prompt_name: str, messages: list[dict[str, Any]],
                     tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body = {"prompt_name": prompt_name, "messages": messages, **({"tools": tools} if tools else {})}
        return await self._client.request("POST", f"/v1/repo/{repo_name}/prompts", json=body)

    async def get(self, prompt_name: str, *, repo_name: str) -> dict[str, Any]:
        return await self._client.request("GET", f"/v1/repo/{repo_name}/prompts/{prompt_name}")

    async def list(self, repo_name: str) -> list[str]:
        return (await self._client.request("GET", f"/v1/repo/{repo_name}/prompts"))["prompts"]


class AsyncTargets(_AsyncResource):
    def __init__(self, client: AsyncClient):
        super().__init__(client)
        self.stim = AsyncJob(client, "stim")
        self.rollout = AsyncJob(client, "rollout")

    async def create(self, repo_name: str, *, target_name: str, template: str = "default",
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"target_name": target_name, "template": template, "overrides": overrides}
        return await self._client.request("POST", f"/v1/repo/{repo_name}/targets", json=body)

    async def get(self, target_name: str, *, repo_name: str) -> dict[str, Any]:
        return await self._client.request("GET", f"/v1/repo/{repo_name}/targets/{target_name}")

    async def list(self, repo_name: str) -> list[str]:
        return (await self._client.request("GET", f"/v1/repo/{repo_name}/targets"))["targets"]

    async def delete(self, target_name: str, *, repo_name: str) -> dict[str, Any]:
        return await self._client.request("DELETE", f"/v1/repo/{repo_name}/targets/{target_name}")

    async def validate(self, repo_name: str, *, target_name: str, template: str = "default",
                       overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"target_name": target_name, "template": template, "overrides": overrides}
        return await self._client.request("POST", f"/v1/repo/{repo_name}/targets/validate", json=body)


class AsyncJobs(_AsyncResource):
    """`client.jobs` of an AsyncClient; see `Jobs`."""

    async def list(self, **filters: Any) -> dict[str, Any]:
        return await self._client.request("GET", "/v1/jobs", params=_job_filters(filters))


class AsyncJob(_AsyncResource):
    """`client.targets.stim` and `client.targets.rollout` of an AsyncClient; see `Job`."""

    def __init__(self, client: AsyncClient, kind: str):
        super().__init__(client)
        self.kind = kind

    async def run(self, target_name: str, *, repo_name: str, poll: bool = True, poll_interval: float | None = None,
                  timeout: float | None = None, raise_on_failure: bool = True,
                  on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        job = await self._client.request("POST", _job_path(self.kind, target_name, repo_name))
        if not poll:
            return job
        return await self.wait(target_name, repo_name=repo_name, job=job, poll_interval=poll_interval,
                               timeout=timeout, raise_on_failure=raise_on_failure, on_progress=on_progress)

    async def wait(self, target_name: str, *, repo_name: str, job: dict[str, Any] | None = None,
                   poll_interval: float | None = None, timeout: float | None = None, raise_on_failure: bool = True,
                   on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        return await _afollow(self._client._http, f"{_job_path(self.kind, target_name, repo_name)}/events",
                              job or await self.get(target_name, repo_name=repo_name),
                              lambda: self.get(target_name, repo_name=repo_name), in_progress=IN_PROGRESS,
                              what=f"{self.kind} of {repo_name}/{target_name}",
                              poll_interval=poll_interval or self._client.poll_interval, timeout=timeout,
                              raise_on_failure=raise_on_failure, on_progress=on_progress)

    async def get(self, target_name: str, *, repo_name: str) -> dict[str, Any]:
        return await self._client.request("GET", _job_path(self.kind, target_name, repo_name))

    async def cancel(self, target_name: str, *, repo_name: str) -> dict[str, Any]:
        return await self._client.request("POST", f"{_job_path(self.kind, target_name, repo_name)}/cancel")

    async def delete_output(self, target_name: str, *, repo_name: str) -> dict[str, Any]:
        return await self._client.request("DELETE", _job_path(self.kind, target_name, repo_name))

    async def get_output(self, target_name: str, *, repo_name: str, limit: int = 100,
                         offset: int = 0, include_logprobs: bool = False) -> dict[str, Any]:
        return await self._client.request("GET", f"{_job_path(self.kind, target_name, repo_name)}/output",
                                          params=_output_params(limit, offset, include_logprobs))

    async def iter_output(self, target_name: str, *, repo_name: str, page_size: int = 1000,
                          allow_partial: bool = False, include_logprobs: bool = False) -> AsyncIterator[dict[str, Any]]:
        offset = 0
        while True:
            page = await self.get_output(target_name, repo_name=repo_name, limit=page_size, offset=offset,
                                         include_logprobs=include_logprobs)
            if offset == 0:
                _check_first_page(page, f"{self.kind} of {repo_name}/{target_name}", allow_partial)
            for row in page["output"]:
                yield row
            offset += len(page["output"])
            if not page["has_more"] or not page["output"]:
                return

    async def read_dataframe(self, target_name: str, *, repo_name: str, allow_partial: bool = False):
        return _dataframe([row async for row in self.iter_output(target_name, repo_name=repo_name, allow_partial=allow_partial)])

    async def iter_training_rows(self, target_name: str, *, repo_name: str) -> AsyncIterator[dict[str, Any]]:
        async for row in self.iter_output(target_name, repo_name=repo_name):
            if (example := _training_row(row)) is not None:
                yield example


class AsyncBakes(_AsyncResource):
    """`client.bakes` of an AsyncClient; see `Bakes`."""

    async def create(self, repo_name: str, *, bake_name: str, template: str = "default",
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"bake_name": bake_name, "template": template, "overrides": overrides}
        return await self._client.request("POST", _bake_path(repo_name), json=body)

    async def get(self, bake_name: str, *, repo_name: str) -> dict[str, Any]:
        return await self._client.request("GET", _bake_path(repo_name, bake_name))

    async def list(self, repo_name: str) -> list[str]:
        return (await self._client.request("GET", _bake_path(repo_name)))["bakes"]

    async def delete(self, bake_name: str, *, repo_name: str) -> dict[str, Any]:
        return await self._client.request("DELETE", _bake_path(repo_name, bake_name))

    async def validate(self, repo_name: str, *, bake_name: str, template: str = "default",
                       overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"bake_name": bake_name, "template": template, "overrides": overrides}
        return await self._client.request("POST", f"{_bake_path(repo_name)}/validate", json=body)

    async def run(self, bake_name: str, *, repo_name: str, poll: bool = True, poll_interval: float | None = None,
                  timeout: float | None = None, raise_on_failure: bool = True,
                  on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        bake = await self._client.request("POST", _bake_path(repo_name, bake_name))
        if not poll:
            return bake
        return await _afollow(self._client._http, f"{_bake_path(repo_name, bake_name)}/events", bake,
                              lambda: self.get(bake_name, repo_name=repo_name), in_progress=BAKE_IN_PROGRESS,
                              what=f"bake {repo_name}/{bake_name}", poll_interval=poll_interval or self._client.poll_interval,
                              timeout=timeout, raise_on_failure=raise_on_failure, on_progress=on_progress)

    async def cancel(self, bake_name: str, *, repo_name: str) -> dict[str, Any]:
        return await self._client.request("POST", f"{_bake_path(repo_name, bake_name)}/cancel")

    async def get_metrics(self, bake_name: str, *, repo_name: str, offset: int = 0,
                          limit: int | None = None) -> list[dict[str, Any]]:
        params = {"offset": offset, **({"limit": limit} if limit else {})}
        return await self._client.request("GET", f"{_bake_path(repo_name, bake_name)}/metrics", params=params)

    async def iter_metrics(self, bake_name: str, *, repo_name: str, page_size: int = 1000) -> AsyncIterator[dict[str, Any]]:
        offset = 0
        while page := await self.get_metrics(bake_name, repo_name=repo_name, offset=offset, limit=page_size):
            for row in page:
                yield row
            offset += len(page)

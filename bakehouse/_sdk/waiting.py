"""The decisions of waiting for a job and of reading pages, made once for both transports.

Waiting is a generator of steps (httpx's auth flows work the same way): it yields what it needs
done (a `Request` to fetch the status, a `Sleep`, an `EventStream` to follow) and receives the
result; `Client` runs the steps with blocking calls, `AsyncClient` with awaits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import httpx

from bakehouse._sdk.errors import JobFailed, JobNotComplete, JobTimeout
from bakehouse._sdk.models import Response

if TYPE_CHECKING:
    from bakehouse._sdk.requests import Request

J = TypeVar("J", bound=Response)
Progress = Callable[[Any], None]

IN_PROGRESS = ("not_started", "pending", "running")
BAKE_IN_PROGRESS = ("not_started", "preparing", "pending", "running", "incomplete")  # as Bread's SDK waits
STREAM_READ_TIMEOUT = 40.0  # the server pings every 15 s; silence past this means the stream is stuck


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass
class EventStream:
    """A job's Server-Sent Events, fed line by line: each `progress` event is shown to `on_progress`
    as the job's status with the event's fields. Any trouble (an older server without the endpoint,
    a proxy that blocks streaming, a stuck connection) ends the stream quietly: polling goes on."""

    path: str
    job: Response
    deadline: float | None
    on_progress: Progress | None
    _event: str = field(default="message", init=False)
    _data: list[str] = field(default_factory=list, init=False)

    def timeout(self) -> httpx.Timeout:
        left = None if self.deadline is None else self.deadline - time.monotonic()
        return httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT if left is None else max(0.1, min(STREAM_READ_TIMEOUT, left)))

    @staticmethod
    def opened(response: httpx.Response) -> bool:
        """Whether the server answered with an event stream (else: poll)."""
        return response.status_code == 200 and response.headers.get("content-type", "").startswith("text/event-stream")

    def feed(self, line: str) -> bool:
        """Take one line; True once the wait's deadline passed (stop reading)."""
        if not line:
            if self._data and self._event == "progress" and self.on_progress:
                update = json.loads("\n".join(self._data))
                self.on_progress(type(self.job).model_validate({**self.job.to_dict(), **update}))
            self._event, self._data = "message", []
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                self._event = value
            elif name == "data":
                self._data.append(value)
            # ids, retries and ": ping" comments: nothing to act on here
        return self.deadline is not None and time.monotonic() > self.deadline


@dataclass(frozen=True)
class Wait(Generic[J]):
    """How to wait for one job or bake: until its status leaves `in_progress`."""

    fetch: Request[J]  # its status
    events_path: str
    in_progress: tuple[str, ...]
    what: str  # names it in JobTimeout
    poll_interval: float
    timeout: float | None
    raise_on_failure: bool
    on_progress: Progress | None

    def steps(self, first: J) -> Generator[Request[J] | Sleep | EventStream, Any, J]:
        """Follow the event stream while the server streams, then (or instead) poll; show every
        status seen to `on_progress`. Raises JobTimeout after `timeout` s, JobFailed on `failed`."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        job = first
        if job.status in self.in_progress:
            yield EventStream(self.events_path, job, deadline, self.on_progress)
            job = yield self.fetch
        while job.status in self.in_progress:
            self._show(job)
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(f"{self.what} still {job.status} after {self.timeout}s")
            yield Sleep(self.poll_interval)
            job = yield self.fetch
        self._show(job)
        if job.status == "failed" and self.raise_on_failure:
            raise JobFailed(job)
        return job

    def _show(self, job: J) -> None:
        if self.on_progress:
            self.on_progress(job)


P = TypeVar("P")


@dataclass
class Pages(Generic[P]):
    """Reading rows a page at a time from offset 0: send `next_request()` until it is None, and
    give each answer to `rows_of`, which returns the page's rows."""

    request_at: Callable[[int], Request[P]]  # the page at an offset
    rows_and_more: Callable[[P], tuple[list[dict[str, Any]], bool]]  # a page's rows; whether more may follow
    check_first: Callable[[P], None] = lambda page: None
    _offset: int | None = 0

    def next_request(self) -> Request[P] | None:
        return None if self._offset is None else self.request_at(self._offset)

    def rows_of(self, page: P) -> list[dict[str, Any]]:
        if self._offset == 0:
            self.check_first(page)
        rows, more = self.rows_and_more(page)
        self._offset = self._offset + len(rows) if more and rows else None
        return rows


def check_complete(status: Any, where: str, allow_partial: bool) -> None:
    """Refuse to read all of a job that is not complete, unless `allow_partial`."""
    if status.status != "complete" and not allow_partial:
        raise JobNotComplete(f"{where} is {status.status} ({status.lines} rows so far); "
                             "pass allow_partial=True (CLI: --partial) to read them")

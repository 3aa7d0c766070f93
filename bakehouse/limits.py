"""Request limits the API enforces before any work: body size and a per-key request rate."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(BaseException):
    """Raised from `receive`; a BaseException so that the framework's body parsing, which turns any
    Exception into a 400, lets it through to the middleware that answers 413."""


class BodySizeLimit:
    """ASGI middleware: refuse bodies over `max_bytes` (413) by header and while reading, so a huge
    or lying upload is never held in memory."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = f'{{"message":"Request body larger than {self.max_bytes} bytes","code":"PAYLOAD_TOO_LARGE"}}'.encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"x-should-retry", b"false")]})
        await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class Allowance:
    """What one request's `RateLimiter.take` decided, and the key's bucket after it."""

    wait: float  # 0 when the request may go ahead, else the seconds until it may
    limit: int  # requests per hour
    tokens: float  # left in the bucket after this request
    seconds_to_full: float

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(math.floor(self.tokens)),
            "X-RateLimit-Reset": str(math.ceil(self.seconds_to_full)),
        }


class RateLimiter:
    """A token bucket per key: `per_hour` requests an hour, bursts up to the same number."""

    def __init__(self, per_hour: int):
        self.per_hour = per_hour
        self.capacity = float(per_hour)
        self.rate = per_hour / 3600.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> Allowance:
        """A token for one request of `key` if the bucket has one (`wait` 0), else how long to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            if not wait:
                tokens -= 1
            self._buckets[key] = (tokens, now)
        return Allowance(wait, self.per_hour, tokens, (self.capacity - tokens) / self.rate)


class RateLimitHeaders:
    """ASGI middleware: the `Allowance` that authentication left in the request's state goes out as
    X-RateLimit-* headers on whatever the response is, error responses included. Requests that
    never authenticated carry none."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The request's `state` is this dict (Starlette keeps it in the scope), shared with the route.
        state = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            allowance = state.get("rate_limit")
            if message["type"] == "http.response.start" and allowance is not None:
                added = [(name.lower().encode(), value.encode()) for name, value in allowance.headers().items()]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))

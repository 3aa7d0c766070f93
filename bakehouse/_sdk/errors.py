"""Every error the SDK raises, under one root: `except bakehouse.BakehouseError` catches them all.

The root is the one the server's layers raise too (targets.errors), so code that runs both (the CLI,
tests, a worker that calls another server) needs one `except`.

    BakehouseError
    ├── APIError                  the server answered with an error (`status_code`, `code`, `message`)
    │   ├── BadRequestError       400 ... InternalServerError 5xx
    ├── APIConnectionError        no answer: the server cannot be reached, or did not answer in time
    ├── UnexpectedResponseError   an answer that is not what the API's schema says (another version?)
    ├── JobFailed                 a waited-for job ended `failed` (`job` holds its status)
    ├── JobTimeout                a wait ran past its `timeout`
    └── JobNotComplete            reading all of a job's output before it is complete
"""

from __future__ import annotations

from typing import Any

import httpx

from targets.errors import BakehouseError


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


_BY_STATUS = {400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
              409: ConflictError, 422: UnprocessableEntityError, 429: RateLimitError}


def raise_for_status(response: httpx.Response) -> None:
    """Raise the APIError subclass of an error response, with the server's message."""
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text}
    message = body.get("message") or str(body.get("detail") or response.reason_phrase)
    cls = _BY_STATUS.get(response.status_code, InternalServerError if response.status_code >= 500 else APIError)
    raise cls(response.status_code, message, body.get("code"), body)


class APIConnectionError(BakehouseError):
    """No answer from the server (refused, unreachable, timed out); the httpx error is `__cause__`."""

    @classmethod
    def of(cls, error: httpx.TransportError) -> APIConnectionError:
        server = error.request.url.copy_with(path="/", query=None)
        return cls(f"cannot reach the server at {server}: {error}")


class UnexpectedResponseError(BakehouseError):
    """A successful answer whose body does not have its schema's shape (a server of another
    version, or a proxy's page); `body` holds what came back."""

    def __init__(self, message: str, body: Any = None):
        super().__init__(message)
        self.body = body


class JobFailed(BakehouseError):
    def __init__(self, job: Any):
        super().__init__(f"job failed: {job.get('error')}")
        self.job = job


class JobTimeout(BakehouseError): ...


class JobNotComplete(BakehouseError):
    """Reading all of a job's output while it is not complete would silently give part of it."""

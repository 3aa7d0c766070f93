"""Bread's error envelope, `{"message", "code"}`, on every refusal of the API, and the exception
handlers that answer with it (`add_exception_handlers`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from bakehouse import schemas as s
from repo_store.records import RecordError
from targets import BakehouseError, Conflict, InvalidInput, NotFound, ValidationFailed

STATUS_BY_ERROR = {ValidationFailed: 422, InvalidInput: 400, NotFound: 404, Conflict: 409}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": s.ErrorResponse, "description": "Not possible now (INVALID_INPUT)"},
    401: {"model": s.ErrorResponse, "description": "Missing or invalid API key"},
    413: {"model": s.ErrorResponse, "description": "Request body too large"},
    429: {"model": s.ErrorResponse, "description": "Rate limit of the key reached (see Retry-After)"},
    403: {"model": s.ErrorResponse, "description": "The key's scope does not allow this"},
    404: {"model": s.ErrorResponse, "description": "No such resource in this workspace"},
    409: {"model": s.ErrorResponse, "description": "Exists with different content (immutable)"},
    422: {"model": s.ValidationErrorResponse, "description": "Invalid name, config or parameter"},
    500: {"model": s.ErrorResponse, "description": "Internal server error"},
}


class AuthError(Exception):
    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None):
        self.status, self.message, self.code, self.headers = status, message, code, headers


def error_response(status: int, message: str, code: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    headers = dict(headers or {})
    if status in (400, 401, 403, 404, 409, 422):
        headers["x-should-retry"] = "false"  # Bread's SDK retries 409 unless told not to
    return JSONResponse({"message": message, "code": code, **extra}, status_code=status, headers=headers)


async def domain_error(request: Request, error: BakehouseError) -> JSONResponse:
    status = next((code for cls, code in STATUS_BY_ERROR.items() if isinstance(error, cls)), 500)
    return error_response(status, error.message, error.code)


async def auth_error(request: Request, error: AuthError) -> JSONResponse:
    return error_response(error.status, error.message, error.code, headers=error.headers)


async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = {404: "RESOURCE_NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(error.status_code, "HTTP_ERROR")
    headers = dict(error.headers or {})
    if error.status_code == 405:
        # Starlette lists only the first matching route's methods; a path has one route per method.
        # Among matching routes the literal one wins (`/prompts/batch` over `/prompts/{prompt_name}`).
        matching = [r for r in request.app.routes
                    if isinstance(r, APIRoute) and r.matches(request.scope)[0] != Match.NONE]
        fewest = min((r.path.count("{") for r in matching), default=0)
        headers["Allow"] = ", ".join(sorted({m for r in matching if r.path.count("{") == fewest for m in r.methods}))
    return error_response(error.status_code, str(error.detail), code, headers=headers)


async def schema_error(request: Request, error: RequestValidationError) -> JSONResponse:
    # FastAPI's `detail` list stays for clients that read it; the envelope says it in one line.
    details = error.errors()
    summary = "; ".join(f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in details[:5])
    safe = [{k: v for k, v in d.items() if k in ("loc", "msg", "type")} for d in details]
    return error_response(422, f"Invalid request: {summary}", "VALIDATION_ERROR", detail=safe)


async def unreadable_record(request: Request, error: RecordError) -> JSONResponse:
    # A job file this version cannot read (a newer bakehouse wrote it, or it is damaged): say which,
    # so an operator can upgrade or repair, instead of a bare internal error.
    return error_response(500, str(error), "UNREADABLE_RECORD")


async def unexpected(request: Request, error: Exception) -> JSONResponse:
    return error_response(500, "Internal server error", "INTERNAL_ERROR")


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BakehouseError, domain_error)
    app.add_exception_handler(AuthError, auth_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, schema_error)
    app.add_exception_handler(RecordError, unreadable_record)
    app.add_exception_handler(Exception, unexpected)

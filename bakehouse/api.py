"""The Bread-compatible REST API: thin routes over bakehouse.service; schemas in bakehouse.schemas."""

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import anyio
import httpx
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from bakehouse import schemas as s
from bakehouse.bake_routes import add_bake_routes
from bakehouse.chat_routes import add_chat_routes
from bakehouse.events import JobWatches, job_events
from bakehouse.job_index import JobFilter, JobIndex
from bakehouse.limits import BodySizeLimit, RateLimiter, RateLimitHeaders, retry_after_header
from bakehouse.recipe_routes import add_recipe_routes
from bakehouse.runner import LocalRunner
from bakehouse.service import JobReport, Runner, Service
from bakehouse.serving import ChatServing
from bakehouse.usage import UsageRecorder
from bakehouse.viewer import mount_viewer
from repo_store import MAX_PAGE_LIMIT, ApiKey, JobStatus, Store
from repo_store.downloads import LinkRefused
from targets import BakehouseError, Conflict, InvalidInput, NotFound, ValidationFailed

VERSION = "0.1.0"
STATUS_BY_ERROR = {ValidationFailed: 422, InvalidInput: 400, NotFound: 404, Conflict: 409}


class AuthError(Exception):
    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None):
        self.status, self.message, self.code, self.headers = status, message, code, headers


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    headers = dict(headers or {})
    if status in (400, 401, 403, 404, 409, 422):
        headers["x-should-retry"] = "false"  # Bread's SDK retries 409 unless told not to
    return JSONResponse({"message": message, "code": code, **extra}, status_code=status, headers=headers)


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


def create_app(
    store: Store,
    runner: Runner | None = None,
    *,
    max_body_bytes: int | None = None,
    rate_limit_per_hour: int | None = None,
    serving: ChatServing | None = None,
) -> FastAPI:
    """The API over `store`. Limits default to BAKEHOUSE_MAX_BODY_BYTES (10 MB) and
    BAKEHOUSE_RATE_LIMIT_PER_HOUR (36,000 requests per key, bursts included). Key usage is written
    to storage every BAKEHOUSE_USAGE_FLUSH_SECONDS (5) while the app runs, and at its shutdown."""
    runner = runner or LocalRunner(store.url)
    serving = serving or ChatServing()
    upstream = httpx.AsyncClient()  # to the model servers behind /v1/chat/completions
    usage = UsageRecorder(store.keys, flush_every=float(os.environ.get("BAKEHOUSE_USAGE_FLUSH_SECONDS", 5)))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        usage.start()
        try:
            yield
        finally:
            usage.close()
            await upstream.aclose()
            await anyio.to_thread.run_sync(serving.close)

    app = FastAPI(title="bakehouse (Bread-compatible API)", version=VERSION, lifespan=lifespan)
    app.state.runner = runner
    job_index = app.state.job_index = JobIndex(store, runner)
    app.state.usage = usage
    app.state.serving = serving
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes or int(os.environ.get("BAKEHOUSE_MAX_BODY_BYTES", 10_000_000)))
    limiter = RateLimiter(rate_limit_per_hour or int(os.environ.get("BAKEHOUSE_RATE_LIMIT_PER_HOUR", 36_000)))
    bearer = HTTPBearer(auto_error=False)

    @app.exception_handler(BakehouseError)
    async def domain_error(request: Request, error: BakehouseError) -> JSONResponse:
        status = next((code for cls, code in STATUS_BY_ERROR.items() if isinstance(error, cls)), 500)
        return _error(status, error.message, error.code)

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, error: AuthError) -> JSONResponse:
        return _error(error.status, error.message, error.code, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "RESOURCE_NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(error.status_code, "HTTP_ERROR")
        headers = dict(error.headers or {})
        if error.status_code == 405:
            # Starlette lists only the first matching route's methods; a path has one route per method.
            # Among matching routes the literal one wins (`/prompts/batch` over `/prompts/{prompt_name}`).
            matching = [r for r in app.routes if isinstance(r, APIRoute) and r.matches(request.scope)[0] != Match.NONE]
            fewest = min((r.path.count("{") for r in matching), default=0)
            headers["Allow"] = ", ".join(sorted({m for r in matching if r.path.count("{") == fewest for m in r.methods}))
        return _error(error.status_code, str(error.detail), code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def schema_error(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's `detail` list stays for clients that read it; the envelope says it in one line.
        details = error.errors()
        summary = "; ".join(f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in details[:5])
        safe = [{k: v for k, v in d.items() if k in ("loc", "msg", "type")} for d in details]
        return _error(422, f"Invalid request: {summary}", "VALIDATION_ERROR", detail=safe)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return _error(500, "Internal server error", "INTERNAL_ERROR")

    def authenticate(needed: str):
        def dependency(
            request: Request,
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> ApiKey:
            if credentials is None:
                raise AuthError(401, "Missing API key: send 'Authorization: Bearer <key>'", "UNAUTHORIZED")
            key = store.keys.verify(credentials.credentials)
            if key is None:
                raise AuthError(401, "Invalid API key", "UNAUTHORIZED")
            usage.record(key.key_id)
            # Every authenticated request costs a token, refused ones too, and its response tells
            # the figures (RateLimitHeaders adds them, also to error responses raised from here on).
            allowance = request.state.rate_limit = limiter.take(key.key_id)
            if allowance.wait:
                raise AuthError(429, "Too many requests for this key; slow down", "RATE_LIMITED",
                                headers={"Retry-After": retry_after_header(allowance.wait)})
            if not key.allows(needed):
                raise AuthError(403, f"This key has '{key.scope}' scope; this needs '{needed}'", "FORBIDDEN")
            return key

        return dependency

    def reader(key: Annotated[ApiKey, Depends(authenticate("read"))]) -> Service:
        return Service(store.workspace(key.workspace), runner, job_index)

    def writer(key: Annotated[ApiKey, Depends(authenticate("write"))]) -> Service:
        return Service(store.workspace(key.workspace), runner, job_index)

    Read = Annotated[Service, Depends(reader)]
    Write = Annotated[Service, Depends(writer)]
    # Accepted on every call for SDK compatibility; acting for another user is not supported.
    UserId = Annotated[str | None, Query(description="Ignored (Bread's master-key override)")]
    Offset = Annotated[int, Query(ge=0, description="Starting line number (0-indexed)")]
    Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT, description="Number of lines to return (max 1000)")]
    Include = Annotated[Literal["logprobs"] | None, Query(
        description="bakehouse extension: `logprobs` adds each rollout row's `response_token_ids`, "
                    "`teacher_top_ids` and `teacher_top_logprobs` (null where not recorded)")]

    LastEventId = Annotated[str | None, Header(description="Resume an event stream after this event id")]
    watches = app.state.watches = JobWatches()

    v1 = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)
    EXISTED: dict[int | str, dict[str, Any]] = {200: {"description": "Already existed with identical content"}}

    @v1.get("/health", response_model=s.HealthResponse, tags=["health"], responses={500: ERROR_RESPONSES[500]})
    def health() -> s.HealthResponse:
        return s.HealthResponse(status="healthy", version=VERSION)

    # -- jobs ------------------------------------------------------------------------------------

    @v1.get("/jobs", response_model=s.JobList, tags=["jobs"],
            description="bakehouse extension: every stim, rollout and bake job of the key's workspace, newest first.")
    def list_jobs(
        service: Read,
        repo: Annotated[str | None, Query(description="Only this repo's jobs")] = None,
        target: Annotated[str | None, Query(description="Only this target's stim and rollout")] = None,
        bake: Annotated[str | None, Query(description="Only this bake")] = None,
        kind: Literal["stim", "rollout", "bake"] | None = None,
        status: Literal["not_started", "running", "complete", "failed"] | None = None,
        created_after: Annotated[datetime | None, Query(description="ISO 8601; inclusive")] = None,
        created_before: Annotated[datetime | None, Query(description="ISO 8601; exclusive")] = None,
        offset: Offset = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        user_id: UserId = None,
    ):
        where = JobFilter(repo, target, bake, kind, status, _unix(created_after), _unix(created_before))
        total, entries = service.list_jobs(where, offset=offset, limit=limit)
        return s.JobList(total=total, offset=offset, limit=limit, jobs=[s.listed_job(e) for e in entries])

    # -- repos -----------------------------------------------------------------------------------

    @v1.get("/repo", response_model=s.RepoList | s.PaginatedRepoList, tags=["repo"])
    def list_repos(
        service: Read, include_metadata: bool = False, offset: Offset = 0,
        limit: Annotated[int | None, Query(ge=1)] = None, user_id: UserId = None,
    ):
        names = service.ws.list_repos()
        if not include_metadata:
            return s.RepoList(repos=names)
        window = names[offset : None if limit is None else offset + limit]
        repos = [s.RepoResponse(**service.ws.get_repo(n).model_dump()) for n in window]
        return s.PaginatedRepoList(
            repos=repos, offset=offset, limit=limit or max(len(names), 1),
            has_more=offset + len(window) < len(names), total=len(names),
        )

    def _create_repo(service: Service, body: s.RepoCreate, response: Response) -> s.RepoResponse:
        repo, created = service.create_repo(body.repo_name, body.base_model)
        response.status_code = 201 if created else 200
        return s.RepoResponse(**repo.model_dump())

    @v1.post("/repo", response_model=s.RepoResponse, status_code=201, responses=EXISTED, tags=["repo"])
    def create_repo(body: s.RepoCreate, service: Write, response: Response, user_id: UserId = None):
        return _create_repo(service, body, response)

    @v1.put("/repo", response_model=s.RepoResponse, deprecated=True, tags=["repo"])
    def set_repo(body: s.RepoCreate, service: Write, response: Response, user_id: UserId = None):
        _create_repo(service, body, response)
        response.status_code = 200
        return s.RepoResponse(**service.ws.get_repo(body.repo_name).model_dump())

    @v1.get("/repo/{repo_name}", response_model=s.RepoResponse, tags=["repo"])
    def get_repo(repo_name: str, service: Read, user_id: UserId = None):
        return s.RepoResponse(**service.ws.get_repo(repo_name).model_dump())

    add_recipe_routes(v1, Read, UserId)  # the repo's tree, and bakes' dependency graphs and recreation plans

    # -- prompts ---------------------------------------------------------------------------------

    def _prompt(spec) -> s.PromptResponse:
        data = spec.model_dump(mode="json", exclude_none=True)
        return s.PromptResponse(prompt_name=data["prompt_name"], messages=data["messages"], tools=data.get("tools"))

    @v1.get("/repo/{repo_name}/prompts", response_model=s.PromptList, tags=["prompts"])
    def list_prompts(repo_name: str, service: Read, user_id: UserId = None):
        return s.PromptList(prompts=service.ws.list_prompts(repo_name))

    @v1.post("/repo/{repo_name}/prompts", response_model=s.PromptResponse, status_code=201, responses=EXISTED, tags=["prompts"])
    def create_prompt(repo_name: str, body: s.PromptCreate, service: Write, response: Response, user_id: UserId = None):
        prompt, created = service.create_prompt(repo_name, body.prompt_name, body.messages, body.tools)
        response.status_code = 201 if created else 200
        return _prompt(prompt)

    def batch_prompts(repo_name: str, body: s.BatchPromptSet, service: Write, user_id: UserId = None):
        return s.BatchResponse(**service.create_prompts(repo_name, body.prompts))

    # Bread's deprecated PUT forms of the batch endpoints behave like the POSTs.
    for method, deprecated in (("POST", False), ("PUT", True)):
        v1.add_api_route("/repo/{repo_name}/prompts/batch", batch_prompts, methods=[method], deprecated=deprecated,
                         response_model=s.BatchResponse, tags=["prompts"], name=f"batch_prompts_{method.lower()}")

    @v1.get("/repo/{repo_name}/prompts/{prompt_name}", response_model=s.PromptResponse, tags=["prompts"])
    def get_prompt(repo_name: str, prompt_name: str, service: Read, user_id: UserId = None):
        return _prompt(service.ws.get_prompt(repo_name, prompt_name))

    @v1.put("/repo/{repo_name}/prompts/{prompt_name}", response_model=s.PromptResponse, deprecated=True, tags=["prompts"])
    def set_prompt(repo_name: str, prompt_name: str, body: s.PromptSet, service: Write, user_id: UserId = None):
        prompt, _ = service.create_prompt(repo_name, prompt_name, body.messages, body.tools)
        return _prompt(prompt)

    # -- targets ---------------------------------------------------------------------------------

    def _target(target) -> s.TargetResponse:
        return s.TargetResponse(target_name=target.target_name, config=target.config.model_dump(mode="json", exclude_none=True))

    @v1.get("/repo/{repo_name}/targets", response_model=s.TargetList, tags=["targets"])
    def list_targets(repo_name: str, service: Read, user_id: UserId = None):
        return s.TargetList(targets=service.ws.list_targets(repo_name))

    @v1.post("/repo/{repo_name}/targets", response_model=s.TargetResponse, status_code=201, responses=EXISTED, tags=["targets"])
    def create_target(repo_name: str, body: s.TargetCreate, service: Write, response: Response, user_id: UserId = None):
        target, created = service.create_target(repo_name, body.target_name, body.template, body.overrides)
        response.status_code = 201 if created else 200
        return _target(target)

    def batch_targets(repo_name: str, body: s.BatchTargetCreate, service: Write, user_id: UserId = None):
        return s.BatchResponse(**service.create_targets(repo_name, [t.model_dump() for t in body.targets]))

    for method, deprecated in (("POST", False), ("PUT", True)):
        v1.add_api_route("/repo/{repo_name}/targets/batch", batch_targets, methods=[method], deprecated=deprecated,
                         response_model=s.BatchResponse, tags=["targets"], name=f"batch_targets_{method.lower()}")

    @v1.post("/repo/{repo_name}/targets/validate", response_model=s.ValidationReport, tags=["targets"],
             description="bakehouse extension: check a create body (resolved against its template) and show "
                         "sample stimuli and estimates; creates nothing.")
    def validate_target(repo_name: str, body: dict[str, Any], service: Read, user_id: UserId = None):
        return service.validate_target(repo_name, body)

    @v1.post("/repo/{repo_name}/bakes/validate", response_model=s.ValidationReport, tags=["bakes"],
             description="bakehouse extension: check a bake create body and estimate its steps; creates nothing.")
    def validate_bake(repo_name: str, body: dict[str, Any], service: Read, user_id: UserId = None):
        return service.validate_bake(repo_name, body)

    @v1.get("/repo/{repo_name}/targets/{target_name}", response_model=s.TargetResponse, tags=["targets"])
    def get_target(repo_name: str, target_name: str, service: Read, user_id: UserId = None):
        return _target(service.ws.get_target(repo_name, target_name))

    @v1.put("/repo/{repo_name}/targets/{target_name}", response_model=s.TargetResponse, deprecated=True, tags=["targets"])
    def set_target(repo_name: str, target_name: str, body: s.TargetConfigBody, service: Write, user_id: UserId = None):
        target, _ = service.create_target(repo_name, target_name, body.template, body.overrides)
        return _target(target)

    @v1.delete("/repo/{repo_name}/targets/{target_name}", response_model=s.DeleteResponse, tags=["targets"])
    def delete_target(repo_name: str, target_name: str, service: Write, user_id: UserId = None):
        service.delete_target(repo_name, target_name)
        return s.DeleteResponse()

    # -- stim and rollout jobs -------------------------------------------------------------------

    def _job(status: JobStatus, config: dict, kind: str) -> dict[str, Any]:
        body = {
            "status": status.status,
            "lines": status.lines,
            "config": config,
            "error": status.error,
            "job_id": status.attempt,
            "progress_percent": status.progress_percent,
            "summary": status.summary or None,
            **s.observed(status),
        }
        if kind == "rollout":
            body["total_expected"] = status.total_expected
        return body

    def _report(report: JobReport, kind: str) -> dict[str, Any]:
        return {**_job(report.status, report.config, kind), "stats": report.stats,
                "status_events": [e.to_json() for e in report.events if e.kind == "status"]}

    for kind, Status, Output in (
        ("stim", s.StimResponse, s.StimOutputResponse),
        ("rollout", s.RolloutResponse, s.RolloutOutputResponse),
    ):

        def routes(kind=kind, Status=Status, Output=Output) -> None:
            path = f"/repo/{{repo_name}}/targets/{{target_name}}/{kind}"

            @v1.post(path, response_model=Status, tags=[kind], name=f"run_{kind}",
                     description=f"Start the {kind} job (no body). Repeating it returns the current job.")
            def run(repo_name: str, target_name: str, service: Write, user_id: UserId = None):
                return _report(service.start_job(repo_name, target_name, kind), kind)

            @v1.post(f"{path}/cancel", response_model=Status, tags=[kind], name=f"cancel_{kind}",
                     description=f"bakehouse extension: stop the {kind} job, keeping its finished rows.")
            def cancel(repo_name: str, target_name: str, service: Write, user_id: UserId = None):
                return _report(service.cancel_job(repo_name, target_name, kind), kind)

            @v1.get(path, response_model=Status, tags=[kind], name=f"get_{kind}")
            def get(repo_name: str, target_name: str, service: Read, user_id: UserId = None):
                return _report(service.job_status(repo_name, target_name, kind), kind)

            @v1.delete(path, response_model=s.JobOutputDeleteResponse, tags=[kind], name=f"delete_{kind}",
                       description=f"bakehouse extension: remove the {kind} job's output (all its files) so that it "
                                   "can be made anew. Refused while the job runs or is queued, and while something reads "
                                   "it: the rollout reads the stim, a running bake its dataset rollouts.")
            def delete(repo_name: str, target_name: str, service: Write, user_id: UserId = None):
                deleted = service.delete_job_output(repo_name, target_name, kind)
                return s.JobOutputDeleteResponse(
                    message=f"Deleted the {kind} output of target '{target_name}'",
                    deleted=s.DeletedCounts(lines=deleted.lines, files=deleted.files),
                )

            @v1.get(f"{path}/events", tags=[kind], name=f"get_{kind}_events", response_class=EventSourceResponse,
                    responses={200: {"content": {"text/event-stream": {}}, "description": EVENTS_DESCRIPTION}},
                    description=f"bakehouse extension: the {kind} job's live events (Server-Sent Events).")
            def events(repo_name: str, target_name: str, service: Read, last_event_id: LastEventId = None,
                       user_id: UserId = None):
                watch = watches.watch(service.job_watch_key(repo_name, target_name, kind),
                                      lambda: service.job_snapshot(repo_name, target_name, kind))
                return EventSourceResponse(job_events(watch, _event_position(last_event_id)), ping=15)

            @v1.get(f"{path}/parquet", response_model=s.ParquetParts, tags=[kind], name=f"get_{kind}_parquet",
                    description=f"bakehouse extension: the storage URLs of the {kind} job's Parquet parts (the "
                                "committed ones, in output order), for readers with access to the storage itself.")
            def parquet(repo_name: str, target_name: str, service: Read, user_id: UserId = None):
                status, urls = service.parquet_urls(repo_name, target_name, kind)
                return s.ParquetParts(status=status.status, lines=status.lines, urls=urls)

            @v1.get(f"{path}/output", response_model=Output, tags=[kind], name=f"get_{kind}_output")
            def output(repo_name: str, target_name: str, service: Read, offset: Offset = 0, limit: Limit = 100,
                       include: Include = None, user_id: UserId = None):
                status, config, page = service.read_output(repo_name, target_name, kind, offset, limit,
                                                           include_tokens=include == "logprobs")
                body = _job(status, config, kind)
                body.update(lines=page.lines, offset=offset, limit=limit, has_more=page.has_more)
                # Rows are stored as JSON text: splice them in rather than decode, validate and re-encode
                # a thousand nested objects per page.
                head = json.dumps(body, separators=(",", ":"))[:-1]
                return Response(f'{head},"output":[{",".join(page.rows_json_with_tokens())}]}}', media_type="application/json")

        routes()

    add_bake_routes(v1, Read, Write, UserId, EXISTED)
    add_chat_routes(v1, Read, serving, upstream)

    @v1.get("/repo/{repo_name}/bakes/{bake_name}/events", tags=["bakes"], name="get_bake_events",
            response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": EVENTS_DESCRIPTION}},
            description="bakehouse extension: the bake's live events (Server-Sent Events): step and loss as it trains.")
    def bake_events(repo_name: str, bake_name: str, service: Read, last_event_id: LastEventId = None,
                    user_id: UserId = None):
        watch = watches.watch(service.bake_watch_key(repo_name, bake_name),
                              lambda: service.bake_snapshot(repo_name, bake_name))
        return EventSourceResponse(job_events(watch, _event_position(last_event_id)), ping=15)

    @v1.get("/downloads/{token}", tags=["bakes"], response_class=Response,
            responses={200: {"content": {"application/gzip": {}}}, 403: ERROR_RESPONSES[403]},
            description="A file behind a signed, expiring link from `.../download` (no API key: the link is the key).")
    def download(token: str):
        try:
            path = store.downloads.verify(token)
        except LinkRefused as refused:
            return _error(403, str(refused), "FORBIDDEN")
        data = store.storage.read_bytes(path)
        if data is None:
            return _error(404, "The file behind this link no longer exists", "RESOURCE_NOT_FOUND")
        name = path.rsplit("/", 1)[-1]
        return Response(data, media_type="application/gzip", headers={"Content-Disposition": f'attachment; filename="{name}"'})
    app.include_router(v1)
    mount_viewer(app)
    return app


EVENTS_DESCRIPTION = (
    "`text/event-stream`. Events: `progress` (status, phase, lines, progress_percent; bakes: step, total_steps, "
    "loss {latest_loss}), `status` (each status or phase change: status, phase, timestamp, note), `log` (message, timestamp). "
    "A finished job replays its timeline and the stream ends; otherwise it ends after the final status. "
    "Timeline events carry ids: reconnect with `Last-Event-ID` to continue after one.")


def _unix(moment: datetime | None) -> float | None:
    """A query's datetime as Unix seconds (one without a zone is UTC)."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def _event_position(last_event_id: str | None) -> int | None:
    """The timeline position a reconnecting client saw last (an id it cannot have got is ignored)."""
    return int(last_event_id) if last_event_id and last_event_id.isdigit() else None


def app_from_env() -> FastAPI:
    """For `uvicorn bakehouse.api:app_from_env --factory` (storage from BAKEHOUSE_DATA)."""
    from bakehouse.settings import apply_defaults

    apply_defaults()
    return create_app(Store())

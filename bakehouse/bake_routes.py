"""Bread's bake endpoints: define, start, watch and list bakes, and the signed
download links of their checkpoints.

Routes stay thin over bakehouse.service, like the rest of the API. (No `from __future__ import
annotations` here: FastAPI must see the dependency types `Read` and `Write` themselves, not their names.)
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sse_starlette import EventSourceResponse

from bakehouse import schemas as s
from bakehouse.dependencies import EXISTED, LastEventId, Read, Stored, UserId, Watches, Write, event_position
from bakehouse.errors import ERROR_RESPONSES, error_response
from bakehouse.events import job_events
from bakehouse.job_routes import EVENT_STREAM
from bakehouse.service import Service
from repo_store import MAX_PAGE_LIMIT
from repo_store.downloads import LinkRefused

router = APIRouter(tags=["bakes"])
BAKES = "/repo/{repo_name}/bakes"
BAKE = BAKES + "/{bake_name}"


def bake_response(service: Service, repo_name: str, bake_name: str, answer=None) -> s.BakeResponse:
    """The bake's status (`answer`: one the service already gave, from a start or a cancel)."""
    bake, status, figures = answer or service.bake_status(repo_name, bake_name)
    return s.BakeResponse(
        bake_name=bake.bake_name, status=status.status, lines=None,
        config=bake.config.model_dump(mode="json", exclude_none=True), error=status.error,
        job_id=status.attempt, progress_percent=status.progress_percent, summary=status.summary or None,
        **s.observed(status), **figures,
    )


@router.get(BAKES, response_model=s.BakeList)
def list_bakes(repo_name: s.ResourceName, service: Read, user_id: UserId = None):
    return s.BakeList(bakes=service.list_bakes(repo_name))


@router.post(BAKES, response_model=s.BakeResponse, status_code=201, responses=EXISTED)
def create_bake(repo_name: s.ResourceName, body: s.BakeCreate, service: Write, response: Response,
                user_id: UserId = None):
    bake, created = service.create_bake(repo_name, body.bake_name, body.template, body.overrides)
    response.status_code = 201 if created else 200
    return bake_response(service, repo_name, bake.bake_name)


def batch_bakes(repo_name: s.ResourceName, body: s.BatchBakeCreate, service: Write, user_id: UserId = None):
    return s.BatchResponse(**service.create_bakes(repo_name, [b.model_dump() for b in body.bakes]))


# Bread's deprecated PUT form of the batch endpoint behaves like the POST. The literal paths come
# before `{bake_name}`, which "batch" and "validate" would match too.
router.add_api_route(f"{BAKES}/batch", batch_bakes, methods=["POST"], response_model=s.BatchResponse,
                     name="batch_bakes_post")
router.add_api_route(f"{BAKES}/batch", batch_bakes, methods=["PUT"], response_model=s.BatchResponse,
                     name="batch_bakes_put", deprecated=True)


@router.post(f"{BAKES}/validate", response_model=s.ValidationReport,
             description="bakehouse extension: check a bake create body and estimate its steps; creates nothing.")
def validate_bake(repo_name: s.ResourceName, body: dict[str, Any], service: Read, user_id: UserId = None):
    return service.validate_bake(repo_name, body)


@router.get(BAKE, response_model=s.BakeResponse,
            description="The bake's definition and training status: poll this while it trains.")
def get_bake(repo_name: s.ResourceName, bake_name: s.ResourceName, service: Read, user_id: UserId = None):
    return bake_response(service, repo_name, bake_name)


@router.put(BAKE, response_model=s.BakeResponse, deprecated=True)
def set_bake(repo_name: s.ResourceName, bake_name: s.ResourceName, body: s.BakeConfigBody, service: Write,
             user_id: UserId = None):
    service.create_bake(repo_name, bake_name, body.template, body.overrides)
    return bake_response(service, repo_name, bake_name)


@router.post(BAKE, response_model=s.BakeResponse, name="run_bake",
             description="Start the bake (no body). Repeating it returns the running or finished bake.")
def run_bake(repo_name: s.ResourceName, bake_name: s.ResourceName, service: Write, user_id: UserId = None):
    return bake_response(service, repo_name, bake_name, service.start_bake(repo_name, bake_name))


@router.post(BAKE + "/cancel", response_model=s.BakeResponse, name="cancel_bake",
             description="bakehouse extension: stop the bake, keeping its checkpoints; a later run resumes.")
def cancel_bake(repo_name: s.ResourceName, bake_name: s.ResourceName, service: Write, user_id: UserId = None):
    return bake_response(service, repo_name, bake_name, service.cancel_bake(repo_name, bake_name))


@router.delete(BAKE, response_model=s.DeleteResponse)
def delete_bake(repo_name: s.ResourceName, bake_name: s.ResourceName, service: Write, user_id: UserId = None):
    service.delete_bake(repo_name, bake_name)
    return s.DeleteResponse()


@router.get(BAKE + "/metrics", response_model=list[dict[str, Any]],
            description="Rows of train_log_metrics.jsonl, one per logged step, each step once. "
                        "offset/limit (a bakehouse extension) page through long bakes.")
def bake_metrics(repo_name: s.ResourceName, bake_name: s.ResourceName, service: Read,
                 offset: Annotated[int, Query(ge=0)] = 0,
                 limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE_LIMIT)] = None, user_id: UserId = None):
    rows = service.bake_metrics(repo_name, bake_name)
    return rows[offset: None if limit is None else offset + limit]


@router.get(BAKE + "/download", response_model=s.DownloadUrlResponse,
            description="An expiring URL of a checkpoint's adapter (.tar.gz: adapter_model.safetensors and "
                        "adapter_config.json). `checkpoint` is the step (default: the latest).")
def download_bake(repo_name: s.ResourceName, bake_name: s.ResourceName, service: Read, request: Request,
                  checkpoint: Annotated[int | None, Query(ge=0)] = None,
                  expires_in: Annotated[int, Query(ge=1, le=604800)] = 3600, user_id: UserId = None):
    return service.bake_download(repo_name, bake_name, checkpoint, expires_in, str(request.base_url))


@router.get(BAKE + "/events", name="get_bake_events", response_class=EventSourceResponse, responses=EVENT_STREAM,
            description="bakehouse extension: the bake's live events (Server-Sent Events): step and loss as it trains.")
def bake_events(repo_name: s.ResourceName, bake_name: s.ResourceName, service: Read, watches: Watches,
                last_event_id: LastEventId = None, user_id: UserId = None):
    watch = watches.watch(service.bake_watch_key(repo_name, bake_name),
                          lambda: service.bake_snapshot(repo_name, bake_name))
    return EventSourceResponse(job_events(watch, event_position(last_event_id)), ping=15)


@router.get("/downloads/{token}", response_class=Response,
            responses={200: {"content": {"application/gzip": {}}}, 403: ERROR_RESPONSES[403]},
            description="A file behind a signed, expiring link from `.../download` (no API key: the link is the key).")
def download(token: str, store: Stored):
    try:
        path = store.downloads.verify(token)
    except LinkRefused as refused:
        return error_response(403, str(refused), "FORBIDDEN")
    data = store.storage.read_bytes(path)
    if data is None:
        return error_response(404, "The file behind this link no longer exists", "RESOURCE_NOT_FOUND")
    name = path.rsplit("/", 1)[-1]
    return Response(data, media_type="application/gzip", headers={"Content-Disposition": f'attachment; filename="{name}"'})

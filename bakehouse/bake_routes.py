"""Bread's bake endpoints (spec §2.2 rows 25–33): define, start, watch and list bakes.

Routes stay thin over bakehouse.service, like the rest of the API; `create_app` adds them with its
own authentication dependencies. (No `from __future__ import annotations` here: FastAPI must see
the dependency types `Read` and `Write` themselves, not their names.)
"""


from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from bakehouse import schemas as s
from repo_store import MAX_PAGE_LIMIT


def add_bake_routes(v1: APIRouter, Read: Any, Write: Any, UserId: Any, existed: dict) -> None:
    path = "/repo/{repo_name}/bakes"

    def _bake(service, repo_name: str, bake_name: str, answer=None) -> s.BakeResponse:
        bake, status, figures = answer or service.bake_status(repo_name, bake_name)
        return s.BakeResponse(
            bake_name=bake.bake_name, status=status.status, lines=None,
            config=bake.config.model_dump(mode="json", exclude_none=True), error=status.error,
            job_id=status.attempt, progress_percent=status.progress_percent, summary=status.summary or None,
            **s.observed(status), **figures,
        )

    @v1.get(path, response_model=s.BakeList, tags=["bakes"])
    def list_bakes(repo_name: str, service: Read, user_id: UserId = None):
        return s.BakeList(bakes=service.list_bakes(repo_name))

    @v1.post(path, response_model=s.BakeResponse, status_code=201, responses=existed, tags=["bakes"])
    def create_bake(repo_name: str, body: s.BakeCreate, service: Write, response: Response, user_id: UserId = None):
        bake, created = service.create_bake(repo_name, body.bake_name, body.template, body.overrides)
        response.status_code = 201 if created else 200
        return _bake(service, repo_name, bake.bake_name)

    def batch_bakes(repo_name: str, body: s.BatchBakeCreate, service: Write, user_id: UserId = None):
        return s.BatchResponse(**service.create_bakes(repo_name, [b.model_dump() for b in body.bakes]))

    for method, deprecated in (("POST", False), ("PUT", True)):
        v1.add_api_route(f"{path}/batch", batch_bakes, methods=[method], deprecated=deprecated,
                         response_model=s.BatchResponse, tags=["bakes"], name=f"batch_bakes_{method.lower()}")

    @v1.get(path + "/{bake_name}", response_model=s.BakeResponse, tags=["bakes"],
            description="The bake's definition and training status: poll this while it trains.")
    def get_bake(repo_name: str, bake_name: str, service: Read, user_id: UserId = None):
        return _bake(service, repo_name, bake_name)

    @v1.put(path + "/{bake_name}", response_model=s.BakeResponse, deprecated=True, tags=["bakes"])
    def set_bake(repo_name: str, bake_name: str, body: s.BakeConfigBody, service: Write, user_id: UserId = None):
        service.create_bake(repo_name, bake_name, body.template, body.overrides)
        return _bake(service, repo_name, bake_name)

    @v1.post(path + "/{bake_name}", response_model=s.BakeResponse, tags=["bakes"], name="run_bake",
             description="Start the bake (no body). Repeating it returns the running or finished bake.")
    def run_bake(repo_name: str, bake_name: str, service: Write, user_id: UserId = None):
        return _bake(service, repo_name, bake_name, service.start_bake(repo_name, bake_name))

    @v1.post(path + "/{bake_name}/cancel", response_model=s.BakeResponse, tags=["bakes"], name="cancel_bake",
             description="bakehouse extension: stop the bake, keeping its checkpoints; a later run resumes.")
    def cancel_bake(repo_name: str, bake_name: str, service: Write, user_id: UserId = None):
        return _bake(service, repo_name, bake_name, service.cancel_bake(repo_name, bake_name))

    @v1.delete(path + "/{bake_name}", response_model=s.DeleteResponse, tags=["bakes"])
    def delete_bake(repo_name: str, bake_name: str, service: Write, user_id: UserId = None):
        service.delete_bake(repo_name, bake_name)
        return s.DeleteResponse()

    @v1.get(path + "/{bake_name}/metrics", response_model=list[dict[str, Any]], tags=["bakes"],
            description="Rows of train_log_metrics.jsonl, one per logged step, each step once. "
                        "offset/limit (a bakehouse extension) page through long bakes.")
    def bake_metrics(repo_name: str, bake_name: str, service: Read,
                     offset: Annotated[int, Query(ge=0)] = 0,
                     limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE_LIMIT)] = None, user_id: UserId = None):
        rows = service.bake_metrics(repo_name, bake_name)
        return rows[offset: None if limit is None else offset + limit]

    @v1.get(path + "/{bake_name}/download", response_model=s.DownloadUrlResponse, tags=["bakes"],
            description="An expiring URL of a checkpoint's adapter (.tar.gz: adapter_model.safetensors and "
                        "adapter_config.json). `checkpoint` is the step (default: the latest).")
    def download_bake(repo_name: str, bake_name: str, service: Read, request: Request,
                      checkpoint: Annotated[int | None, Query(ge=0)] = None,
                      expires_in: Annotated[int, Query(ge=1, le=604800)] = 3600, user_id: UserId = None):
        return service.bake_download(repo_name, bake_name, checkpoint, expires_in, str(request.base_url))

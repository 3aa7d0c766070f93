"""Bread's repo endpoints: list, create and read repos. (No `from __future__ import annotations`:
FastAPI must see the dependency types themselves.)"""

from typing import Annotated

from fastapi import APIRouter, Query, Response

from bakehouse import schemas as s
from bakehouse.dependencies import EXISTED, Offset, Read, UserId, Write
from bakehouse.service import Service

router = APIRouter(tags=["repo"])


@router.get("/repo", response_model=s.RepoList | s.PaginatedRepoList)
def list_repos(service: Read, include_metadata: bool = False, offset: Offset = 0,
               limit: Annotated[int | None, Query(ge=1)] = None, user_id: UserId = None):
    names = service.list_repos()
    if not include_metadata:
        return s.RepoList(repos=names)
    window = names[offset: None if limit is None else offset + limit]
    repos = [s.RepoResponse(**service.get_repo(n).model_dump()) for n in window]
    return s.PaginatedRepoList(repos=repos, offset=offset, limit=limit or max(len(names), 1),
                               has_more=offset + len(window) < len(names), total=len(names))


def _create_repo(service: Service, body: s.RepoCreate, response: Response) -> s.RepoResponse:
    repo, created = service.create_repo(body.repo_name, body.base_model)
    response.status_code = 201 if created else 200
    return s.RepoResponse(**repo.model_dump())


@router.post("/repo", response_model=s.RepoResponse, status_code=201, responses=EXISTED)
def create_repo(body: s.RepoCreate, service: Write, response: Response, user_id: UserId = None):
    return _create_repo(service, body, response)


@router.put("/repo", response_model=s.RepoResponse, deprecated=True)
def set_repo(body: s.RepoCreate, service: Write, response: Response, user_id: UserId = None):
    _create_repo(service, body, response)
    response.status_code = 200
    return s.RepoResponse(**service.get_repo(body.repo_name).model_dump())


@router.get("/repo/{repo_name}", response_model=s.RepoResponse)
def get_repo(repo_name: s.ResourceName, service: Read, user_id: UserId = None):
    return s.RepoResponse(**service.get_repo(repo_name).model_dump())

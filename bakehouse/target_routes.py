"""Bread's target endpoints: a repo's targets, one by one or in a batch, and the dry run of a create.
(No `from __future__ import annotations`: FastAPI must see the dependency types themselves.)"""

from typing import Any

from fastapi import APIRouter, Response

from bakehouse import schemas as s
from bakehouse.dependencies import EXISTED, Read, UserId, Write
from repo_store import StoredTarget

router = APIRouter(tags=["targets"])
TARGETS = "/repo/{repo_name}/targets"


def target_response(target: StoredTarget) -> s.TargetResponse:
    return s.TargetResponse(target_name=target.target_name, config=target.config.model_dump(mode="json", exclude_none=True))


@router.get(TARGETS, response_model=s.TargetList)
def list_targets(repo_name: s.ResourceName, service: Read, user_id: UserId = None):
    return s.TargetList(targets=service.list_targets(repo_name))


@router.post(TARGETS, response_model=s.TargetResponse, status_code=201, responses=EXISTED)
def create_target(repo_name: s.ResourceName, body: s.TargetCreate, service: Write, response: Response,
                  user_id: UserId = None):
    target, created = service.create_target(repo_name, body.target_name, body.template, body.overrides)
    response.status_code = 201 if created else 200
    return target_response(target)


def batch_targets(repo_name: s.ResourceName, body: s.BatchTargetCreate, service: Write, user_id: UserId = None):
    return s.BatchResponse(**service.create_targets(repo_name, [t.model_dump() for t in body.targets]))


# Bread's deprecated PUT form of the batch endpoint behaves like the POST. The literal paths come
# before `{target_name}`, which "batch" and "validate" would match too.
router.add_api_route(f"{TARGETS}/batch", batch_targets, methods=["POST"], response_model=s.BatchResponse,
                     name="batch_targets_post")
router.add_api_route(f"{TARGETS}/batch", batch_targets, methods=["PUT"], response_model=s.BatchResponse,
                     name="batch_targets_put", deprecated=True)


@router.post(f"{TARGETS}/validate", response_model=s.ValidationReport,
             description="bakehouse extension: check a create body (resolved against its template) and show "
                         "sample stimuli and estimates; creates nothing.")
def validate_target(repo_name: s.ResourceName, body: dict[str, Any], service: Read, user_id: UserId = None):
    return service.validate_target(repo_name, body)


@router.get(TARGETS + "/{target_name}", response_model=s.TargetResponse)
def get_target(repo_name: s.ResourceName, target_name: s.ResourceName, service: Read, user_id: UserId = None):
    return target_response(service.get_target(repo_name, target_name))


@router.put(TARGETS + "/{target_name}", response_model=s.TargetResponse, deprecated=True)
def set_target(repo_name: s.ResourceName, target_name: s.ResourceName, body: s.TargetConfigBody, service: Write,
               user_id: UserId = None):
    target, _ = service.create_target(repo_name, target_name, body.template, body.overrides)
    return target_response(target)


@router.delete(TARGETS + "/{target_name}", response_model=s.DeleteResponse)
def delete_target(repo_name: s.ResourceName, target_name: s.ResourceName, service: Write, user_id: UserId = None):
    service.delete_target(repo_name, target_name)
    return s.DeleteResponse()

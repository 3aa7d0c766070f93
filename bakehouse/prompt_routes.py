"""Bread's prompt endpoints: a repo's prompts, one by one or in a batch. (No `from __future__ import
annotations`: FastAPI must see the dependency types themselves.)"""

from fastapi import APIRouter, Response

from bakehouse import schemas as s
from bakehouse.dependencies import EXISTED, Read, UserId, Write
from targets import PromptSpec

router = APIRouter(tags=["prompts"])
PROMPTS = "/repo/{repo_name}/prompts"


def prompt_response(spec: PromptSpec) -> s.PromptResponse:
    data = spec.model_dump(mode="json", exclude_none=True)
    return s.PromptResponse(prompt_name=data["prompt_name"], messages=data["messages"], tools=data.get("tools"))


@router.get(PROMPTS, response_model=s.PromptList)
def list_prompts(repo_name: s.ResourceName, service: Read, user_id: UserId = None):
    return s.PromptList(prompts=service.list_prompts(repo_name))


@router.post(PROMPTS, response_model=s.PromptResponse, status_code=201, responses=EXISTED)
def create_prompt(repo_name: s.ResourceName, body: s.PromptCreate, service: Write, response: Response,
                  user_id: UserId = None):
    prompt, created = service.create_prompt(repo_name, body.prompt_name, body.messages, body.tools)
    response.status_code = 201 if created else 200
    return prompt_response(prompt)


def batch_prompts(repo_name: s.ResourceName, body: s.BatchPromptSet, service: Write, user_id: UserId = None):
    return s.BatchResponse(**service.create_prompts(repo_name, body.prompts))


# Bread's deprecated PUT form of the batch endpoint behaves like the POST. Both come before
# `{prompt_name}`, which "batch" would match too.
router.add_api_route(f"{PROMPTS}/batch", batch_prompts, methods=["POST"], response_model=s.BatchResponse,
                     name="batch_prompts_post")
router.add_api_route(f"{PROMPTS}/batch", batch_prompts, methods=["PUT"], response_model=s.BatchResponse,
                     name="batch_prompts_put", deprecated=True)


@router.get(PROMPTS + "/{prompt_name}", response_model=s.PromptResponse)
def get_prompt(repo_name: s.ResourceName, prompt_name: s.ResourceName, service: Read, user_id: UserId = None):
    return prompt_response(service.get_prompt(repo_name, prompt_name))


@router.put(PROMPTS + "/{prompt_name}", response_model=s.PromptResponse, deprecated=True)
def set_prompt(repo_name: s.ResourceName, prompt_name: s.ResourceName, body: s.PromptSet, service: Write,
               user_id: UserId = None):
    prompt, _ = service.create_prompt(repo_name, prompt_name, body.messages, body.tools)
    return prompt_response(prompt)

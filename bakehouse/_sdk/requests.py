"""Every request the SDK sends, built once: method, path, query, body, and the type its answer is
read as. `Client` and `AsyncClient` send the same `Request` (httpx's BaseClient -> Client /
AsyncClient split); the resources in resources.py subclass these builders with one sync and one
async method per request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from bakehouse import schemas
from bakehouse._sdk import models as m
from bakehouse._sdk.errors import UnexpectedResponseError
from bakehouse._sdk.waiting import BAKE_IN_PROGRESS, IN_PROGRESS, Pages, Progress, Wait, check_complete

T = TypeVar("T")


@dataclass(frozen=True)
class Request(Generic[T]):
    method: str
    path: str
    read: Callable[[Any], T]  # the answer's JSON -> what the SDK method returns
    params: dict[str, Any] | None = None
    json: Any = None

    def parse(self, body: Any) -> T:
        """The answer as this request's type; UnexpectedResponseError when it does not fit."""
        try:
            return self.read(body)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
            raise UnexpectedResponseError(f"the answer to {self.method} {self.path} is not what this SDK expects "
                                          f"({problems}); is the server another version?", body) from None


def _names(schema: type[BaseModel], field: str) -> Callable[[Any], list[str]]:
    """Read a list of names (`{"repos": [...]}`) as the list itself, checked against its schema."""
    return lambda body: getattr(schema.model_validate(body), field)


def _metrics(body: Any) -> list[dict[str, Any]]:
    return body  # rows of whatever the trainer logged: no schema to check them against


def _metric_rows(page: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    return page, True  # a metrics page says nothing of what follows: read until one is empty


def _output_rows(page: m.OutputPage) -> tuple[list[dict[str, Any]], bool]:
    return page.output, page.has_more


class RepoRequests:
    def _create(self, repo_name: str, base_model: str | None) -> Request[m.RepoResponse]:
        body = {"repo_name": repo_name, **({"base_model": base_model} if base_model else {})}
        return Request("POST", "/v1/repo", m.RepoResponse.model_validate, json=body)

    def _get(self, repo_name: str) -> Request[m.RepoResponse]:
        return Request("GET", f"/v1/repo/{repo_name}", m.RepoResponse.model_validate)

    def _list(self) -> Request[list[str]]:
        return Request("GET", "/v1/repo", _names(schemas.RepoList, "repos"))

    def _get_tree(self, repo_name: str) -> Request[m.RepoTree]:
        return Request("GET", f"/v1/repo/{repo_name}/tree", m.RepoTree.model_validate)


class PromptRequests:
    def _create(self, repo_name: str, prompt_name: str, messages: list[dict[str, Any]],
                tools: list[dict[str, Any]] | None) -> Request[m.PromptResponse]:
        body = {"prompt_name": prompt_name, "messages": messages, **({"tools": tools} if tools else {})}
        return Request("POST", f"/v1/repo/{repo_name}/prompts", m.PromptResponse.model_validate, json=body)

    def _get(self, prompt_name: str, repo_name: str) -> Request[m.PromptResponse]:
        return Request("GET", f"/v1/repo/{repo_name}/prompts/{prompt_name}", m.PromptResponse.model_validate)

    def _list(self, repo_name: str) -> Request[list[str]]:
        return Request("GET", f"/v1/repo/{repo_name}/prompts", _names(schemas.PromptList, "prompts"))


class TargetRequests:
    def _create(self, repo_name: str, target_name: str, template: str,
                overrides: dict[str, Any] | None) -> Request[m.TargetResponse]:
        body = {"target_name": target_name, "template": template, "overrides": overrides}
        return Request("POST", f"/v1/repo/{repo_name}/targets", m.TargetResponse.model_validate, json=body)

    def _get(self, target_name: str, repo_name: str) -> Request[m.TargetResponse]:
        return Request("GET", f"/v1/repo/{repo_name}/targets/{target_name}", m.TargetResponse.model_validate)

    def _list(self, repo_name: str) -> Request[list[str]]:
        return Request("GET", f"/v1/repo/{repo_name}/targets", _names(schemas.TargetList, "targets"))

    def _delete(self, target_name: str, repo_name: str) -> Request[m.DeleteResponse]:
        return Request("DELETE", f"/v1/repo/{repo_name}/targets/{target_name}", m.DeleteResponse.model_validate)

    def _validate(self, repo_name: str, target_name: str, template: str,
                  overrides: dict[str, Any] | None) -> Request[m.ValidationReport]:
        body = {"target_name": target_name, "template": template, "overrides": overrides}
        return Request("POST", f"/v1/repo/{repo_name}/targets/validate", m.ValidationReport.model_validate, json=body)


class JobsRequests:
    def _list(self, filters: dict[str, Any]) -> Request[m.JobList]:
        params = {name: value.isoformat() if hasattr(value, "isoformat") else value
                  for name, value in filters.items() if value is not None}
        return Request("GET", "/v1/jobs", m.JobList.model_validate, params=params)


class JobRequests:
    """The requests of a target's stim or rollout job (`kind`)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._status = m.StimResponse if kind == "stim" else m.RolloutResponse
        self._page = m.StimOutputResponse if kind == "stim" else m.RolloutOutputResponse

    def _path(self, target_name: str, repo_name: str) -> str:
        return f"/v1/repo/{repo_name}/targets/{target_name}/{self.kind}"

    def _what(self, target_name: str, repo_name: str) -> str:
        return f"{self.kind} of {repo_name}/{target_name}"

    def _start(self, target_name: str, repo_name: str) -> Request[m.StimResponse | m.RolloutResponse]:
        return Request("POST", self._path(target_name, repo_name), self._status.model_validate)

    def _get(self, target_name: str, repo_name: str) -> Request[m.StimResponse | m.RolloutResponse]:
        return Request("GET", self._path(target_name, repo_name), self._status.model_validate)

    def _cancel(self, target_name: str, repo_name: str) -> Request[m.StimResponse | m.RolloutResponse]:
        return Request("POST", f"{self._path(target_name, repo_name)}/cancel", self._status.model_validate)

    def _delete_output(self, target_name: str, repo_name: str) -> Request[m.JobOutputDeleteResponse]:
        return Request("DELETE", self._path(target_name, repo_name), m.JobOutputDeleteResponse.model_validate)

    def _get_output(self, target_name: str, repo_name: str, limit: int, offset: int,
                    include_logprobs: bool) -> Request[m.StimOutputResponse | m.RolloutOutputResponse]:
        params = {"limit": limit, "offset": offset, **({"include": "logprobs"} if include_logprobs else {})}
        return Request("GET", f"{self._path(target_name, repo_name)}/output", self._page.model_validate, params=params)

    def _parquet(self, target_name: str, repo_name: str) -> Request[m.ParquetParts]:
        return Request("GET", f"{self._path(target_name, repo_name)}/parquet", m.ParquetParts.model_validate)

    def _known(self, job: m.JobStatus | dict[str, Any] | None) -> m.JobStatus | None:
        """A status the caller already has, typed (callers of the untyped SDK hold dicts)."""
        return self._status.model_validate(job) if isinstance(job, dict) else job

    def _wait(self, target_name: str, repo_name: str, poll_interval: float, timeout: float | None,
              raise_on_failure: bool, on_progress: Progress | None) -> Wait:
        return Wait(self._get(target_name, repo_name), f"{self._path(target_name, repo_name)}/events", IN_PROGRESS,
                    self._what(target_name, repo_name), poll_interval, timeout, raise_on_failure, on_progress)

    def _pages(self, target_name: str, repo_name: str, page_size: int, allow_partial: bool,
               include_logprobs: bool) -> Pages:
        where = self._what(target_name, repo_name)
        return Pages(lambda offset: self._get_output(target_name, repo_name, page_size, offset, include_logprobs),
                     _output_rows, lambda page: check_complete(page, where, allow_partial))


class BakeRequests:
    @staticmethod
    def _path(repo_name: str, bake_name: str = "") -> str:
        return f"/v1/repo/{repo_name}/bakes" + (f"/{bake_name}" if bake_name else "")

    def _create(self, repo_name: str, bake_name: str, template: str,
                overrides: dict[str, Any] | None) -> Request[m.BakeResponse]:
        body = {"bake_name": bake_name, "template": template, "overrides": overrides}
        return Request("POST", self._path(repo_name), m.BakeResponse.model_validate, json=body)

    def _create_batch(self, repo_name: str, bakes: list[dict[str, Any]]) -> Request[m.BatchResponse]:
        return Request("POST", f"{self._path(repo_name)}/batch", m.BatchResponse.model_validate, json={"bakes": bakes})

    def _get(self, bake_name: str, repo_name: str) -> Request[m.BakeResponse]:
        return Request("GET", self._path(repo_name, bake_name), m.BakeResponse.model_validate)

    def _list(self, repo_name: str) -> Request[list[str]]:
        return Request("GET", self._path(repo_name), _names(schemas.BakeList, "bakes"))

    def _delete(self, bake_name: str, repo_name: str) -> Request[m.DeleteResponse]:
        return Request("DELETE", self._path(repo_name, bake_name), m.DeleteResponse.model_validate)

    def _validate(self, repo_name: str, bake_name: str, template: str,
                  overrides: dict[str, Any] | None) -> Request[m.ValidationReport]:
        body = {"bake_name": bake_name, "template": template, "overrides": overrides}
        return Request("POST", f"{self._path(repo_name)}/validate", m.ValidationReport.model_validate, json=body)

    def _start(self, bake_name: str, repo_name: str) -> Request[m.BakeResponse]:
        return Request("POST", self._path(repo_name, bake_name), m.BakeResponse.model_validate)

    def _download(self, bake_name: str, repo_name: str, checkpoint: int | None,
                  expires_in: int | None) -> Request[m.DownloadUrlResponse]:
        params = {k: v for k, v in {"checkpoint": checkpoint, "expires_in": expires_in}.items() if v is not None}
        return Request("GET", f"{self._path(repo_name, bake_name)}/download", m.DownloadUrlResponse.model_validate,
                       params=params)

    def _cancel(self, bake_name: str, repo_name: str) -> Request[m.BakeResponse]:
        return Request("POST", f"{self._path(repo_name, bake_name)}/cancel", m.BakeResponse.model_validate)

    def _get_metrics(self, bake_name: str, repo_name: str, offset: int,
                     limit: int | None) -> Request[list[dict[str, Any]]]:
        params = {"offset": offset, **({"limit": limit} if limit else {})}
        return Request("GET", f"{self._path(repo_name, bake_name)}/metrics", _metrics, params=params)

    def _wait(self, bake_name: str, repo_name: str, poll_interval: float, timeout: float | None,
              raise_on_failure: bool, on_progress: Progress | None) -> Wait:
        return Wait(self._get(bake_name, repo_name), f"{self._path(repo_name, bake_name)}/events", BAKE_IN_PROGRESS,
                    f"bake {repo_name}/{bake_name}", poll_interval, timeout, raise_on_failure, on_progress)

    def _metric_pages(self, bake_name: str, repo_name: str, page_size: int) -> Pages:
        return Pages(lambda offset: self._get_metrics(bake_name, repo_name, offset, page_size), _metric_rows)


class RecipeRequests:
    def _get_dependency_graph(self, bake_name: str, repo_name: str) -> Request[m.DependencyGraph]:
        return Request("GET", f"/v1/repo/{repo_name}/recipe/{bake_name}/dependency-graph",
                       m.DependencyGraph.model_validate)

    def _get_recreation_plan(self, bake_name: str, repo_name: str) -> Request[m.RecreationPlan]:
        return Request("GET", f"/v1/repo/{repo_name}/recipe/{bake_name}/recreation-plan",
                       m.RecreationPlan.model_validate)

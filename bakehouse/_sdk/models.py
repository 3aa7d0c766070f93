"""Typed responses: the API's own schemas (bakehouse.schemas), as the SDK returns them.

Each class here is its schema plus `Response`, which adds two things the schema must not have on
the server side:
- unknown fields are kept (`extra="allow"`): a newer server's additions never break parsing;
- read by key, a response is the dict the SDK returned before it was typed (`job["status"]`,
  `page["output"]`, `report["errors"][0]["field"]`): exactly the JSON the server sent, nested
  models as dicts. New code reads attributes (`job.status`, `report.errors[0].field`), typed.

`Response` comes last among the bases so that its config wins over the schema's.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from bakehouse import schemas


class Response(BaseModel):
    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict[str, Any]:
        """The fields the server sent (and only those), as JSON values."""
        return self.model_dump(mode="json", exclude_unset=True)

    def keys(self) -> list[str]:
        names = [*type(self).model_fields, *(self.__pydantic_extra__ or {})]
        return [name for name in names if name in self.model_fields_set]

    def __contains__(self, key: object) -> bool:
        return key in self.model_fields_set

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return self.model_dump(mode="json", include={key})[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default


class HealthResponse(schemas.HealthResponse, Response): ...


class RepoResponse(schemas.RepoResponse, Response): ...


class RepoTree(schemas.RepoTree, Response): ...


class PromptResponse(schemas.PromptResponse, Response): ...


class TargetResponse(schemas.TargetResponse, Response): ...


class DeleteResponse(schemas.DeleteResponse, Response): ...


class BatchResponse(schemas.BatchResponse, Response): ...


class ValidationReport(schemas.ValidationReport, Response): ...


class JobList(schemas.JobList, Response): ...


class StimResponse(schemas.StimResponse, Response): ...


class RolloutResponse(schemas.RolloutResponse, Response): ...


class StimOutputResponse(schemas.StimOutputResponse, Response): ...


class RolloutOutputResponse(schemas.RolloutOutputResponse, Response): ...


class ParquetParts(schemas.ParquetParts, Response): ...


class JobOutputDeleteResponse(schemas.JobOutputDeleteResponse, Response): ...


class BakeResponse(schemas.BakeResponse, Response): ...


class DownloadUrlResponse(schemas.DownloadUrlResponse, Response): ...


class DependencyGraph(schemas.DependencyGraph, Response): ...


class RecreationPlan(schemas.RecreationPlan, Response): ...


JobStatus = StimResponse | RolloutResponse | BakeResponse
"""What `run`, `get`, `cancel` and `wait` of a job or bake return."""
OutputPage = StimOutputResponse | RolloutOutputResponse

"""The wire contract: request and response bodies of the Bread-compatible API (Bread's own SDK
validates responses against the same shapes)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from bakehouse.job_index import JobEntry
from repo_store import JobStatus
from repo_store.timeline import iso_time
from targets import Message
from targets.names import MAX_NAME_LENGTH

# targets.names.validate_name as a JSON-schema pattern, so that the OpenAPI schema declares the rule the
# server enforces, no more and no less: its characters, no leading '.', no '..' anywhere (each '.'
# is followed by another allowed character, except one that ends the name). tests/test_abuse.py
# checks that the two agree.
NAME_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$"
ResourceName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)]

class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests ------------------------------------------------------------------------------------


class RepoCreate(_Body):
    repo_name: ResourceName
    base_model: str | None = "Qwen/Qwen3-32B"


class PromptCreate(_Body):
    prompt_name: ResourceName
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None


class PromptSet(_Body):
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None


class BatchPromptSet(_Body):
    prompts: dict[str, list[Message]]


class TargetCreate(_Body):
    target_name: ResourceName
    template: ResourceName
    # Validated by targets.resolve_target, which names every bad field in one message.
    overrides: dict[str, Any] | None = None


class TargetConfigBody(_Body):
    template: ResourceName
    overrides: dict[str, Any] | None = None


class BatchTargetItem(_Body):
    # Names are checked per item, as Bread does: a bad one is reported under `failed` and the
    # other items are still created, so the batch's schema does not refuse it whole.
    target_name: str = Field(description="A name as in a single create; a bad one is reported under `failed`")
    template: str
    overrides: dict[str, Any] | None = None


class BatchTargetCreate(_Body):
    targets: list[BatchTargetItem]


class BakeCreate(_Body):
    bake_name: ResourceName
    template: ResourceName = "default"
    # Validated by targets.bake.BakeConfig, which names every bad field in one message.
    overrides: dict[str, Any] | None = None


class BakeConfigBody(_Body):
    template: ResourceName = "default"
    overrides: dict[str, Any] | None = None


class BatchBakeItem(_Body):
    # Checked per item, like BatchTargetItem.
    bake_name: str = Field(description="A name as in a single create; a bad one is reported under `failed`")
    template: str = "default"
    overrides: dict[str, Any] | None = None


class BatchBakeCreate(_Body):
    bakes: list[BatchBakeItem]


# -- responses -----------------------------------------------------------------------------------


class RepoResponse(BaseModel):
    repo_name: str
    base_model: str


class RepoList(BaseModel):
    repos: list[str]


class PaginatedRepoList(BaseModel):
    repos: list[RepoResponse]
    offset: int
    limit: int
    has_more: bool
    total: int | None = None


class BakeTreeNode(BaseModel):
    status: str = Field(description="The bake job's status: not_started | running | complete | failed")
    config: dict[str, Any] = Field(description="The bake's resolved config")
    checkpoints: list[int] = Field(default_factory=list, description="Committed checkpoint steps, the latest first")
    model_name: list[str] = Field(default_factory=list, description="The same checkpoints as model names")


class RepoTree(BaseModel):
    base_model: str
    bakes: dict[str, BakeTreeNode] = Field(default_factory=dict)
    edges: list[list[str]] = Field(default_factory=list, description=(
        "[\"bake\", child, \"bake\", parent]: the child starts from a checkpoint of the parent"))


class PromptResponse(BaseModel):
    prompt_name: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None


class PromptList(BaseModel):
    prompts: list[str]


class BatchResponse(BaseModel):
    created: list[str]
    failed: dict[str, str]


class TargetResponse(BaseModel):
    target_name: str
    config: dict[str, Any]


class TargetList(BaseModel):
    targets: list[str]


class DeleteResponse(BaseModel):
    message: str = "Resource deleted successfully"


class StatusEvent(BaseModel):
    status: str
    phase: str | None = None
    timestamp: str = Field(description="ISO 8601, UTC")
    note: str | None = None


class JobResponse(BaseModel):
    status: str = Field(description="not_started | running | complete | failed")
    lines: int | None = None
    config: dict[str, Any] | None = None
    error: str | None = None
    job_id: int | None = Field(None, description="Attempt number of the job (it grows when a job resumes)")
    progress_percent: float | None = Field(None, ge=0, le=100)
    summary: dict[str, Any] | None = Field(None, description="Counts of the last attempt: dedup, errors, tokens")
    # bakehouse extensions (observability)
    phase: str | None = Field(None, description="queued | starting | loading_model | generating | training | "
                                                "checkpointing | compacting | complete | failed")
    created_at: str | None = Field(None, description="First asked for (ISO 8601, UTC)")
    started_at: str | None = Field(None, description="The first attempt began")
    completed_at: str | None = None
    stalled: bool = Field(False, description="Running, but no progress for BAKEHOUSE_STALL_SECONDS")
    status_events: list[StatusEvent] | None = Field(None, description="Every status and phase change, oldest first")
    stats: dict[str, Any] | None = Field(None, description="Requests, tokens, errors by kind, latency percentiles, "
                                                           "rates and estimated cost, summed over shards and attempts")


class StimResponse(JobResponse):
    pass


class RolloutResponse(JobResponse):
    total_expected: int | None = Field(None, description="stimuli x num_traj_per_stimulus")


class StimOutputResponse(StimResponse):
    output: list[dict[str, Any]]
    offset: int
    limit: int
    has_more: bool


class RolloutOutputResponse(RolloutResponse):
    output: list[dict[str, Any]]
    offset: int
    limit: int
    has_more: bool


class ParquetParts(BaseModel):
    """bakehouse extension: where a job's committed Parquet parts are, for direct readers."""

    status: str
    lines: int
    urls: list[str]  # local paths or s3://… in output order; complete only when status is "complete"


class BakeResponse(JobResponse):
    bake_name: str | None = None
    model_name: list[str] | None = Field(None, description="Checkpoints as model names, index 0 the latest (when complete)")
    loss: dict[str, float] | None = Field(None, description="latest_loss, final_loss, min_loss, max_loss")


class DownloadUrlResponse(BaseModel):
    url: str
    bake_name: str
    checkpoint: int = Field(description="The checkpoint's step")
    expires_in: int


class BakeList(BaseModel):
    bakes: list[str]


class ErrorResponse(BaseModel):
    message: str
    code: str | None = None


class ValidationErrorResponse(ErrorResponse):
    detail: list[dict[str, Any]] | None = None


class HealthResponse(BaseModel):
    status: str
    api: str = "bread-api"
    version: str


class FieldError(BaseModel):
    field: str
    message: str


class ValidationReport(BaseModel):
    valid: bool
    errors: list[FieldError]
    resolved_config: dict[str, Any] | None = Field(None, description="The config the create would store")
    sample_stimuli: list[dict[str, Any]] = Field(default_factory=list, description="Up to 3, rendered as stim would")
    estimated: dict[str, Any] | None = Field(None, description="What the jobs would make (upper bounds)")


class ListedJob(BaseModel):
    id: str = Field(description="Names the job: <repo>/<target>/<stim|rollout> or <repo>/bakes/<bake>")
    job_id: int | None = Field(None, description="Attempt number, as in the job's own status")
    kind: str
    repo_name: str
    target_name: str | None = None
    bake_name: str | None = None
    status: str
    phase: str | None = None
    lines: int | None = None
    total_expected: int | None = None
    progress_percent: float | None = None
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    stalled: bool = False
    status_events: list[StatusEvent] = Field(default_factory=list)


class JobList(BaseModel):
    total: int
    offset: int
    limit: int
    jobs: list[ListedJob]


def listed_job(entry: JobEntry) -> ListedJob:
    ref, status = entry.ref, entry.status
    bake = ref.kind == "bake"
    return ListedJob(
        id=f"{ref.repo_name}/bakes/{ref.target_name}" if bake else f"{ref.repo_name}/{ref.target_name}/{ref.kind}",
        job_id=status.attempt, kind=ref.kind, repo_name=ref.repo_name,
        target_name=None if bake else ref.target_name, bake_name=ref.target_name if bake else None,
        status=status.status, lines=None if bake else status.lines, total_expected=status.total_expected,
        progress_percent=status.progress_percent, error=status.error,
        status_events=[StatusEvent(**e.to_json()) for e in entry.events], **observed(status),
    )


def observed(status: JobStatus) -> dict[str, Any]:
    """The observability fields every job status carries (phase, times, stalled)."""
    return {"phase": status.phase, "created_at": iso_time(status.created_at), "started_at": iso_time(status.started_at),
            "completed_at": iso_time(status.completed_at), "stalled": status.stalled}


class DeletedCounts(BaseModel):
    lines: int = Field(description="Output lines the job had")
    files: int = Field(description="Files removed: plan, claims, chunk markers, parts, manifest")


class JobOutputDeleteResponse(BaseModel):
    message: str
    deleted: DeletedCounts


# -- recipes (Bread's dependency graph and recreation plan) ----------------------------------------


class DependencyGraph(BaseModel):
    base_model: str
    bakes: dict[str, dict[str, Any]] = Field(description="Resolved bake configs")
    targets: dict[str, dict[str, Any]] = Field(description="Resolved target configs")
    prompts: dict[str, str | None] = Field(description="Prompt name -> its file in the repo")
    edges: list[list[str]] = Field(description=(
        "[source_type, source_name, target_type, target_name]: the source depends on the target (a parent "
        "or template bake, a dataset or template target, a prompt, a bake whose checkpoint a target rolls out with)"))


class RecreationPlanStep(BaseModel):
    step: int = Field(description="1-based position in the plan")
    action: str = Field(description="create_prompt | create_target | run_stim | run_rollout | create_bake | run_bake")
    resource_type: str = Field(description="prompt | target | bake")
    resource_name: str
    dependencies: list[str] = Field(description="'<type>:<name>' made, or '<type>:<name>:<status>' reached first")
    config: dict[str, Any] = Field(description=(
        "create_prompt: {name, content: {messages, tools}}; create_target and create_bake: the create body "
        "as stored ({template, overrides}) and what it resolved to (config); runs: {}"))


class BakeResource(BaseModel):
    bake_name: str
    model_names: list[str] = Field(description="The bake's checkpoints as model names, the latest first")


class RecreationResources(BaseModel):
    prompts: list[str]
    targets: list[str]
    bakes: list[BakeResource]


class RecreationPlan(BaseModel):
    base_model: str
    total_steps: int
    steps: list[RecreationPlanStep]
    resources: RecreationResources
    checkpoint_prefix: str = Field(description=(
        "bakehouse extension: '<workspace>/<repo>' of this repo's checkpoint names; a replay into another repo "
        "rewrites model names under it to the replayed bakes' checkpoints"))


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """The error shape of the OpenAI-compatible endpoints (`/v1/chat/completions`, `/v1/models`)."""

    error: OpenAIError

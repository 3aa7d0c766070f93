"""Job endpoints: the listing of every job (`GET /v1/jobs`), and each target's stim and rollout job
(start, cancel, status, events, output, Parquet parts, delete). The stim and rollout routes are the
same functions, registered once per kind by `add_job_routes` with the kind bound. (No `from
__future__ import annotations`: FastAPI must see the dependency types themselves.)
"""

import json
import re
from datetime import datetime, timezone
from functools import partial
from typing import Annotated, Any, Callable, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BeforeValidator
from sse_starlette import EventSourceResponse

from bakehouse import schemas as s
from bakehouse.dependencies import Include, LastEventId, Limit, Offset, Read, UserId, Watches, Write, event_position
from bakehouse.events import job_events
from bakehouse.job_index import JobFilter
from bakehouse.service import JobReport
from repo_store import JobStatus

EVENTS_DESCRIPTION = (
    "`text/event-stream`. Events: `progress` (status, phase, lines, progress_percent; bakes: step, total_steps, "
    "loss {latest_loss}), `status` (each status or phase change: status, phase, timestamp, note), `log` (message, timestamp). "
    "A finished job replays its timeline and the stream ends; otherwise it ends after the final status. "
    "Timeline events carry ids: reconnect with `Last-Event-ID` to continue after one.")
EVENT_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": EVENTS_DESCRIPTION}}

router = APIRouter()
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:$|[Tt ]\d{2}:\d{2})")  # a date alone means its midnight


def _date_time_text(value: object) -> object:
    # Pydantic reads numbers as Unix times too; the schema says `date-time`, and so does the server.
    if not isinstance(value, str) or not _DATE_TIME.match(value):
        raise ValueError("must be an ISO 8601 date and time, e.g. 2025-01-31T12:00:00Z (or a date, 2025-01-31)")
    return value


DateTime = Annotated[datetime, BeforeValidator(_date_time_text)]


@router.get("/jobs", response_model=s.JobList, tags=["jobs"],
            description="bakehouse extension: every stim, rollout and bake job of the key's workspace, newest first.")
def list_jobs(
    service: Read,
    repo: Annotated[s.ResourceName | None, Query(description="Only this repo's jobs")] = None,
    target: Annotated[s.ResourceName | None, Query(description="Only this target's stim and rollout")] = None,
    bake: Annotated[s.ResourceName | None, Query(description="Only this bake")] = None,
    kind: Literal["stim", "rollout", "bake"] | None = None,
    status: Literal["not_started", "running", "complete", "failed"] | None = None,
    created_after: Annotated[DateTime | None, Query(description="ISO 8601; inclusive")] = None,
    created_before: Annotated[DateTime | None, Query(description="ISO 8601; exclusive")] = None,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    user_id: UserId = None,
):
    where = JobFilter(repo, target, bake, kind, status, _unix(created_after), _unix(created_before))
    total, entries = service.list_jobs(where, offset=offset, limit=limit)
    return s.JobList(total=total, offset=offset, limit=limit, jobs=[s.listed_job(e) for e in entries])


def _unix(moment: datetime | None) -> float | None:
    """A query's datetime as Unix seconds (one without a zone is UTC)."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


# -- one target's stim or rollout job ------------------------------------------------------------


def job_body(status: JobStatus, config: dict, kind: str) -> dict[str, Any]:
    body = {"status": status.status, "lines": status.lines, "config": config, "error": status.error,
            "job_id": status.attempt, "progress_percent": status.progress_percent,
            "summary": status.summary or None, **s.observed(status)}
    if kind == "rollout":
        body["total_expected"] = status.total_expected
    return body


def report_body(report: JobReport, kind: str) -> dict[str, Any]:
    return {**job_body(report.status, report.config, kind), "stats": report.stats,
            "status_events": [e.to_json() for e in report.events if e.kind == "status"]}


def run_job(kind: str, repo_name: s.ResourceName, target_name: s.ResourceName, service: Write, user_id: UserId = None):
    return report_body(service.start_job(repo_name, target_name, kind), kind)


def cancel_job(kind: str, repo_name: s.ResourceName, target_name: s.ResourceName, service: Write,
               user_id: UserId = None):
    return report_body(service.cancel_job(repo_name, target_name, kind), kind)


def get_job(kind: str, repo_name: s.ResourceName, target_name: s.ResourceName, service: Read, user_id: UserId = None):
    return report_body(service.job_status(repo_name, target_name, kind), kind)


def delete_job_output(kind: str, repo_name: s.ResourceName, target_name: s.ResourceName, service: Write,
                      user_id: UserId = None):
    deleted = service.delete_job_output(repo_name, target_name, kind)
    return s.JobOutputDeleteResponse(message=f"Deleted the {kind} output of target '{target_name}'",
                                     deleted=s.DeletedCounts(lines=deleted.lines, files=deleted.files))


def job_event_stream(kind: str, repo_name: s.ResourceName, target_name: s.ResourceName, service: Read,
                     watches: Watches, last_event_id: LastEventId = None, user_id: UserId = None):
    watch = watches.watch(service.job_watch_key(repo_name, target_name, kind),
                          lambda: service.job_snapshot(repo_name, target_name, kind))
    return EventSourceResponse(job_events(watch, event_position(last_event_id)), ping=15)


def job_parquet(kind: str, repo_name: s.ResourceName, target_name: s.ResourceName, service: Read,
                user_id: UserId = None):
    status, urls = service.parquet_urls(repo_name, target_name, kind)
    return s.ParquetParts(status=status.status, lines=status.lines, urls=urls)


def job_output(kind: str, repo_name: s.ResourceName, target_name: s.ResourceName, service: Read, offset: Offset = 0,
               limit: Limit = 100, include: Include = None, user_id: UserId = None):
    status, config, page = service.read_output(repo_name, target_name, kind, offset, limit,
                                               include_tokens=include == "logprobs")
    body = job_body(status, config, kind)
    body.update(lines=page.lines, offset=offset, limit=limit, has_more=page.has_more)
    # Rows are stored as JSON text: splice them in rather than decode, validate and re-encode a
    # thousand nested objects per page.
    head = json.dumps(body, separators=(",", ":"))[:-1]
    return Response(f'{head},"output":[{",".join(page.rows_json_with_tokens())}]}}', media_type="application/json")


def _for(kind: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    """`handler` for one kind; FastAPI reads the parameters after `kind`."""
    bound = partial(handler, kind)
    bound.__doc__ = None  # not partial's own docstring as the operation's description
    return bound


def add_job_routes(kind: str, status_model: type[s.JobResponse], output_model: type[s.JobResponse]) -> None:
    path = f"/repo/{{repo_name}}/targets/{{target_name}}/{kind}"

    def add(suffix: str, handler: Callable[..., Any], method: str, name: str, **options: Any) -> None:
        router.add_api_route(path + suffix, _for(kind, handler), methods=[method], name=name, tags=[kind], **options)

    add("", run_job, "POST", f"run_{kind}", response_model=status_model,
        description=f"Start the {kind} job (no body). Repeating it returns the current job.")
    add("/cancel", cancel_job, "POST", f"cancel_{kind}", response_model=status_model,
        description=f"bakehouse extension: stop the {kind} job, keeping its finished rows.")
    add("", get_job, "GET", f"get_{kind}", response_model=status_model)
    add("", delete_job_output, "DELETE", f"delete_{kind}", response_model=s.JobOutputDeleteResponse,
        description=f"bakehouse extension: remove the {kind} job's output (all its files) so that it can be made "
                    "anew. Refused while the job runs or is queued, and while something reads it: the rollout "
                    "reads the stim, a running bake its dataset rollouts.")
    add("/events", job_event_stream, "GET", f"get_{kind}_events", response_class=EventSourceResponse, responses=EVENT_STREAM,
        description=f"bakehouse extension: the {kind} job's live events (Server-Sent Events).")
    add("/parquet", job_parquet, "GET", f"get_{kind}_parquet", response_model=s.ParquetParts,
        description=f"bakehouse extension: the storage URLs of the {kind} job's Parquet parts (the committed ones, "
                    "in output order), for readers with access to the storage itself.")
    add("/output", job_output, "GET", f"get_{kind}_output", response_model=output_model)


add_job_routes("stim", s.StimResponse, s.StimOutputResponse)
add_job_routes("rollout", s.RolloutResponse, s.RolloutOutputResponse)

"""`client.repo`, `client.prompts`, `client.targets` (`.stim`, `.rollout`), `client.jobs`,
`client.bakes`, `client.recipes`: one sync and one async class each, over the same request
builders (requests.py) and waiting and paging decisions (waiting.py). The async classes take the
same arguments; see the sync ones for what each method does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from bakehouse._sdk import models as m
from bakehouse._sdk.requests import (
    BakeRequests,
    JobRequests,
    JobsRequests,
    PromptRequests,
    RecipeRequests,
    RepoRequests,
    TargetRequests,
)
from bakehouse._sdk.waiting import Progress, check_complete

if TYPE_CHECKING:
    from bakehouse.client import AsyncClient, Client


def _dataframe(rows: list[dict[str, Any]]):
    import polars as pl

    # Keys such as `error` appear on some rows only: infer the schema from all of them, not the first 100.
    return pl.DataFrame(rows, infer_schema_length=None)


def _training_row(row: dict[str, Any]) -> dict[str, Any] | None:
    """A rollout row as a bake training example, or None when its trajectory failed (`error` set):
    there is nothing to learn from it."""
    response = row.get("response")
    if row.get("error") or not response:
        return None
    answer = {"role": "assistant", "content": response["content"]}
    return {
        "stimulus_id": row.get("stimulus_id"),
        "trajectory_id": row.get("trajectory_id"),
        "teacher_messages": [*row["unconditioned_stimulus"]["messages"], answer],
        "student_messages": [*row["conditioned_stimulus"]["messages"], answer],
    }


# -- sync ----------------------------------------------------------------------------------------


class Repos(RepoRequests):
    def __init__(self, client: Client):
        self._client = client

    def create(self, *, repo_name: str, base_model: str | None = None) -> m.RepoResponse:
        return self._client._send(self._create(repo_name, base_model))

    def get(self, repo_name: str) -> m.RepoResponse:
        return self._client._send(self._get(repo_name))

    def list(self) -> list[str]:
        return self._client._send(self._list())

    def get_tree(self, repo_name: str) -> m.RepoTree:
        """Every bake with its status and checkpoints, and `edges` [bake, child, bake, parent]."""
        return self._client._send(self._get_tree(repo_name))


class Prompts(PromptRequests):
    def __init__(self, client: Client):
        self._client = client

    def create(self, repo_name: str, *, prompt_name: str, messages: list[dict[str, Any]],
               tools: list[dict[str, Any]] | None = None) -> m.PromptResponse:
        return self._client._send(self._create(repo_name, prompt_name, messages, tools))

    def get(self, prompt_name: str, *, repo_name: str) -> m.PromptResponse:
        return self._client._send(self._get(prompt_name, repo_name))

    def list(self, repo_name: str) -> list[str]:
        return self._client._send(self._list(repo_name))


class Targets(TargetRequests):
    def __init__(self, client: Client):
        self._client = client
        self.stim = Job(client, "stim")
        self.rollout = Job(client, "rollout")

    def create(self, repo_name: str, *, target_name: str, template: str = "default",
               overrides: dict[str, Any] | None = None) -> m.TargetResponse:
        return self._client._send(self._create(repo_name, target_name, template, overrides))

    def get(self, target_name: str, *, repo_name: str) -> m.TargetResponse:
        return self._client._send(self._get(target_name, repo_name))

    def list(self, repo_name: str) -> list[str]:
        return self._client._send(self._list(repo_name))

    def delete(self, target_name: str, *, repo_name: str) -> m.DeleteResponse:
        return self._client._send(self._delete(target_name, repo_name))

    def validate(self, repo_name: str, *, target_name: str, template: str = "default",
                 overrides: dict[str, Any] | None = None) -> m.ValidationReport:
        """What `create` would make, or every reason it cannot: {valid, errors, resolved_config,
        sample_stimuli, estimated}. Creates nothing."""
        return self._client._send(self._validate(repo_name, target_name, template, overrides))


class Jobs(JobsRequests):
    """`client.jobs`: every job of the key's workspace."""

    def __init__(self, client: Client):
        self._client = client

    def list(self, **filters: Any) -> m.JobList:
        """{total, offset, limit, jobs}, newest first; filters: repo, target, bake, kind, status,
        created_after, created_before (ISO 8601), limit (≤ 200), offset."""
        return self._client._send(self._list(filters))


class Job(JobRequests):
    """`client.targets.stim` and `client.targets.rollout`."""

    def __init__(self, client: Client, kind: str):
        super().__init__(kind)
        self._client = client

    def run(self, target_name: str, *, repo_name: str, poll: bool = True, poll_interval: float | None = None,
            timeout: float | None = None, raise_on_failure: bool = True,
            on_progress: Progress | None = None) -> m.StimResponse | m.RolloutResponse:
        """Start the job (or join it if it exists); with `poll`, wait until it leaves the running states.

        Raises JobFailed when it ends `failed` (unless `raise_on_failure=False`) and JobTimeout after
        `timeout` seconds. `on_progress` gets every status seen while waiting.
        """
        job = self._client._send(self._start(target_name, repo_name))
        if not poll:
            return job
        return self.wait(target_name, repo_name=repo_name, job=job, poll_interval=poll_interval, timeout=timeout,
                         raise_on_failure=raise_on_failure, on_progress=on_progress)

    def wait(self, target_name: str, *, repo_name: str, job: m.JobStatus | dict[str, Any] | None = None,
             poll_interval: float | None = None, timeout: float | None = None, raise_on_failure: bool = True,
             on_progress: Progress | None = None) -> m.StimResponse | m.RolloutResponse:
        """Wait until the job leaves the running states, following its event stream (polling where
        the server or a proxy does not stream)."""
        wait = self._wait(target_name, repo_name, poll_interval or self._client.poll_interval, timeout,
                          raise_on_failure, on_progress)
        return self._client._wait(wait, self._known(job) or self.get(target_name, repo_name=repo_name))

    def get(self, target_name: str, *, repo_name: str) -> m.StimResponse | m.RolloutResponse:
        return self._client._send(self._get(target_name, repo_name))

    def cancel(self, target_name: str, *, repo_name: str) -> m.StimResponse | m.RolloutResponse:
        """Stop the job; finished rows stay readable and a later `run` resumes from them."""
        return self._client._send(self._cancel(target_name, repo_name))

    def delete_output(self, target_name: str, *, repo_name: str) -> m.JobOutputDeleteResponse:
        """Remove the job's output so that a later `run` makes it anew: {message, deleted: {lines, files}}."""
        return self._client._send(self._delete_output(target_name, repo_name))

    def get_output(self, target_name: str, *, repo_name: str, limit: int = 100, offset: int = 0,
                   include_logprobs: bool = False) -> m.StimOutputResponse | m.RolloutOutputResponse:
        """One page of rows; `include_logprobs` adds each rollout row's `response_token_ids`,
        `teacher_top_ids` and `teacher_top_logprobs`."""
        return self._client._send(self._get_output(target_name, repo_name, limit, offset, include_logprobs))

    def iter_output(self, target_name: str, *, repo_name: str, page_size: int = 1000,
                    allow_partial: bool = False, include_logprobs: bool = False) -> Iterator[dict[str, Any]]:
        """Every row, page by page. Raises JobNotComplete unless the job is complete or
        `allow_partial` (then: the rows committed so far, which never shift as the job grows)."""
        pages = self._pages(target_name, repo_name, page_size, allow_partial, include_logprobs)
        while (request := pages.next_request()) is not None:
            yield from pages.rows_of(self._client._send(request))

    def read_dataframe(self, target_name: str, *, repo_name: str, allow_partial: bool = False):
        """All rows as a polars DataFrame (nested columns as structs)."""
        return _dataframe(list(self.iter_output(target_name, repo_name=repo_name, allow_partial=allow_partial)))

    def parquet_urls(self, target_name: str, *, repo_name: str, allow_partial: bool = False) -> list[str]:
        """The storage URLs of the job's Parquet parts (local paths or s3://…), for readers that can
        reach the storage themselves. Raises JobNotComplete unless complete or `allow_partial`."""
        parts = self._client._send(self._parquet(target_name, repo_name))
        check_complete(parts, self._what(target_name, repo_name), allow_partial)
        return parts.urls

    def scan_parquet(self, target_name: str, *, repo_name: str, allow_partial: bool = False, **options: Any):
        """A polars LazyFrame over the job's parts, read straight from storage with typed columns
        (`options` go to `pl.scan_parquet`, e.g. `storage_options` for S3)."""
        import polars as pl

        return pl.scan_parquet(self.parquet_urls(target_name, repo_name=repo_name, allow_partial=allow_partial), **options)

    def iter_training_rows(self, target_name: str, *, repo_name: str) -> Iterator[dict[str, Any]]:
        """Rollout rows as bake training examples: teacher and student chats ending in the response.
        Failed trajectories are skipped."""
        for row in self.iter_output(target_name, repo_name=repo_name):
            if (example := _training_row(row)) is not None:
                yield example


class Bakes(BakeRequests):
    """`client.bakes`: define a bake, run it, watch its loss, read its metrics."""

    def __init__(self, client: Client):
        self._client = client

    def create(self, repo_name: str, *, bake_name: str, template: str = "default",
               overrides: dict[str, Any] | None = None) -> m.BakeResponse:
        return self._client._send(self._create(repo_name, bake_name, template, overrides))

    def create_batch(self, repo_name: str, *, bakes: list[dict[str, Any]]) -> m.BatchResponse:
        return self._client._send(self._create_batch(repo_name, bakes))

    def get(self, bake_name: str, *, repo_name: str) -> m.BakeResponse:
        return self._client._send(self._get(bake_name, repo_name))

    def list(self, repo_name: str) -> list[str]:
        return self._client._send(self._list(repo_name))

    def delete(self, bake_name: str, *, repo_name: str) -> m.DeleteResponse:
        return self._client._send(self._delete(bake_name, repo_name))

    def validate(self, repo_name: str, *, bake_name: str, template: str = "default",
                 overrides: dict[str, Any] | None = None) -> m.ValidationReport:
        """Every reason `create` or `run` would refuse this bake, and its estimated steps; creates nothing."""
        return self._client._send(self._validate(repo_name, bake_name, template, overrides))

    def run(self, bake_name: str, *, repo_name: str, poll: bool = True, poll_interval: float | None = None,
            timeout: float | None = None, raise_on_failure: bool = True,
            on_progress: Progress | None = None) -> m.BakeResponse:
        """Start the bake (or join it); with `poll`, wait until it ends. `on_progress` gets every
        status seen (`progress_percent`, `loss`); JobFailed and JobTimeout as for jobs."""
        bake = self._client._send(self._start(bake_name, repo_name))
        if not poll:
            return bake
        wait = self._wait(bake_name, repo_name, poll_interval or self._client.poll_interval, timeout,
                          raise_on_failure, on_progress)
        return self._client._wait(wait, bake)

    def download(self, bake_name: str, *, repo_name: str, checkpoint: int | None = None,
                 expires_in: int | None = None) -> m.DownloadUrlResponse:
        """An expiring URL of a checkpoint's adapter archive: {url, bake_name, checkpoint, expires_in}."""
        return self._client._send(self._download(bake_name, repo_name, checkpoint, expires_in))

    def cancel(self, bake_name: str, *, repo_name: str) -> m.BakeResponse:
        """Stop the bake; its checkpoints stay and a later `run` resumes from the last one."""
        return self._client._send(self._cancel(bake_name, repo_name))

    def get_metrics(self, bake_name: str, *, repo_name: str, offset: int = 0,
                    limit: int | None = None) -> list[dict[str, Any]]:
        return self._client._send(self._get_metrics(bake_name, repo_name, offset, limit))

    def iter_metrics(self, bake_name: str, *, repo_name: str, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every metrics row (one per logged step), a page at a time."""
        pages = self._metric_pages(bake_name, repo_name, page_size)
        while (request := pages.next_request()) is not None:
            yield from pages.rows_of(self._client._send(request))


class Recipes(RecipeRequests):
    """`client.recipes`: what a bake was made from, and the steps that make it again."""

    def __init__(self, client: Client):
        self._client = client

    def get_dependency_graph(self, bake_name: str, *, repo_name: str) -> m.DependencyGraph:
        return self._client._send(self._get_dependency_graph(bake_name, repo_name))

    def get_recreation_plan(self, bake_name: str, *, repo_name: str) -> m.RecreationPlan:
        """Ordered steps; `bakehouse recipe replay` (bakehouse.replay) runs them into another repo."""
        return self._client._send(self._get_recreation_plan(bake_name, repo_name))


# -- async ---------------------------------------------------------------------------------------


class AsyncRepos(RepoRequests):
    def __init__(self, client: AsyncClient):
        self._client = client

    async def create(self, *, repo_name: str, base_model: str | None = None) -> m.RepoResponse:
        return await self._client._send(self._create(repo_name, base_model))

    async def get(self, repo_name: str) -> m.RepoResponse:
        return await self._client._send(self._get(repo_name))

    async def list(self) -> list[str]:
        return await self._client._send(self._list())

    async def get_tree(self, repo_name: str) -> m.RepoTree:
        return await self._client._send(self._get_tree(repo_name))


class AsyncPrompts(PromptRequests):
    def __init__(self, client: AsyncClient):
        self._client = client

    async def create(self, repo_name: str, *, prompt_name: str, messages: list[dict[str, Any]],
                     tools: list[dict[str, Any]] | None = None) -> m.PromptResponse:
        return await self._client._send(self._create(repo_name, prompt_name, messages, tools))

    async def get(self, prompt_name: str, *, repo_name: str) -> m.PromptResponse:
        return await self._client._send(self._get(prompt_name, repo_name))

    async def list(self, repo_name: str) -> list[str]:
        return await self._client._send(self._list(repo_name))


class AsyncTargets(TargetRequests):
    def __init__(self, client: AsyncClient):
        self._client = client
        self.stim = AsyncJob(client, "stim")
        self.rollout = AsyncJob(client, "rollout")

    async def create(self, repo_name: str, *, target_name: str, template: str = "default",
                     overrides: dict[str, Any] | None = None) -> m.TargetResponse:
        return await self._client._send(self._create(repo_name, target_name, template, overrides))

    async def get(self, target_name: str, *, repo_name: str) -> m.TargetResponse:
        return await self._client._send(self._get(target_name, repo_name))

    async def list(self, repo_name: str) -> list[str]:
        return await self._client._send(self._list(repo_name))

    async def delete(self, target_name: str, *, repo_name: str) -> m.DeleteResponse:
        return await self._client._send(self._delete(target_name, repo_name))

    async def validate(self, repo_name: str, *, target_name: str, template: str = "default",
                       overrides: dict[str, Any] | None = None) -> m.ValidationReport:
        return await self._client._send(self._validate(repo_name, target_name, template, overrides))


class AsyncJobs(JobsRequests):
    def __init__(self, client: AsyncClient):
        self._client = client

    async def list(self, **filters: Any) -> m.JobList:
        return await self._client._send(self._list(filters))


class AsyncJob(JobRequests):
    def __init__(self, client: AsyncClient, kind: str):
        super().__init__(kind)
        self._client = client

    async def run(self, target_name: str, *, repo_name: str, poll: bool = True, poll_interval: float | None = None,
                  timeout: float | None = None, raise_on_failure: bool = True,
                  on_progress: Progress | None = None) -> m.StimResponse | m.RolloutResponse:
        job = await self._client._send(self._start(target_name, repo_name))
        if not poll:
            return job
        return await self.wait(target_name, repo_name=repo_name, job=job, poll_interval=poll_interval,
                               timeout=timeout, raise_on_failure=raise_on_failure, on_progress=on_progress)

    async def wait(self, target_name: str, *, repo_name: str, job: m.JobStatus | dict[str, Any] | None = None,
                   poll_interval: float | None = None, timeout: float | None = None, raise_on_failure: bool = True,
                   on_progress: Progress | None = None) -> m.StimResponse | m.RolloutResponse:
        wait = self._wait(target_name, repo_name, poll_interval or self._client.poll_interval, timeout,
                          raise_on_failure, on_progress)
        return await self._client._wait(wait, self._known(job) or await self.get(target_name, repo_name=repo_name))

    async def get(self, target_name: str, *, repo_name: str) -> m.StimResponse | m.RolloutResponse:
        return await self._client._send(self._get(target_name, repo_name))

    async def cancel(self, target_name: str, *, repo_name: str) -> m.StimResponse | m.RolloutResponse:
        return await self._client._send(self._cancel(target_name, repo_name))

    async def delete_output(self, target_name: str, *, repo_name: str) -> m.JobOutputDeleteResponse:
        return await self._client._send(self._delete_output(target_name, repo_name))

    async def get_output(self, target_name: str, *, repo_name: str, limit: int = 100, offset: int = 0,
                         include_logprobs: bool = False) -> m.StimOutputResponse | m.RolloutOutputResponse:
        return await self._client._send(self._get_output(target_name, repo_name, limit, offset, include_logprobs))

    async def iter_output(self, target_name: str, *, repo_name: str, page_size: int = 1000, allow_partial: bool = False,
                          include_logprobs: bool = False) -> AsyncIterator[dict[str, Any]]:
        pages = self._pages(target_name, repo_name, page_size, allow_partial, include_logprobs)
        while (request := pages.next_request()) is not None:
            for row in pages.rows_of(await self._client._send(request)):
                yield row

    async def read_dataframe(self, target_name: str, *, repo_name: str, allow_partial: bool = False):
        return _dataframe([row async for row in self.iter_output(target_name, repo_name=repo_name,
                                                                 allow_partial=allow_partial)])

    async def parquet_urls(self, target_name: str, *, repo_name: str, allow_partial: bool = False) -> list[str]:
        parts = await self._client._send(self._parquet(target_name, repo_name))
        check_complete(parts, self._what(target_name, repo_name), allow_partial)
        return parts.urls

    async def scan_parquet(self, target_name: str, *, repo_name: str, allow_partial: bool = False, **options: Any):
        import polars as pl

        urls = await self.parquet_urls(target_name, repo_name=repo_name, allow_partial=allow_partial)
        return pl.scan_parquet(urls, **options)

    async def iter_training_rows(self, target_name: str, *, repo_name: str) -> AsyncIterator[dict[str, Any]]:
        async for row in self.iter_output(target_name, repo_name=repo_name):
            if (example := _training_row(row)) is not None:
                yield example


class AsyncBakes(BakeRequests):
    def __init__(self, client: AsyncClient):
        self._client = client

    async def create(self, repo_name: str, *, bake_name: str, template: str = "default",
                     overrides: dict[str, Any] | None = None) -> m.BakeResponse:
        return await self._client._send(self._create(repo_name, bake_name, template, overrides))

    async def create_batch(self, repo_name: str, *, bakes: list[dict[str, Any]]) -> m.BatchResponse:
        return await self._client._send(self._create_batch(repo_name, bakes))

    async def get(self, bake_name: str, *, repo_name: str) -> m.BakeResponse:
        return await self._client._send(self._get(bake_name, repo_name))

    async def list(self, repo_name: str) -> list[str]:
        return await self._client._send(self._list(repo_name))

    async def delete(self, bake_name: str, *, repo_name: str) -> m.DeleteResponse:
        return await self._client._send(self._delete(bake_name, repo_name))

    async def validate(self, repo_name: str, *, bake_name: str, template: str = "default",
                       overrides: dict[str, Any] | None = None) -> m.ValidationReport:
        return await self._client._send(self._validate(repo_name, bake_name, template, overrides))

    async def run(self, bake_name: str, *, repo_name: str, poll: bool = True, poll_interval: float | None = None,
                  timeout: float | None = None, raise_on_failure: bool = True,
                  on_progress: Progress | None = None) -> m.BakeResponse:
        bake = await self._client._send(self._start(bake_name, repo_name))
        if not poll:
            return bake
        wait = self._wait(bake_name, repo_name, poll_interval or self._client.poll_interval, timeout,
                          raise_on_failure, on_progress)
        return await self._client._wait(wait, bake)

    async def download(self, bake_name: str, *, repo_name: str, checkpoint: int | None = None,
                       expires_in: int | None = None) -> m.DownloadUrlResponse:
        return await self._client._send(self._download(bake_name, repo_name, checkpoint, expires_in))

    async def cancel(self, bake_name: str, *, repo_name: str) -> m.BakeResponse:
        return await self._client._send(self._cancel(bake_name, repo_name))

    async def get_metrics(self, bake_name: str, *, repo_name: str, offset: int = 0,
                          limit: int | None = None) -> list[dict[str, Any]]:
        return await self._client._send(self._get_metrics(bake_name, repo_name, offset, limit))

    async def iter_metrics(self, bake_name: str, *, repo_name: str,
                           page_size: int = 1000) -> AsyncIterator[dict[str, Any]]:
        pages = self._metric_pages(bake_name, repo_name, page_size)
        while (request := pages.next_request()) is not None:
            for row in pages.rows_of(await self._client._send(request)):
                yield row


class AsyncRecipes(RecipeRequests):
    def __init__(self, client: AsyncClient):
        self._client = client

    async def get_dependency_graph(self, bake_name: str, *, repo_name: str) -> m.DependencyGraph:
        return await self._client._send(self._get_dependency_graph(bake_name, repo_name))

    async def get_recreation_plan(self, bake_name: str, *, repo_name: str) -> m.RecreationPlan:
        return await self._client._send(self._get_recreation_plan(bake_name, repo_name))

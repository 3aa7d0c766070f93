"""The Python SDK: Bread's resource layout, with polling that ends, typed errors and page iterators.

    from bakehouse import Client

    client = Client(base_url="http://127.0.0.1:8000", api_key=KEY)   # or BAKEHOUSE_BASE_URL / _API_KEY
    client.repo.create(repo_name="demo", base_model="tiny-random")
    client.targets.stim.run("pirate", repo_name="demo")                 # polls until complete
    job = client.targets.rollout.run("pirate", repo_name="demo", on_progress=print)
    for row in client.targets.rollout.iter_output("pirate", repo_name="demo"):
        ...
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

IN_PROGRESS = ("not_started", "pending", "running")


class APIError(Exception):
    """The server answered with an error. `code` and `message` are Bread's envelope."""

    def __init__(self, status_code: int, message: str, code: str | None, body: Any = None):
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code, self.message, self.code, self.body = status_code, message, code, body


class BadRequestError(APIError): ...  # 400: well-formed but not possible now


class AuthenticationError(APIError): ...  # 401


class PermissionDeniedError(APIError): ...  # 403


class NotFoundError(APIError): ...  # 404


class ConflictError(APIError): ...  # 409: an immutable resource exists with other content


class UnprocessableEntityError(APIError): ...  # 422: invalid name, config or parameter


class RateLimitError(APIError): ...  # 429


class InternalServerError(APIError): ...  # 5xx


class JobFailed(Exception):
    def __init__(self, job: dict[str, Any]):
        super().__init__(f"job failed: {job.get('error')}")
        self.job = job


class JobTimeout(Exception): ...


class JobNotComplete(Exception):
    """Reading all of a job's output while it is not complete would silently give part of it."""


_ERRORS = {400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
           409: ConflictError, 422: UnprocessableEntityError, 429: RateLimitError}


class Client:
    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        poll_interval: float = 2.0,
        http_client: httpx.Client | None = None,
    ):
        base_url = base_url or os.environ.get("BAKEHOUSE_BASE_URL") or "http://127.0.0.1:8000"
        api_key = api_key or os.environ.get("BAKEHOUSE_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = http_client or httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.poll_interval = poll_interval
        self.repo = Repos(self)
        self.prompts = Prompts(self)
        self.targets = Targets(self)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.is_success:
            return response.json()
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text}
        message = body.get("message") or str(body.get("detail") or response.reason_phrase)
        cls = _ERRORS.get(response.status_code, InternalServerError if response.status_code >= 500 else APIError)
        raise cls(response.status_code, message, body.get("code"), body)

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/v1/health")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Resource:
    def __init__(self, client: Client):
        self._client = client


class Repos(_Resource):
    def create(self, *, repo_name: str, base_model: str | None = None) -> dict[str, Any]:
        body = {"repo_name": repo_name, **({"base_model": base_model} if base_model else {})}
        return self._client.request("POST", "/v1/repo", json=body)

    def get(self, repo_name: str) -> dict[str, Any]:
        return self._client.request("GET", f"/v1/repo/{repo_name}")

    def list(self) -> list[str]:
        return self._client.request("GET", "/v1/repo")["repos"]


class Prompts(_Resource):
    def create(self, repo_name: str, *, prompt_name: str, messages: list[dict[str, Any]],
               tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body = {"prompt_name": prompt_name, "messages": messages, **({"tools": tools} if tools else {})}
        return self._client.request("POST", f"/v1/repo/{repo_name}/prompts", json=body)

    def get(self, prompt_name: str, *, repo_name: str) -> dict[str, Any]:
        return self._client.request("GET", f"/v1/repo/{repo_name}/prompts/{prompt_name}")

    def list(self, repo_name: str) -> list[str]:
        return self._client.request("GET", f"/v1/repo/{repo_name}/prompts")["prompts"]


class Targets(_Resource):
    def __init__(self, client: Client):
        super().__init__(client)
        self.stim = Job(client, "stim")
        self.rollout = Job(client, "rollout")

    def create(self, repo_name: str, *, target_name: str, template: str = "default",
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"target_name": target_name, "template": template, "overrides": overrides}
        return self._client.request("POST", f"/v1/repo/{repo_name}/targets", json=body)

    def get(self, target_name: str, *, repo_name: str) -> dict[str, Any]:
        return self._client.request("GET", f"/v1/repo/{repo_name}/targets/{target_name}")

    def list(self, repo_name: str) -> list[str]:
        return self._client.request("GET", f"/v1/repo/{repo_name}/targets")["targets"]

    def delete(self, target_name: str, *, repo_name: str) -> dict[str, Any]:
        return self._client.request("DELETE", f"/v1/repo/{repo_name}/targets/{target_name}")


class Job(_Resource):
    """`client.targets.stim` and `client.targets.rollout`."""

    def __init__(self, client: Client, kind: str):
        super().__init__(client)
        self.kind = kind

    def _path(self, target_name: str, repo_name: str) -> str:
        return f"/v1/repo/{repo_name}/targets/{target_name}/{self.kind}"

    def run(
        self,
        target_name: str,
        *,
        repo_name: str,
        poll: bool = True,
        poll_interval: float | None = None,
        timeout: float | None = None,
        raise_on_failure: bool = True,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Start the job (or join it if it exists); with `poll`, wait until it leaves the running states.

        Raises JobFailed when it ends `failed` (unless `raise_on_failure=False`) and JobTimeout after
        `timeout` seconds. `on_progress` gets every status seen while waiting.
        """
        job = self._client.request("POST", self._path(target_name, repo_name))
        if not poll:
            return job
        return self.wait(target_name, repo_name=repo_name, job=job, poll_interval=poll_interval, timeout=timeout,
                         raise_on_failure=raise_on_failure, on_progress=on_progress)

    def wait(self, target_name: str, *, repo_name: str, job: dict[str, Any] | None = None,
             poll_interval: float | None = None, timeout: float | None = None, raise_on_failure: bool = True,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        job = job or self.get(target_name, repo_name=repo_name)
        while job["status"] in IN_PROGRESS:
            if on_progress:
                on_progress(job)
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(f"{self.kind} of {repo_name}/{target_name} still {job['status']} after {timeout}s")
            time.sleep(poll_interval or self._client.poll_interval)
            job = self.get(target_name, repo_name=repo_name)
        if on_progress:
            on_progress(job)
        if job["status"] == "failed" and raise_on_failure:
            raise JobFailed(job)
        return job

    def get(self, target_name: str, *, repo_name: str) -> dict[str, Any]:
        return self._client.request("GET", self._path(target_name, repo_name))

    def cancel(self, target_name: str, *, repo_name: str) -> dict[str, Any]:
        """Stop the job; finished rows stay readable and a later `run` resumes from them."""
        return self._client.request("POST", f"{self._path(target_name, repo_name)}/cancel")

    def get_output(self, target_name: str, *, repo_name: str, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        return self._client.request("GET", f"{self._path(target_name, repo_name)}/output",
                                    params={"limit": limit, "offset": offset})

    def iter_output(self, target_name: str, *, repo_name: str, page_size: int = 1000,
                    allow_partial: bool = False) -> Iterator[dict[str, Any]]:
        """Every row, page by page. Raises JobNotComplete unless the job is complete or
        `allow_partial` (then: the rows committed so far, which never shift as the job grows)."""
        offset = 0
        while True:
            page = self.get_output(target_name, repo_name=repo_name, limit=page_size, offset=offset)
            if offset == 0 and page["status"] != "complete" and not allow_partial:
                raise JobNotComplete(f"{self.kind} of {repo_name}/{target_name} is {page['status']} "
                                     f"({page['lines']} rows so far); pass allow_partial=True (CLI: --partial) to read them")
            yield from page["output"]
            offset += len(page["output"])
            if not page["has_more"] or not page["output"]:
                return

    def read_dataframe(self, target_name: str, *, repo_name: str, allow_partial: bool = False):
        """All rows as a polars DataFrame (nested columns as structs)."""
        import polars as pl

        return pl.DataFrame(list(self.iter_output(target_name, repo_name=repo_name, allow_partial=allow_partial)))

    def iter_training_rows(self, target_name: str, *, repo_name: str) -> Iterator[dict[str, Any]]:
        """Rollout rows as bake training examples: teacher and student chats ending in the response.

        Rows whose trajectory failed (`error` set) are skipped: there is nothing to learn from them.
        """
        for row in self.iter_output(target_name, repo_name=repo_name):
            response = row.get("response")
            if row.get("error") or not response:
                continue
            answer = {"role": "assistant", "content": response["content"]}
            yield {
                "stimulus_id": row.get("stimulus_id"),
                "trajectory_id": row.get("trajectory_id"),
                "teacher_messages": [*row["unconditioned_stimulus"]["messages"], answer],
                "student_messages": [*row["conditioned_stimulus"]["messages"], answer],
            }

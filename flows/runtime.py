"""What one flow run needs besides storage: engines (opened once, lazily) and progress reporting."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flows.engines import Engine, open_engine
from flows.models import served_remotely
from repo_store.settings import get_settings

_fallback = logging.getLogger("bakehouse")


class _RunLogger:
    """Logs to the Prefect flow run (visible in the UI) inside a flow run, else to `bakehouse`."""

    def info(self, message: str, *args: Any) -> None:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            get_run_logger().info(message, *args)
        except MissingContextError:
            _fallback.info(message, *args)


logger = _RunLogger()


class Engines:
    """Engines by model name for one flow run; each model is loaded at most once.

    Models are served in-process by vLLM unless BAKEHOUSE_OPENAI_BASE_URL points at an
    OpenAI-compatible server (a `vllm serve` fleet or a provider); `fake` and `tiny-random` are
    reserved names that always run locally. One in-process vLLM engine lives at a time (each holds
    its model and KV cache): asking for another model closes the previous one.
    """

    def __init__(self, **options: Any):
        self.options = options
        self._engines: dict[str, Engine] = {}
        self._in_process: str | None = None  # the model of the one in-process vLLM engine

    def __call__(self, model: str, *, max_concurrency: int | None = None) -> Engine:
        if model not in self._engines:
            if served_remotely(model):
                settings = get_settings()
                base_url = settings.openai_base_url
                options = {"api_key": settings.openai_api_key, **self.options}
                if settings.openai_timeout is not None:
                    options.setdefault("timeout", settings.openai_timeout)
                if max_concurrency:
                    options["max_concurrency"] = max_concurrency
                self._engines[model] = open_engine(model, base_url=base_url, **options)
            elif model == "fake":
                self._engines[model] = open_engine(model, **self.options)
            else:
                if self._in_process is not None:
                    self._engines.pop(self._in_process).close()
                self._engines[model] = open_engine(model, **self.options)
                self._in_process = model
        return self._engines[model]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()


class Progress:
    """Progress of one job: a Prefect progress artifact when inside a flow run, and a callback."""

    def __init__(self, key: str, on_update: Callable[[float], None] | None = None):
        self.key = _artifact_key(key)
        self.on_update = on_update
        self._artifact_id = None
        self._last_sent = 0.0
        self.started = time.monotonic()

    def update(self, percent: float) -> None:
        if self.on_update:
            self.on_update(percent)
        if not _in_flow_run():
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        now = time.monotonic()
        if self._artifact_id is None:
            self._artifact_id = create_progress_artifact(progress=percent, key=self.key, description="Job progress")
        elif percent >= 100.0 or now - self._last_sent > 2.0:  # the UI needs no more than this
            update_progress_artifact(self._artifact_id, progress=percent)
        else:
            return
        self._last_sent = now

    def summary(self, title: str, values: dict[str, Any]) -> None:
        logger.info("%s: %s", title, values)
        if not _in_flow_run():
            return
        from prefect.artifacts import create_table_artifact

        table = [{"metric": k, "value": str(v)} for k, v in values.items()]
        create_table_artifact(table=table, key=f"{self.key}-summary", description=title)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _in_flow_run() -> bool:
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def _artifact_key(text: str) -> str:
    # Prefect artifact keys: lowercase letters, digits and dashes only.
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:120]


@contextmanager
def running(attempt, engines: Engines | None) -> Iterator[Engines]:
    """Own an attempt while its work runs, and end it honestly whatever happens.

    An error is recorded (the job reads `failed` with the reason, and a later start resumes); an
    interrupt (Ctrl-C, SIGTERM, cancellation by Prefect) releases the claim so a restart resumes at
    once. Engines opened here are closed here; engines passed in belong to the caller.
    """
    own = engines is None
    engines = engines or Engines()
    attempt.keep_alive()
    try:
        yield engines
    except Exception as error:
        attempt.fail(error_message(error))
        raise
    except BaseException:
        attempt.release()
        raise
    finally:
        if own:
            engines.close()


def mark_cancelled(kind: str) -> Callable[..., None]:
    """A Prefect `on_cancellation` hook: cancelling a run in the UI cancels the job it works on.

    Prefect stops the run's process; the cancel request on storage makes the job read `failed` with
    error "cancelled" (and stops the job's other shards), and the next start resumes it.
    """

    def hook(flow: Any, flow_run: Any, state: Any) -> None:
        from flows.params import BakeJob, TargetJob
        from repo_store import Store

        if kind == "bake":
            job = BakeJob.model_validate(flow_run.parameters["job"])
            ws = Store(job.data_url).workspace(job.workspace)
            ws.bake_run(job.repo_name, ws.get_bake(job.repo_name, job.bake_name)).job.request_cancel()
            return
        job = TargetJob.model_validate(flow_run.parameters["job"])
        Store(job.data_url).workspace(job.workspace).job(job.repo_name, job.target_name, kind).request_cancel()

    return hook


def error_message(error: BaseException) -> str:
    """What a failed job reports: our errors' own message, else the exception's type and text."""
    from repo_store import Cancelled

    if isinstance(error, Cancelled):
        return "cancelled"
    return getattr(error, "message", None) or f"{type(error).__name__}: {error}"

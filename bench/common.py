"""What the benchmarks share: one way to set up a target whose stim needs no model."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from targets import PromptSpec, RepoSpec, TargetSpec  # noqa: E402


def make_target(ws, repo: str, target: str, *, model: str, questions: list[str], system: str = "You are a pirate.",
                **overrides) -> None:
    """Repo `repo` (base model `model`), a teacher prompt with `system`, an empty student prompt, and
    target `target` with a hardcoded generator over `questions`; `overrides` are further target
    settings (num_traj_per_stimulus, max_tokens, seed, ...). Idempotent."""
    ws.create_repo(RepoSpec(repo_name=repo, base_model=model))
    ws.create_prompt(repo, PromptSpec(prompt_name="teacher", messages=[{"role": "system", "content": system}]))
    ws.create_prompt(repo, PromptSpec(prompt_name="student", messages=[]))
    ws.create_target(repo, TargetSpec(target_name=target, overrides={
        "teacher_prompt": "teacher", "student_prompt": "student", "model_name": model,
        "generators": [{"type": "hardcoded", "questions": questions}], **overrides,
    }))


class NoRunner:
    """For benchmarks that start their jobs themselves: the API only reads and watches."""

    def submit(self, ref, status) -> None:
        raise AssertionError("the benchmark starts its jobs itself")

    def view(self, ref, status):
        return status

    def active(self, ref) -> bool:
        return False

    def cancel(self, ref) -> None: ...


@contextmanager
def serve_api(store, **options) -> Iterator[str]:
    """The API over `store` (`options` for create_app) on uvicorn at a free port of 127.0.0.1, with no
    rate limit; yields its URL. Leaving waits for the server's shutdown, which writes key usage into
    the store and stops the model servers it started."""
    import uvicorn

    from bakehouse.api import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(store, NoRunner(), rate_limit_per_hour=10**9, **options),
                                           host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)

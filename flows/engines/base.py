"""The engine contract: chat requests in, sampled completions out, streamed as they finish.

Engines know nothing about targets or storage. The flows hand them requests keyed by the caller's
own id (a stimulus id) and write each result to storage as soon as it is yielded, so memory stays flat
however large the job is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol


class EngineError(RuntimeError):
    """The engine cannot run at all (model does not load, server unreachable, bad settings)."""


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one request; `n` completions share one prompt (one vLLM request)."""

    n: int = 1
    temperature: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    # K > 0: return, for every sampled token, the model's K most likely tokens and their
    # log-probabilities under the request's context, before temperature (what a bake's KL needs).
    top_logprobs: int = 0
    # Validated, engine-neutral extras: top_p, top_k, min_p, stop, presence_penalty,
    # frequency_penalty, repetition_penalty.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatRequest:
    key: int
    messages: list[dict[str, Any]]
    sampling: Sampling
    tools: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    completion_tokens: int
    # The sampled token ids, where the engine knows them (None: it does not, e.g. an OpenAI server
    # that returns no ids). A bake trains on these, never on the text tokenised again.
    token_ids: list[int] | None = None
    # With Sampling.top_logprobs = K: one list per sampled token, most likely first; None otherwise
    # or where the engine could not say which token ids they are.
    top_ids: list[list[int]] | None = None
    top_logprobs: list[list[float]] | None = None


@dataclass(frozen=True)
class ChatResult:
    key: int
    completions: list[Completion]  # len == sampling.n unless error is set
    prompt_tokens: int = 0
    error: str | None = None  # a request that failed on its own; the job goes on
    cached_prompt_tokens: int | None = None  # prompt tokens served from the prefix cache (None: not told)


class Engine(Protocol):
    model: str

    def generate(self, requests: Iterable[ChatRequest]) -> Iterator[ChatResult]:
        """Yield one result per request, in completion order (not request order).

        Consumes `requests` lazily and keeps a bounded number in flight.
        """
        ...

    def close(self) -> None: ...

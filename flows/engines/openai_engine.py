"""An engine that calls an OpenAI-compatible server (`POST {base_url}/chat/completions`).

Works against vLLM's OpenAI server, OpenAI itself, and other compatible servers. Requests run on a
thread pool with at most `max_concurrency` HTTP calls in flight; the request iterator is consumed
lazily (never more than `max_concurrency` requests are held). Transient failures (HTTP 408, 409,
429, 5xx, connection errors and timeouts) are retried with exponential back-off, honouring
`Retry-After`; a request that still fails, or fails with another 4xx (e.g. prompt too long), yields
a ChatResult with `error` set and the job goes on.

Token counts: the API reports usage per request, not per choice. With n == 1 a completion's
`completion_tokens` is exact; with n > 1 it is exact when the server returns per-choice token ids (vLLM's
`return_token_ids`) or per-token logprobs,
otherwise `usage.completion_tokens` is split across the choices in proportion to their text length
(the total is exact).

Token ids and top-K log-probabilities (Sampling.top_logprobs = K): the request asks for
`logprobs: true, top_logprobs: K`, and for vLLM's extensions `return_token_ids` (the sampled ids)
and `return_tokens_as_token_ids` (tokens spelled "token_id:123", so the top-K are ids, not text).
A server whose 4xx names one of those extensions is asked again without them (once per engine);
its completions then carry no ids (`token_ids`/`top_ids` None) and a bake recomputes them.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import httpx

from .base import ChatRequest, ChatResult, Completion

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504}) | frozenset(range(520, 530))
MAX_BACKOFF_SECONDS = 60.0
# vLLM's request extensions for token ids; a server whose 4xx names one of them is asked without.
VLLM_EXTENSIONS = ("return_token_ids", "return_tokens_as_token_ids")


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Refused(RuntimeError):
    """A 4xx that retrying will not change (bad request, prompt too long)."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _split(total: int, weights: list[int]) -> list[int]:
    """Split `total` into integers proportional to `weights` (largest remainder)."""
    if not weights:
        return []
    wsum = sum(weights)
    if wsum == 0:
        weights, wsum = [1] * len(weights), len(weights)
    shares = [total * w / wsum for w in weights]
    counts = [int(s) for s in shares]
    order = sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _token_id(token: str) -> int | None:
    """The id in vLLM's "token_id:123" spelling (return_tokens_as_token_ids), else None."""
    prefix, _, number = token.partition(":")
    return int(number) if prefix == "token_id" and number.isdigit() else None


def _top_logprobs(per_token: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Top-K ids and log-probabilities per sampled token; {} unless every token's ids are known."""
    if not per_token:
        return {}
    top_ids, top_logprobs = [], []
    for position in per_token:
        candidates = position.get("top_logprobs") or []
        ids = [_token_id(c.get("token", "")) for c in candidates]
        if any(i is None for i in ids):
            return {}
        top_ids.append(ids)
        top_logprobs.append([float(c["logprob"]) for c in candidates])
    return {"top_ids": top_ids, "top_logprobs": top_logprobs}


class OpenAIEngine:
    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None = None,
        max_concurrency: int = 10,
        timeout: float = 600,  # per request: a long generation is one response, not a stream
        max_retries: int = 5,
        backoff: float = 0.5,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
        )
        self._closing = threading.Event()
        self._vllm_extensions = True  # cleared when the server refuses them

    # -- one request ------------------------------------------------------------------------

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "n": s.n,
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        if request.tools:
            body["tools"] = request.tools
        if s.top_logprobs:
            body.update(logprobs=True, top_logprobs=s.top_logprobs)
        if self._vllm_extensions:
            body.update(dict.fromkeys(VLLM_EXTENSIONS, True))
        body.update({k: v for k, v in s.extra.items() if v is not None})
        return body

    def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.post(f"{self.base_url}/chat/completions", json=body)
        except httpx.TransportError as e:  # connect errors, timeouts, dropped connections
            raise _Retryable(f"{type(e).__name__}: {e}") from e
        if response.status_code in RETRY_STATUSES:
            raise _Retryable(
                f"HTTP {response.status_code}: {response.text[:500]}", _retry_after(response)
            )
        if response.status_code >= 400:
            raise _Refused(f"HTTP {response.status_code}: {response.text[:1000]}")
        return response.json()

    def _call(self, request: ChatRequest) -> ChatResult:
        body = self._body(request)
        attempt = 0
        while True:
            try:
                return self._parse(request, self._post_once(body))
            except _Refused as e:
                if not (self._vllm_extensions and any(name in str(e) for name in VLLM_EXTENSIONS)):
                    return ChatResult(request.key, [], error=str(e))
                self._vllm_extensions = False  # not vLLM: ask as plain OpenAI from now on
                body = self._body(request)
            except _Retryable as e:
                if attempt >= self.max_retries or self._closing.is_set():
                    return ChatResult(
                        request.key, [], error=f"gave up after {attempt + 1} attempts: {e}"
                    )
                delay = min(MAX_BACKOFF_SECONDS, self.backoff * 2**attempt)
                delay *= 0.5 + random.random() / 2  # jitter, so retries do not come in lockstep
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, MAX_BACKOFF_SECONDS))
                attempt += 1
                if self._closing.wait(delay):
                    return ChatResult(request.key, [], error=f"engine closed while retrying: {e}")
            except Exception as e:
                return ChatResult(request.key, [], error=f"{type(e).__name__}: {e}")

    @staticmethod
    def _parse(request: ChatRequest, data: dict[str, Any]) -> ChatResult:
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if len(choices) != request.sampling.n:
            return ChatResult(
                request.key,
                [],
                prompt_tokens,
                error=f"expected {request.sampling.n} choices, got {len(choices)}",
            )
        texts = [((c.get("message") or {}).get("content") or "") for c in choices]
        total = int(usage.get("completion_tokens") or 0)
        token_ids = [c.get("token_ids") for c in choices]  # vLLM, with return_token_ids
        per_token = [((c.get("logprobs") or {}).get("content")) for c in choices]
        if len(choices) == 1:
            counts = [total]
        elif all(isinstance(t, list) for t in token_ids):
            counts = [len(t) for t in token_ids]
        elif all(isinstance(p, list) for p in per_token):
            counts = [len(p) for p in per_token]
        else:
            counts = _split(total, [len(t) for t in texts])
        return ChatResult(
            request.key,
            [
                Completion(text=t, finish_reason=c.get("finish_reason"), completion_tokens=k,
                           token_ids=ids if isinstance(ids, list) else None, **_top_logprobs(p))
                for t, c, k, ids, p in zip(texts, choices, counts, token_ids, per_token)
            ],
            prompt_tokens,
            cached_prompt_tokens=int(cached) if cached is not None else None,
        )

    # -- Engine protocol --------------------------------------------------------------------

    def generate(self, requests: Iterable[ChatRequest]) -> Iterator[ChatResult]:
        if self._closing.is_set():
            raise RuntimeError("OpenAIEngine is closed")
        source = iter(requests)
        pending: set[Future[ChatResult]] = set()
        pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="openai-engine")
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < self.max_concurrency:
                    request = next(source, None)
                    if request is None:
                        exhausted = True
                    else:
                        pending.add(pool.submit(self._call, request))
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._closing.set()
        self._client.close()

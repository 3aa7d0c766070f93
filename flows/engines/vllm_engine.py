"""In-process vLLM engine that streams results out of arbitrarily large jobs.

Streaming: requests are rendered with the model's chat template and queued with the public
`LLM.enqueue_chat()` (one conversation per call, so a request that fails on its own, e.g. a prompt
longer than max_model_len, fails alone), at most `max_in_flight` at a time; `llm.llm_engine.step()`
is then driven by hand and every finished `RequestOutput` is turned into a `ChatResult` and yielded
at once, and the window is refilled from the (lazily consumed) request iterator. Nothing is kept per
finished request, so memory is flat in the number of requests.

Device settings (dtype, eager or CUDA graphs, chunked prefill, KV cache, context, engine core in
process or not, allocator trimming) come from `device.vllm_settings`, the one place that decides
what differs between a CUDA machine and a CPU-only one. On CPU the engine core runs in this process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`, unless the caller set it): start-up drops from 20-35 s to a few
seconds, no `if __name__ == "__main__"` guard is needed (spawn), it works from a non-main thread
(Prefect), and killing the process leaves no orphaned engine process. Side effects of in-process
mode: vLLM seeds the global random/numpy/torch RNGs and edits some `os.environ` entries. Run one
engine per process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from .base import ChatRequest, ChatResult, Completion, EngineError
from .device import cuda_available, vllm_settings
from .model_cache import resolve_model

SAMPLING_EXTRAS = frozenset(
    {
        "top_p",
        "top_k",
        "min_p",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
    }
)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _return_free_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _top_logprobs(logprobs: Any) -> dict[str, Any]:
    """Top-K ids and log-probabilities per sampled token from vLLM's FlatLogprobs.

    At each position vLLM stores the sampled token first (with its own rank), then ranks 1..K in
    order; the sampled token is dropped here (it is in the top K or, if not, not part of it).
    """
    if logprobs is None:
        return {}
    ids, values = logprobs.token_ids, logprobs.logprobs
    spans = zip(logprobs.start_indices, logprobs.end_indices, strict=True)
    positions = [(start + 1, end) for start, end in spans]
    return {
        "top_ids": [ids[start:end] for start, end in positions],
        "top_logprobs": [values[start:end] for start, end in positions],
    }


class VllmEngine:
    """An in-process `vllm.LLM`; `model` is a local directory, a hub id or "tiny-random".

    `trim_every`: seconds between `malloc_trim` calls while generating; None means once a second on
    CPU and never on GPU, `math.inf` never.
    """

    def __init__(
        self,
        model: str,
        *,
        max_model_len: int | None = None,
        kv_cache_bytes: int | None = None,
        dtype: str | None = None,
        tensor_parallel_size: int | None = None,
        max_num_seqs: int | None = None,
        max_in_flight: int = 256,
        trim_every: float | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.model = model
        self.max_in_flight = max_in_flight
        self._busy = False
        self._llm: Any = None
        self._tokenizer: Any = None

        settings = vllm_settings(
            resolve_model(model), cuda=cuda_available(), max_model_len=max_model_len, kv_cache_bytes=kv_cache_bytes,
            dtype=dtype, tensor_parallel_size=tensor_parallel_size, max_num_seqs=max_num_seqs, trim_every=trim_every,
        )
        for name, value in settings.env.items():  # before vllm is imported; the caller's choice stands
            os.environ.setdefault(name, value)
        self.trim_every = settings.trim_every
        kwargs = settings.kwargs

        try:
            from vllm import LLM, SamplingParams
        except Exception as e:  # pragma: no cover - environment problem
            raise EngineError(f"cannot import vllm: {e}") from e
        self._SamplingParams = SamplingParams
        try:
            self._llm = LLM(**kwargs)
        except Exception as e:
            raise EngineError(f"vLLM could not start model {model!r}: {e}") from e

    # -- requests ---------------------------------------------------------------------------

    def _sampling_params(self, request: ChatRequest):
        s = request.sampling
        unknown = set(s.extra) - SAMPLING_EXTRAS
        if unknown:
            raise ValueError(f"unsupported sampling options: {sorted(unknown)}")
        extras = {k: v for k, v in s.extra.items() if v is not None}
        if s.top_logprobs:
            # Flat logprobs: a few flat lists per request instead of a dict of Logprob objects per
            # token. And no detokenizing in vLLM: it would decode each of the K candidates at every
            # token (measured: 85 % of a rollout's time on the tiny model); the text is decoded here
            # from the sampled ids instead. Stop strings need vLLM's detokenizer, so they keep it.
            extras.update(logprobs=s.top_logprobs, flat_logprobs=True, detokenize=bool(extras.get("stop")))
        return self._SamplingParams(
            n=s.n,
            temperature=s.temperature,
            max_tokens=s.max_tokens,
            seed=s.seed,
            **extras,
        )

    def _enqueue(self, request: ChatRequest) -> tuple[str, bool]:
        """Render and queue one request; returns the id its outputs will carry and whether vLLM
        writes its text (else the ids are decoded here)."""
        params = self._sampling_params(request)
        (request_id,) = self._llm.enqueue_chat(
            [request.messages],
            params,
            use_tqdm=False,
            tools=request.tools or None,
        )
        # enqueue_chat returns the internal id "<counter>-<8 random chars>"; outputs carry the
        # external id "<counter>" (always an integer string, so split at the first '-').
        return request_id.split("-", 1)[0], params.detokenize

    def _result(self, key: int, output: Any, detokenized: bool) -> ChatResult:
        completions = [
            Completion(
                text=c.text if detokenized else self._decode(c.token_ids),
                finish_reason=c.finish_reason,
                completion_tokens=len(c.token_ids),
                token_ids=list(c.token_ids),
                **_top_logprobs(c.logprobs),
            )
            for c in sorted(output.outputs, key=lambda c: c.index)
        ]
        prompt_tokens = len(output.prompt_token_ids or ())
        cached = getattr(output, "num_cached_tokens", None)
        if not completions:
            return ChatResult(key, [], prompt_tokens, error="engine returned no completions", cached_prompt_tokens=cached)
        if any(c.finish_reason == "error" for c in completions):
            return ChatResult(key, [], prompt_tokens, error="engine reported an error", cached_prompt_tokens=cached)
        return ChatResult(key, completions, prompt_tokens, cached_prompt_tokens=cached)

    def _decode(self, token_ids: Any) -> str:
        """A completion's text from its ids, as vLLM's detokenizer would give it: special tokens
        such as the end of turn left out, and the bytes of a character the completion stopped in
        the middle of dropped (vLLM's incremental detokenizer holds them back and never flushes)."""
        if self._tokenizer is None:
            self._tokenizer = self._llm.get_tokenizer()
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=True).rstrip("\ufffd")

    # -- Engine protocol --------------------------------------------------------------------

    def generate(self, requests: Iterable[ChatRequest]) -> Iterator[ChatResult]:
        """Yield one ChatResult per request as it finishes (completion order).

        At most `max_in_flight` requests are queued in vLLM at a time; `requests` is consumed
        lazily. One generate() at a time per engine; closing the generator early aborts what
        is still queued.
        """
        if self._llm is None:
            raise EngineError("engine is closed")
        if self._busy:
            raise RuntimeError("VllmEngine.generate() is already running on this engine")
        self._busy = True
        engine = self._llm.llm_engine
        source = iter(requests)
        in_flight: dict[str, tuple[int, bool]] = {}  # output request id -> (caller's key, detokenized)
        exhausted = False
        trimmed_at = time.monotonic()
        try:
            while True:
                if self.trim_every is not None and time.monotonic() - trimmed_at > self.trim_every:
                    _return_free_memory()
                    trimmed_at = time.monotonic()
                while not exhausted and len(in_flight) < self.max_in_flight:
                    request = next(source, None)
                    if request is None:
                        exhausted = True
                        break
                    try:
                        request_id, detokenized = self._enqueue(request)
                    except Exception as e:  # this request only (too long, bad options, ...)
                        if type(e).__name__ == "EngineDeadError":
                            raise EngineError(f"vLLM engine died: {e}") from e
                        yield ChatResult(request.key, [], error=f"{type(e).__name__}: {e}")
                        continue
                    in_flight[request_id] = (request.key, detokenized)
                if not in_flight:
                    if exhausted:
                        return
                    continue
                if not engine.has_unfinished_requests():
                    raise EngineError(f"vLLM lost {len(in_flight)} queued requests")
                try:
                    outputs = engine.step()
                except Exception as e:
                    raise EngineError(f"vLLM engine step failed: {e}") from e
                for output in outputs:
                    if not output.finished:
                        continue
                    queued = in_flight.pop(output.request_id, None)
                    if queued is not None:
                        yield self._result(queued[0], output, queued[1])
        finally:
            if in_flight and self._llm is not None:
                try:
                    engine.abort_request(list(in_flight))
                except Exception:  # pragma: no cover - best effort
                    pass
            self._busy = False

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            del llm
            import gc

            gc.collect()

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

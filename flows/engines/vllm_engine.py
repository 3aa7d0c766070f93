"""In-process vLLM engine that streams results out of arbitrarily large jobs.

Streaming: requests are rendered with the model's chat template and queued with the public
`LLM.enqueue_chat()` (one conversation per call, so a request that fails on its own, e.g. a prompt
longer than max_model_len, fails alone), at most `max_in_flight` at a time; `llm.llm_engine.step()`
is then driven by hand and every finished `RequestOutput` is turned into a `ChatResult` and yielded
at once, and the window is refilled from the (lazily consumed) request iterator. Nothing is kept per
finished request, so memory is flat in the number of requests.

CPU settings (see the project's stack notes, section 2), applied when torch sees no CUDA device:
- `enable_chunked_prefill=False`: with per-request seeds and chunked prefill, a batch larger than the
  token budget crashes with "CPU Generator does not use offset";
- a KV cache of `kv_cache_bytes`, else `$BAKEHOUSE_KV_CACHE_MB` MiB, else `$VLLM_CPU_KVCACHE_SPACE`
  GiB if set, else 256 MiB (vLLM's default would reserve ~90 % of RAM), and a context of at most
  4,096 tokens unless `max_model_len` says otherwise (smollm2-135m's 8,192 would need 0.35 GiB);
- `dtype="float32"` (bf16 is 3-5x slower on these CPUs) and `enforce_eager=True` (no torch.compile
  warm-up of 40-80 s);
- glibc's `malloc_trim(0)` once a second (`trim_every`) while generating: vLLM's CPU tensors churn
  through glibc's arenas, which keep the freed pages, so peak RSS grew by ~600 MB from 10k to 100k
  trajectories; trimming halves that for ~3 % of throughput (bench/rollout_throughput.py).

`VLLM_ENABLE_V1_MULTIPROCESSING=0` is set (unless the caller set it) before vLLM is imported: the
engine core then runs in this process instead of a spawned child. Start-up drops from 20-35 s to a
few seconds on CPU, no `if __name__ == "__main__"` guard is needed (spawn), it works from a
non-main thread (Prefect), and killing the process leaves no orphaned engine process. Side effects
of in-process mode: vLLM seeds the global random/numpy/torch RNGs and edits some `os.environ`
entries. Run one engine per process.
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
from .model_cache import resolve_model

DEFAULT_CPU_KV_CACHE_BYTES = 256 * 2**20
# On CPU a model's full context (8,192 for smollm2-135m) needs more KV cache than the default holds;
# chats here are short, so the CPU default caps the context instead.
DEFAULT_CPU_MAX_MODEL_LEN = 4096
DEFAULT_CPU_TRIM_SECONDS = 1.0
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


def _cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


def _max_positions(path: str) -> int:
    """The model's own context length where its config is a local file (0 when unknown)."""
    import json

    try:
        with open(os.path.join(path, "config.json")) as config:
            return int(json.load(config).get("max_position_embeddings") or 0)
    except (OSError, ValueError):
        return 0


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
        tensor_parallel_size: int = 1,
        max_num_seqs: int | None = None,
        max_in_flight: int = 256,
        trim_every: float | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.model = model
        self.max_in_flight = max_in_flight
        self.trim_every = trim_every
        self._busy = False
        self._llm: Any = None

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        path = resolve_model(model)
        kwargs: dict[str, Any] = {
            "model": path,
            "tensor_parallel_size": tensor_parallel_size,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = max_num_seqs
        if kv_cache_bytes is None and os.environ.get("BAKEHOUSE_KV_CACHE_MB"):
            kv_cache_bytes = int(float(os.environ["BAKEHOUSE_KV_CACHE_MB"]) * 2**20)
        if _cpu_only():
            if max_model_len is None and _max_positions(path) > DEFAULT_CPU_MAX_MODEL_LEN:
                kwargs["max_model_len"] = DEFAULT_CPU_MAX_MODEL_LEN
            if trim_every is None:
                self.trim_every = DEFAULT_CPU_TRIM_SECONDS
            kwargs["enable_chunked_prefill"] = False
            kwargs["enforce_eager"] = True
            kwargs["dtype"] = dtype or "float32"
            if kv_cache_bytes is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kv_cache_bytes = DEFAULT_CPU_KV_CACHE_BYTES
        elif dtype is not None:
            kwargs["dtype"] = dtype
        if kv_cache_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_bytes)

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
            # token (the known cost of logprobs in vLLM's output processing).
            extras.update(logprobs=s.top_logprobs, flat_logprobs=True)
        return self._SamplingParams(
            n=s.n,
            temperature=s.temperature,
            max_tokens=s.max_tokens,
            seed=s.seed,
            **extras,
        )

    def _enqueue(self, request: ChatRequest) -> str:
        """Render and queue one request; returns the id its outputs will carry."""
        (request_id,) = self._llm.enqueue_chat(
            [request.messages],
            self._sampling_params(request),
            use_tqdm=False,
            tools=request.tools or None,
        )
        # enqueue_chat returns the internal id "<counter>-<8 random chars>"; outputs carry the
        # external id "<counter>" (always an integer string, so split at the first '-').
        return request_id.split("-", 1)[0]

    @staticmethod
    def _result(key: int, output: Any) -> ChatResult:
        completions = [
            Completion(
                text=c.text,
                finish_reason=c.finish_reason,
                completion_tokens=len(c.token_ids),
                token_ids=list(c.token_ids),
                **_top_logprobs(c.logprobs),
            )
            for c in sorted(output.outputs, key=lambda c: c.index)
        ]
        prompt_tokens = len(output.prompt_token_ids or ())
        if not completions:
            return ChatResult(key, [], prompt_tokens, error="engine returned no completions")
        if any(c.finish_reason == "error" for c in completions):
            return ChatResult(key, [], prompt_tokens, error="engine reported an error")
        return ChatResult(key, completions, prompt_tokens)

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
        in_flight: dict[str, int] = {}  # output request id -> caller's key
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
                        request_id = self._enqueue(request)
                    except Exception as e:  # this request only (too long, bad options, ...)
                        if type(e).__name__ == "EngineDeadError":
                            raise EngineError(f"vLLM engine died: {e}") from e
                        yield ChatResult(request.key, [], error=f"{type(e).__name__}: {e}")
                        continue
                    in_flight[request_id] = request.key
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
                    key = in_flight.pop(output.request_id, None)
                    if key is not None:
                        yield self._result(key, output)
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

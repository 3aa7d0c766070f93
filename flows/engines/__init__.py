"""Generation engines: chat requests in, sampled completions out, streamed as they finish.

    engine = open_engine("tiny-random")             # in-process vLLM (tiny test model)
    engine = open_engine("Qwen/...", base_url=URL)  # any OpenAI-compatible server
    engine = open_engine("fake")                    # deterministic, instant, for tests
    for result in engine.generate(requests): ...
    engine.close()

Heavy imports (vllm, torch, httpx) happen only when an engine is opened.
"""

from __future__ import annotations

from typing import Any

from .base import ChatRequest, ChatResult, Completion, Engine, EngineError, Sampling

FAKE_MODEL = "fake"
TINY_MODEL = "tiny-random"  # reserved name: a tiny random model built locally (tiny_model.py)

__all__ = [
    "ChatRequest",
    "ChatResult",
    "Completion",
    "Engine",
    "EngineError",
    "FAKE_MODEL",
    "Sampling",
    "TINY_MODEL",
    "open_engine",
]


def open_engine(model: str, *, base_url: str | None = None, **options: Any) -> Engine:
    """"fake" -> FakeEngine; `base_url` set -> OpenAIEngine; otherwise an in-process VllmEngine.

    `options` go to the engine's constructor (e.g. max_model_len / kv_cache_bytes for vLLM,
    api_key / max_concurrency for OpenAI, fail_keys / delay for the fake).
    """
    if model == FAKE_MODEL:
        from .fake import FakeEngine

        return FakeEngine(model, **options)
    if base_url:
        from .openai_engine import OpenAIEngine

        return OpenAIEngine(model, base_url=base_url, **options)
    from .vllm_engine import VllmEngine

    return VllmEngine(model, **options)

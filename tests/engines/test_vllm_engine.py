"""The in-process vLLM engine on the tiny model (one engine for the module, ~5 s to start)."""

from __future__ import annotations

from collections import Counter

import pytest

from flows.engines import ChatRequest, Sampling
from flows.engines.device import DEFAULT_CPU_TRIM_SECONDS

pytestmark = pytest.mark.vllm

SYSTEM = "You are a careful baker who answers questions about bread. " * 3


def chat(key, text, *, n=2, max_tokens=8, seed=None, **extra):
    return ChatRequest(
        key=key,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        sampling=Sampling(n=n, temperature=1.0, max_tokens=max_tokens, seed=seed, extra=extra),
    )


def by_key(results):
    out = {}
    for r in results:
        assert r.key not in out, f"key {r.key} yielded twice"
        out[r.key] = r
    return out


def test_n_completions_tools_and_extras(vllm_engine):
    tools = [{"type": "function", "function": {"name": "oven", "parameters": {"type": "object"}}}]
    requests = [
        chat(1, "How long do I proof rye?", n=3, seed=11),
        ChatRequest(2, [{"role": "user", "content": "hi"}], Sampling(n=2, max_tokens=5, seed=3),
                    tools=tools),  # fmt: skip
        chat(3, "Any tips?", n=2, max_tokens=12, seed=5, top_p=0.9, top_k=20, min_p=0.01,
             stop=["\n"], presence_penalty=0.1, frequency_penalty=0.1, repetition_penalty=1.1),  # fmt: skip
    ]
    results = by_key(vllm_engine.generate(requests))
    assert set(results) == {1, 2, 3}
    for request in requests:
        r = results[request.key]
        assert r.error is None, r.error
        assert len(r.completions) == request.sampling.n
        assert r.prompt_tokens > 0
        for c in r.completions:
            assert c.finish_reason in {"stop", "length"}
            assert 0 < c.completion_tokens <= request.sampling.max_tokens
            if c.finish_reason == "length":
                assert c.completion_tokens == request.sampling.max_tokens
    # The tools are rendered into the prompt by the chat template.
    assert results[2].prompt_tokens > 20
    assert all("\n" not in c.text for c in results[3].completions)


def test_same_seeds_same_texts(vllm_engine):
    requests = [chat(i, f"Question {i} about crumb", n=2, max_tokens=10, seed=1000 + 7 * i)
                for i in range(6)]  # fmt: skip
    first = {k: [c.text for c in r.completions] for k, r in by_key(vllm_engine.generate(requests)).items()}
    second = {k: [c.text for c in r.completions]
              for k, r in by_key(vllm_engine.generate(list(reversed(requests[:4])))).items()}  # fmt: skip
    assert second == {k: first[k] for k in range(4)}
    assert len({t for texts in first.values() for t in texts}) == 12  # all distinct


def test_large_batch_streams_every_key_once(vllm_engine):
    """200 requests x n=4: far above the 4096-token prefill budget (on CPU, chunked prefill is off and vLLM must schedule it in steps)."""
    count, window = 200, 48
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(count):
            pulled += 1
            yield chat(i, f"Tell me about loaf number {i}.", n=4, max_tokens=6, seed=4 * i)

    vllm_engine.max_in_flight = window
    try:
        keys, prompt_tokens = Counter(), 0
        for done, r in enumerate(vllm_engine.generate(source()), start=1):
            assert pulled - done <= window  # lazy: a bounded window in flight
            assert r.error is None, r.error
            assert len(r.completions) == 4
            keys[r.key] += 1
            prompt_tokens += r.prompt_tokens
    finally:
        vllm_engine.max_in_flight = 256
    assert keys == Counter(range(count))
    assert prompt_tokens > 4096
    assert vllm_engine._llm.llm_engine.get_num_unfinished_requests() == 0


def test_bad_requests_fail_alone(vllm_engine):
    requests = [
        chat(0, "fine", seed=1),
        chat(1, "bread " * 3000, seed=2),  # longer than max_model_len
        chat(2, "also fine", seed=3),
        chat(3, "bad option", seed=4, beam_width=3),
        chat(4, "bread " * 1900, n=1, max_tokens=100, seed=5),  # runs into max_model_len
    ]
    results = by_key(vllm_engine.generate(requests))
    assert set(results) == {0, 1, 2, 3, 4}
    assert "maximum context length" in results[1].error and results[1].completions == []
    assert "beam_width" in results[3].error
    for key in (0, 2, 4):
        assert results[key].error is None and results[key].completions
    long = results[4]
    assert long.prompt_tokens + long.completions[0].completion_tokens <= 2048
    assert long.completions[0].finish_reason == "length"


def test_closing_the_stream_early_aborts_the_rest(vllm_engine):
    stream = vllm_engine.generate(chat(i, "x", n=2, max_tokens=8, seed=i) for i in range(50))
    first = next(stream)
    assert first.error is None
    stream.close()
    llm_engine = vllm_engine._llm.llm_engine
    while llm_engine.has_unfinished_requests():  # aborted requests drain in a step or two
        llm_engine.step()
    assert [r.key for r in vllm_engine.generate([chat(7, "again", seed=7)])] == [7]


def test_freed_memory_goes_back_to_the_os_while_generating(vllm_engine, monkeypatch):
    from flows.engines import vllm_engine as module

    assert vllm_engine.trim_every == DEFAULT_CPU_TRIM_SECONDS  # CPU default
    assert module._malloc_trim() is not None  # glibc on this machine
    calls = []
    monkeypatch.setattr(module, "_return_free_memory", lambda: calls.append(1))
    monkeypatch.setattr(vllm_engine, "trim_every", 0.0)
    results = list(vllm_engine.generate([chat(i, f"Trim {i}?", max_tokens=6, seed=i) for i in range(4)]))
    assert len(results) == 4 and calls
    calls.clear()
    monkeypatch.setattr(vllm_engine, "trim_every", float("inf"))
    assert len(list(vllm_engine.generate([chat(9, "Again?", max_tokens=6, seed=9)]))) == 1
    assert not calls


def test_asking_for_top_logprobs_changes_no_text_and_gives_one_top_k_per_token(vllm_engine):
    """With top-K, vLLM does not detokenize (the K candidates would cost 85 % of the time) and the
    engine decodes the sampled ids itself: the texts must be exactly vLLM's, partial characters at a
    length cut included (the tiny model writes plenty of those)."""
    requests = [chat(i, f"Texts {i}?", n=2, max_tokens=24, seed=i) for i in range(60)]
    with_top = [ChatRequest(r.key, r.messages, Sampling(n=2, max_tokens=24, seed=r.sampling.seed, top_logprobs=20))
                for r in requests]
    plain = {r.key: r for r in vllm_engine.generate(requests)}
    topped = {r.key: r for r in vllm_engine.generate(with_top)}
    for key, result in plain.items():
        assert [c.text for c in topped[key].completions] == [c.text for c in result.completions]
        assert [c.token_ids for c in topped[key].completions] == [c.token_ids for c in result.completions]
        for completion in topped[key].completions:
            assert len(completion.top_ids) == len(completion.token_ids) and {len(ids) for ids in completion.top_ids} == {20}
        assert all(c.top_ids is None for c in result.completions)

"""OpenAIEngine against a local stub (retries, limits, parsing) and against a real vLLM server."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flows.engines import ChatRequest, Sampling, open_engine
from flows.engines.openai_engine import OpenAIEngine


class Stub:
    """An OpenAI-style /v1/chat/completions whose behaviour is chosen by the user message:

    "ok", "slow" (0.2 s), "429-once" (Retry-After: 0), "429-wait" (Retry-After: 1, once),
    "503" (always), "400" (always), "plain" (a server without vLLM's token-id extensions: 400 naming
    them, else top-K logprobs with tokens as text).
    """

    def __init__(self):
        self.calls = Counter()
        self.bodies = []
        self.active = self.max_active = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/chat/completions"
                mode = body["messages"][-1]["content"]
                with stub.lock:
                    stub.calls[mode] += 1
                    calls = stub.calls[mode]
                    stub.bodies.append(body)
                    stub.active += 1
                    stub.max_active = max(stub.max_active, stub.active)
                try:
                    if mode == "slow":
                        time.sleep(0.2)
                    if mode == "429-once" and calls == 1:
                        return self.reply(429, {"error": "slow down"}, {"Retry-After": "0"})
                    if mode == "429-wait" and calls == 1:
                        return self.reply(429, {"error": "slow down"}, {"Retry-After": "1"})
                    if mode == "503":
                        return self.reply(503, {"error": "overloaded"})
                    if mode == "400":
                        return self.reply(400, {"error": "prompt too long"})
                    if mode == "plain":
                        if "return_token_ids" in body:
                            return self.reply(400, {"error": "Unrecognized request argument supplied: return_token_ids"})
                        top = [{"token": "a", "logprob": -0.1}, {"token": "b", "logprob": -2.5}]
                        return self.reply(200, {
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop",
                                         "logprobs": {"content": [{"token": "a", "logprob": -0.1, "top_logprobs": top}]}}],
                            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                        })  # fmt: skip
                    n = body.get("n", 1)
                    texts = ["abc", "abcdefg", "abcdefghijk"][:n]
                    return self.reply(200, {
                        "choices": [
                            {"index": i, "message": {"role": "assistant", "content": t},
                             "finish_reason": "stop"}
                            for i, t in reversed(list(enumerate(texts)))
                        ],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 10,
                                  "total_tokens": 15},
                    })  # fmt: skip
                finally:
                    with stub.lock:
                        stub.active -= 1

            def reply(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.stop()


def req(key, mode, n=1, seed=None, **extra):
    return ChatRequest(
        key, [{"role": "user", "content": mode}],
        Sampling(n=n, temperature=0.7, max_tokens=9, seed=seed, extra=extra),
    )  # fmt: skip


def test_retries_429_honouring_retry_after(stub):
    engine = open_engine("m", base_url=stub.url, max_retries=3)
    assert isinstance(engine, OpenAIEngine)
    engine.backoff = 0.01
    start = time.monotonic()
    results = {r.key: r for r in engine.generate([req(1, "429-once"), req(2, "429-wait")])}
    elapsed = time.monotonic() - start
    engine.close()
    assert all(r.error is None for r in results.values()), results
    assert stub.calls == Counter({"429-once": 2, "429-wait": 2})
    assert elapsed >= 1.0  # Retry-After: 1 was honoured
    assert results[1].completions[0].text == "abc"


def test_failures_fail_alone(stub):
    engine = OpenAIEngine("m", base_url=stub.url, max_retries=2, backoff=0.01)
    results = {r.key: r for r in engine.generate([req(1, "503"), req(2, "400"), req(3, "ok")])}
    assert "503" in results[1].error and "3 attempts" in results[1].error
    assert "400" in results[2].error and "prompt too long" in results[2].error
    assert results[3].error is None
    assert stub.calls == Counter({"503": 3, "400": 1, "ok": 1})  # no retry on a plain 4xx
    engine.close()


def test_unreachable_server_gives_error_results(unused_port):
    engine = OpenAIEngine("m", base_url=f"http://127.0.0.1:{unused_port}/v1", max_retries=1,
                          backoff=0.01)  # fmt: skip
    (result,) = engine.generate([req(1, "ok")])
    assert result.error and "ConnectError" in result.error and result.completions == []
    engine.close()


def test_request_body_and_choice_parsing(stub):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    request = ChatRequest(
        7, [{"role": "user", "content": "ok"}],
        Sampling(n=3, temperature=0.5, max_tokens=9, seed=42, extra={"top_k": 5, "stop": ["x"]}),
        tools=tools,
    )  # fmt: skip
    engine = OpenAIEngine("my-model", base_url=stub.url + "/", api_key="k")
    (result,) = engine.generate([request])
    engine.close()
    (body,) = stub.bodies
    assert body == {"model": "my-model", "messages": request.messages, "n": 3, "temperature": 0.5,
                    "max_tokens": 9, "seed": 42, "tools": tools, "top_k": 5, "stop": ["x"],
                    "return_token_ids": True, "return_tokens_as_token_ids": True}  # fmt: skip
    assert [c.text for c in result.completions] == ["abc", "abcdefg", "abcdefghijk"]
    assert result.prompt_tokens == 5
    counts = [c.completion_tokens for c in result.completions]
    assert sum(counts) == 10 and counts == sorted(counts)  # split by text length
    assert [c.finish_reason for c in result.completions] == ["stop"] * 3


def test_a_server_without_vllm_extensions_is_asked_again_without_them(stub):
    engine = OpenAIEngine("m", base_url=stub.url, max_retries=0)
    sampling = Sampling(max_tokens=1, top_logprobs=2)
    first, second = (next(iter(engine.generate([ChatRequest(i, [{"role": "user", "content": "plain"}], sampling)])))
                     for i in range(2))
    engine.close()
    assert first.error is None and second.error is None
    assert stub.calls["plain"] == 3  # refused once, then plain requests only
    assert stub.bodies[-1]["logprobs"] is True and stub.bodies[-1]["top_logprobs"] == 2
    (completion,) = second.completions
    # Tokens came back as text: the ids are unknown, so none are claimed.
    assert completion.token_ids is None and completion.top_ids is None


def test_a_plain_400_does_not_drop_the_extensions(stub):
    engine = OpenAIEngine("m", base_url=stub.url, max_retries=0)
    (result,) = engine.generate([req(1, "400")])
    engine.close()
    assert result.error and stub.calls["400"] == 1 and engine._vllm_extensions


def test_concurrency_is_bounded_and_input_lazy(stub):
    engine = OpenAIEngine("m", base_url=stub.url, max_concurrency=4)
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(24):
            pulled += 1
            yield req(i, "slow")

    keys = []
    for done, r in enumerate(engine.generate(source()), start=1):
        assert r.error is None
        assert pulled - done <= 4
        keys.append(r.key)
    engine.close()
    assert sorted(keys) == list(range(24))
    assert 2 <= stub.max_active <= 4


@pytest.mark.vllm
def test_against_vllm_server(vllm_server):
    engine = open_engine("tiny-random", base_url=vllm_server, max_concurrency=4)
    requests = [
        ChatRequest(i, [{"role": "system", "content": "Bake."},
                        {"role": "user", "content": f"Question {i}"}],
                    Sampling(n=2, temperature=1.0, max_tokens=8, seed=100 + 2 * i,
                             extra={"top_p": 0.95}))
        for i in range(8)
    ] + [ChatRequest(99, [{"role": "user", "content": "bread " * 3000}], Sampling(max_tokens=4))]  # fmt: skip
    first = {r.key: r for r in engine.generate(requests)}
    second = {r.key: r for r in engine.generate(requests[:8])}
    engine.close()
    assert set(first) == set(range(8)) | {99}
    assert first[99].error and "400" in first[99].error
    for i in range(8):
        r = first[i]
        assert r.error is None, r.error
        assert len(r.completions) == 2 and r.prompt_tokens > 0
        assert sum(c.completion_tokens for c in r.completions) <= 16
        assert all(c.finish_reason in {"stop", "length"} for c in r.completions)
        assert [c.text for c in r.completions] == [c.text for c in second[i].completions]


@pytest.mark.vllm
def test_top_logprobs_from_a_vllm_server_match_the_in_process_engine(vllm_server, vllm_engine):
    """Both engines give the sampled ids and the same top-K (ids and log-probabilities) for a
    greedy request."""
    request = ChatRequest(0, [{"role": "system", "content": "Bake."}, {"role": "user", "content": "Question"}],
                          Sampling(n=1, temperature=0.0, max_tokens=6, seed=3, top_logprobs=5))
    served = OpenAIEngine("tiny-random", base_url=vllm_server)
    (http_result,) = served.generate([request])
    served.close()
    (local_result,) = vllm_engine.generate([request])
    remote, local = http_result.completions[0], local_result.completions[0]
    assert remote.token_ids == local.token_ids and len(remote.token_ids) == remote.completion_tokens
    assert remote.top_ids == local.top_ids
    assert len(remote.top_ids) == len(remote.token_ids) and all(len(ids) == 5 for ids in remote.top_ids)
    for a, b in zip(remote.top_logprobs, local.top_logprobs):
        assert a == pytest.approx(b, abs=1e-4)
        assert a == sorted(a, reverse=True) and all(v <= 0 for v in a)
    # Greedy: the sampled token is the most likely one.
    assert [ids[0] for ids in local.top_ids] == local.token_ids


def test_slow_responses_time_out_per_request_as_configured(stub, monkeypatch):
    from flows.runtime import Engines

    monkeypatch.setenv("BAKEHOUSE_OPENAI_BASE_URL", stub.url)
    monkeypatch.setenv("BAKEHOUSE_OPENAI_TIMEOUT", "0.05")
    engines = Engines(max_retries=0)
    (result,) = engines("served-model").generate([req(1, "slow")])  # the stub takes 0.2 s
    assert result.error and "ReadTimeout" in result.error
    engines.close()
    monkeypatch.setenv("BAKEHOUSE_OPENAI_TIMEOUT", "5")
    engines = Engines(max_retries=0)
    (result,) = engines("served-model").generate([req(2, "slow")])
    assert result.error is None
    engines.close()

from __future__ import annotations

from flows.engines import ChatRequest, Sampling, open_engine
from flows.engines.fake import FakeEngine


def _requests(count, n=3, seed_base=0, temperature=1.0):
    return [
        ChatRequest(
            key=i,
            messages=[{"role": "user", "content": f"question {i}"}],
            sampling=Sampling(n=n, temperature=temperature, max_tokens=12, seed=seed_base + i),
        )
        for i in range(count)
    ]


def _texts(results):
    return {r.key: [c.text for c in r.completions] for r in results}


def test_deterministic_and_seed_dependent():
    engine = open_engine("fake")
    assert isinstance(engine, FakeEngine)
    first = list(engine.generate(_requests(20)))
    again = list(FakeEngine().generate(reversed(_requests(20))))
    assert _texts(first) == _texts(again)
    other_seeds = _texts(engine.generate(_requests(20, seed_base=100)))
    assert other_seeds != _texts(first)
    for r in first:
        assert len(r.completions) == 3 and r.error is None and r.prompt_tokens > 0
        assert len({c.text for c in r.completions}) > 1  # completions differ by index
        for c in r.completions:
            assert 1 <= c.completion_tokens <= 12
            assert c.completion_tokens == len(c.text.split())
            assert c.finish_reason == ("length" if c.completion_tokens == 12 else "stop")


def test_greedy_completions_agree():
    (result,) = FakeEngine().generate(_requests(1, n=4, temperature=0.0))
    assert len({c.text for c in result.completions}) == 1


def test_fail_keys_and_laziness():
    engine = FakeEngine(fail_keys={2, 5})
    pulled = []

    def source():
        for r in _requests(8):
            pulled.append(r.key)
            yield r

    stream = engine.generate(source())
    assert next(stream).key == 0 and pulled == [0]
    rest = list(stream)
    errors = {r.key for r in rest if r.error}
    assert errors == {2, 5}
    assert all(not r.completions for r in rest if r.error)

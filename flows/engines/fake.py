"""A deterministic, instant engine for tests of the flows (no vLLM, no network)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Iterator

from .base import ChatRequest, ChatResult, Completion

_WORDS = (
    "bread flour water salt yeast dough oven crust crumb knead proof bake rise loaf starter "
    "rye wheat butter sugar honey seed oat spelt warm cool rest fold shape score steam golden"
).split()


class FakeEngine:
    """Text is a function of (messages, tools, seed, completion index) only.

    With temperature 0 the seed and the index are ignored (greedy: all n completions agree).
    Each completion has 1..max_tokens words, one word per "token"; finish_reason is "length" when
    it used all max_tokens, else "stop". Keys in `fail_keys` yield an error result; `delay`
    seconds are slept per request (to test progress reporting). A word's token id is its index in
    the word list; with `top_logprobs` = K the sampled word ranks first, then the next K - 1 words of
    the list, with probabilities 1/2, 1/4, ... (a proper distribution's head, most likely first).
    """

    def __init__(
        self,
        model: str = "fake",
        *,
        fail_keys: Iterable[int] = (),
        delay: float = 0.0,
    ) -> None:
        self.model = model
        self.fail_keys = frozenset(fail_keys)
        self.delay = delay
        self.closed = False

    def _completion(self, request: ChatRequest, prompt: str, index: int) -> Completion:
        s = request.sampling
        salt = "greedy" if s.temperature == 0 else f"{s.seed}/{index}"
        digest = hashlib.sha256(f"{prompt}|{salt}".encode()).digest()
        length = 1 + int.from_bytes(digest[:4], "big") % max(1, s.max_tokens)
        ids = []
        for i in range(length):
            block = hashlib.sha256(digest + i.to_bytes(4, "big")).digest()
            ids.append(block[0] % len(_WORDS))
        k = s.top_logprobs
        return Completion(
            text=" ".join(_WORDS[i] for i in ids),
            finish_reason="length" if length >= s.max_tokens else "stop",
            completion_tokens=length,
            token_ids=ids,
            top_ids=[[(i + r) % len(_WORDS) for r in range(k)] for i in ids] if k else None,
            top_logprobs=[[-math.log(2) * (r + 1) for r in range(k)] for _ in ids] if k else None,
        )

    def generate(self, requests: Iterable[ChatRequest]) -> Iterator[ChatResult]:
        if self.closed:
            raise RuntimeError("FakeEngine is closed")
        for request in requests:
            if self.delay:
                time.sleep(self.delay)
            if request.key in self.fail_keys:
                yield ChatResult(request.key, [], error="simulated failure")
                continue
            prompt = json.dumps(
                [request.messages, request.tools], sort_keys=True, ensure_ascii=False, default=str
            )
            prompt_tokens = sum(
                len(str(m.get("content") or "").split()) + 3 for m in request.messages
            )
            yield ChatResult(
                request.key,
                [self._completion(request, prompt, i) for i in range(request.sampling.n)],
                prompt_tokens=prompt_tokens,
            )

    def close(self) -> None:
        self.closed = True

"""Run statistics that add up across chunks, shards and attempts.

Each committed chunk's marker carries the counts of the requests that made it (tokens, errors by
kind, a latency histogram, engine seconds). Whoever generated a chunk, its counts are stored once
with it, so the figures of a job are the sum over its markers: the same for a rollout run in one
process, by many shards on many machines, or resumed after a crash. Percentiles come from a
histogram with 10 %-wide buckets, which merges by adding counts (no sample list to keep).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any
from repo_store.settings import get_settings

BUCKET_GROWTH = 1.1  # each latency bucket is 10 % wider than the one before: percentiles within 10 %


class LatencyHistogram:
    """Counts of latencies (milliseconds) by log-spaced bucket; mergeable and small on storage."""

    def __init__(self, counts: Mapping[str, int] | None = None):
        self.counts: Counter[int] = Counter({int(k): int(v) for k, v in (counts or {}).items()})

    def add(self, milliseconds: float) -> None:
        self.counts[_bucket(milliseconds)] += 1

    def merge(self, other: LatencyHistogram) -> None:
        self.counts.update(other.counts)

    def __len__(self) -> int:
        return sum(self.counts.values())

    def percentile(self, fraction: float) -> float | None:
        """The upper edge of the bucket holding that fraction of the requests (None when empty)."""
        total = len(self)
        if not total:
            return None
        wanted, seen = math.ceil(fraction * total), 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= wanted:
                return round(BUCKET_GROWTH ** (bucket + 1), 1)
        return None  # pragma: no cover - the loop always reaches `total`

    def to_json(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(self.counts.items())}


def _bucket(milliseconds: float) -> int:
    return math.floor(math.log(max(milliseconds, 1.0), BUCKET_GROWTH))


def error_kind(message: str) -> str:
    """A short name for what went wrong with one request, to count errors by kind."""
    if match := re.search(r"HTTP (\d{3})", message):
        return f"http_{match.group(1)}"
    if message.startswith("gave up after"):
        return "retries_exhausted"
    if message.startswith("engine closed"):
        return "engine_closed"
    if match := re.match(r"([A-Za-z_][A-Za-z0-9_]*(?:Error|Exception|Timeout))\b", message):
        return match.group(1)
    return "engine_error"


class RequestCounts:
    """What one chunk's requests cost, as its marker stores it (`to_json`), summed with `add`."""

    FIELDS = ("requests", "trajectories", "errors", "prompt_tokens", "completion_tokens",
              "cached_prompt_tokens", "cache_reported_prompt_tokens")

    def __init__(self) -> None:
        self.values: dict[str, int] = dict.fromkeys(self.FIELDS, 0)
        self.errors_by_kind: Counter[str] = Counter()
        self.latency = LatencyHistogram()
        self.engine_seconds = 0.0

    def record_request(self, *, latency_ms: float, prompt_tokens: int, cached_prompt_tokens: int | None,
                       error: str | None) -> None:
        self.values["requests"] += 1
        self.values["prompt_tokens"] += prompt_tokens
        self.latency.add(latency_ms)
        if cached_prompt_tokens is not None:
            self.values["cached_prompt_tokens"] += cached_prompt_tokens
            self.values["cache_reported_prompt_tokens"] += prompt_tokens
        if error is not None:
            self.errors_by_kind[error_kind(error)] += 1

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def __setitem__(self, name: str, value: int) -> None:
        self.values[name] = value

    def add(self, other: RequestCounts) -> None:
        for name, value in other.values.items():
            self.values[name] += value
        self.errors_by_kind.update(other.errors_by_kind)
        self.latency.merge(other.latency)
        self.engine_seconds += other.engine_seconds

    def to_json(self) -> dict[str, Any]:
        return {**self.values, "errors_by_kind": dict(self.errors_by_kind), "latency_ms_histogram": self.latency.to_json(),
                "engine_seconds": round(self.engine_seconds, 3)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RequestCounts:
        counts = cls()
        for name in cls.FIELDS:
            counts.values[name] = int(data.get(name, 0))
        counts.errors_by_kind.update(data.get("errors_by_kind", {}))
        counts.latency = LatencyHistogram(data.get("latency_ms_histogram"))
        counts.engine_seconds = float(data.get("engine_seconds", 0.0))
        return counts

    @classmethod
    def total(cls, chunk_stats: Iterable[Mapping[str, Any]]) -> RequestCounts:
        counts = cls()
        for stats in chunk_stats:
            counts.add(cls.from_json(stats))
        return counts


def run_stats(counts: RequestCounts, *, seconds: float | None) -> dict[str, Any]:
    """The figures a job shows in `stats`. Rates are per engine second (the time requests were being
    served, summed over shards); `seconds` is the attempt's wall time where known. The cost comes
    from BAKEHOUSE_PRICE_PER_MTOK_USD when the engine is an HTTP provider (BAKEHOUSE_OPENAI_BASE_URL),
    else BAKEHOUSE_GPU_HOUR_USD times the engine seconds; null when no price is configured."""
    priced_by_tokens = bool(get_settings().openai_base_url)
    engine_seconds = counts.engine_seconds
    tokens = counts["prompt_tokens"] + counts["completion_tokens"]
    reported = counts["cache_reported_prompt_tokens"]
    return {
        "requests": counts["requests"],
        "trajectories": counts["trajectories"],
        "prompt_tokens": counts["prompt_tokens"],
        "completion_tokens": counts["completion_tokens"],
        "errors": counts["errors"],
        "errors_by_kind": dict(counts.errors_by_kind),
        "latency_ms": {name: counts.latency.percentile(q) for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
        "engine_seconds": round(engine_seconds, 2),
        "seconds": None if seconds is None else round(seconds, 2),
        "trajectories_per_second": round(counts["trajectories"] / engine_seconds, 2) if engine_seconds else None,
        "tokens_per_second": round(counts["completion_tokens"] / engine_seconds, 1) if engine_seconds else None,
        "prefix_cache_hit_rate": round(counts["cached_prompt_tokens"] / reported, 4) if reported else None,
        "estimated_cost_usd": estimated_cost_usd(engine_seconds=engine_seconds, tokens=tokens,
                                                 priced_by_tokens=priced_by_tokens),
    }


def estimated_cost_usd(*, engine_seconds: float, tokens: int, priced_by_tokens: bool) -> float | None:
    settings = get_settings()
    if priced_by_tokens and settings.price_per_mtok_usd is not None:
        return round(tokens / 1e6 * settings.price_per_mtok_usd, 6)
    if settings.gpu_hour_usd is not None:
        return round(engine_seconds / 3600 * settings.gpu_hour_usd, 6)
    return None


def job_stats(kind: str, chunk_stats: Iterable[Mapping[str, Any]], summary: Mapping[str, Any], lines: int) -> dict[str, Any]:
    """The `stats` of a stim or rollout job, running or finished, from its chunk markers."""
    seconds = summary.get("seconds")
    if kind == "rollout":
        return run_stats(RequestCounts.total(chunk_stats), seconds=seconds)
    return {"stimuli": lines, "seconds": seconds,
            "stimuli_per_second": round(lines / seconds, 2) if seconds else None}

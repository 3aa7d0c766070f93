"""Every `BAKEHOUSE_*` variable, read in one place (the SDK client aside, which reads its own two).

It sits in `repo_store` because that is the lowest layer that needs any (the storage root, the
lease), so every layer above imports it downward. `get_settings()` is called where a value is used,
not at import: a variable changed in a test or set by `bakehouse up` for its children is seen, and
the parsed object is reused while the variables stay the same. The README's "Settings" table is
this class in prose; keep the two together.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "BAKEHOUSE_"


class SettingsError(ValueError):
    """A `BAKEHOUSE_*` variable holds a value that cannot be used; the message names it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    # Storage and the job protocol
    data: str = Field("./bakehouse-data", description="Storage: a folder or s3://bucket/prefix")
    datasets_url: str | None = Field(None, description="Folder or URL holding Bread's named datasets as <name>.parquet")
    source_roots: str = Field("", description="Comma-separated URL or folder prefixes that file sources must be under (empty: anywhere outside storage)")
    lease_seconds: float = Field(60.0, gt=0, description="A claim without a heartbeat for this long is free to take over")
    stall_seconds: float = Field(1800.0, gt=0, description="Work without progress for this long stops heartbeating (and is shown `stalled`)")
    rollout_chunk: int = Field(64, ge=1, description="Stimuli per rollout chunk (one commit each)")
    # Engines
    openai_base_url: str | None = Field(None, description="Send generation for non-reserved models to this OpenAI-compatible /v1 (bakehouse's own, or a fleet)")
    openai_api_key: str | None = Field(None, description="Bearer key for BAKEHOUSE_OPENAI_BASE_URL")
    openai_timeout: float | None = Field(None, gt=0, description="Seconds per request to BAKEHOUSE_OPENAI_BASE_URL")
    model_cache: Path | None = Field(None, description="Where reserved models are built (default ~/.cache/bakehouse/models)")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one vLLM engine spans")
    max_model_len: int | None = Field(None, ge=1, description="Context length vLLM plans for (default: the model's; CPU at most 4,096)")
    kv_cache_mb: float | None = Field(None, gt=0, description="KV cache size (CUDA default: from the memory share; CPU: 256)")
    gpu_memory_utilization: float = Field(0.90, gt=0, le=1, description="Share of GPU memory vLLM may take")
    max_num_seqs: int | None = Field(None, ge=1, description="Sequences batched per engine step (default vLLM's)")
    gradient_checkpointing: bool = Field(False, description="Bakes recompute activations: less memory, more time")
    # Costs shown in job stats
    price_per_mtok_usd: float | None = Field(None, ge=0, description="Price per million tokens of the HTTP provider")
    gpu_hour_usd: float | None = Field(None, ge=0, description="Price of one engine hour (in-process engines)")
    # The API and its runner
    max_body_bytes: int = Field(10_000_000, ge=1, description="Largest request body the API accepts")
    rate_limit_per_hour: int = Field(36_000, ge=1, description="Requests per key per hour, bursts included")
    usage_flush_seconds: float = Field(5.0, gt=0, description="How often key usage is written to storage")
    start_timeout: float = Field(900.0, gt=0, description="Seconds a started worker may take to claim its job before the job is reported failed")
    # Serving chat
    serve_checkpoints: Literal["adapter", "merged"] | None = Field(None, description="How baked checkpoints are served (default: adapter on GPU, merged on CPU)")
    serve_max_servers: int = Field(2, ge=1, description="vLLM servers kept loaded for chat at once")
    serve_max_n: int = Field(16, ge=1, description="Largest `n` of one chat request")
    # `bakehouse up`
    log_dir: Path | None = Field(None, description="Where `bakehouse up` writes its logs (default ~/.cache/bakehouse/logs)")

    @property
    def source_root_list(self) -> list[str]:
        return [root.strip() for root in self.source_roots.split(",") if root.strip()]

    @property
    def model_cache_root(self) -> Path:
        return self.model_cache.expanduser() if self.model_cache else Path.home() / ".cache" / "bakehouse" / "models"

    @property
    def log_root(self) -> Path:
        return self.log_dir.expanduser() if self.log_dir else Path.home() / ".cache" / "bakehouse" / "logs"


_cached: tuple[tuple[tuple[str, str], ...], Settings] | None = None


def get_settings() -> Settings:
    """The settings of this process's environment now (parsed again only when a variable changed)."""
    global _cached
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(PREFIX)))
    if _cached is None or _cached[0] != key:
        try:
            _cached = (key, Settings())
        except ValidationError as error:
            problems = "; ".join(f"{PREFIX}{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors())
            raise SettingsError(f"invalid setting: {problems}") from None
    return _cached[1]

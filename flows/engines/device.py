"""What runs differently on a CUDA machine and on a CPU-only one, decided here and nowhere else.

    vllm_settings(model_path, cuda=cuda_available())   # vllm.LLM arguments, env, allocator trimming
    train_settings(cuda=cuda_available(), rank=0)       # the bake's device, precision, process group

`cuda` is a parameter (the probe `cuda_available()` by default at the call sites) so tests choose
either machine without one. Machine knobs (tensor parallel size, context length, KV cache, GPU memory
share, batch size, gradient checkpointing) come from `repo_store.settings` (the README's settings table).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from repo_store.settings import Settings, get_settings

DEFAULT_CPU_KV_CACHE_BYTES = 256 * 2**20
# On CPU a model's full context (8,192 for smollm2-135m) needs more KV cache than the default holds;
# chats here are short, so the CPU default caps the context instead.
DEFAULT_CPU_MAX_MODEL_LEN = 4096
DEFAULT_CPU_TRIM_SECONDS = 1.0


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class VllmSettings:
    kwargs: dict[str, Any]  # for vllm.LLM
    env: dict[str, str]  # set where unset, before vllm is imported
    trim_every: float | None  # seconds between malloc_trim calls while generating; None: never


def vllm_settings(
    model_path: str,
    *,
    cuda: bool,
    max_model_len: int | None = None,
    kv_cache_bytes: int | None = None,
    dtype: str | None = None,
    tensor_parallel_size: int | None = None,
    max_num_seqs: int | None = None,
    trim_every: float | None = None,
    settings: Settings | None = None,
) -> VllmSettings:
    """Arguments win over the environment, which wins over the device's defaults.

    CUDA: bf16, CUDA graphs (not eager), prefix caching (the teacher prompt is every request's
    prefix), chunked prefill (per-request seeds work with it on GPU), vLLM's engine core in its own
    process (`VLLM_ENABLE_V1_MULTIPROCESSING=1`: it overlaps scheduling with the GPU).
    CPU: fp32 (bf16 is 3-5x slower on these CPUs), eager (no 40-80 s compile warm-up), no chunked
    prefill (with per-request seeds a batch over the token budget crashes: "CPU Generator does not
    use offset"), a small KV cache instead of ~90 % of RAM, the engine core in this process (start-up
    20-35 s -> a few; no orphan when killed), and malloc_trim once a second (vLLM's CPU tensors
    leave freed pages in glibc's arenas: peak RSS grew ~600 MB from 10k to 100k trajectories).
    """
    settings = settings or get_settings()
    kwargs: dict[str, Any] = {"model": model_path}
    kwargs["tensor_parallel_size"] = tensor_parallel_size or settings.tensor_parallel_size
    if max_model_len is None:
        max_model_len = settings.max_model_len
    if kv_cache_bytes is None and settings.kv_cache_mb is not None:
        kv_cache_bytes = int(settings.kv_cache_mb * 2**20)
    if max_num_seqs is None:
        max_num_seqs = settings.max_num_seqs
    if max_num_seqs is not None:
        kwargs["max_num_seqs"] = max_num_seqs
    if cuda:
        kwargs.update(dtype=dtype or "bfloat16", enforce_eager=False, enable_prefix_caching=True,
                      enable_chunked_prefill=True,
                      gpu_memory_utilization=settings.gpu_memory_utilization)
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    else:
        kwargs.update(dtype=dtype or "float32", enforce_eager=True, enable_chunked_prefill=False)
        if max_model_len is None and _max_positions(model_path) > DEFAULT_CPU_MAX_MODEL_LEN:
            max_model_len = DEFAULT_CPU_MAX_MODEL_LEN
        if kv_cache_bytes is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_cache_bytes = DEFAULT_CPU_KV_CACHE_BYTES
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        trim_every = DEFAULT_CPU_TRIM_SECONDS if trim_every is None else trim_every
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if kv_cache_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_bytes)
    return VllmSettings(kwargs, env, trim_every)


def _max_positions(path: str) -> int:
    """The model's own context length where its config is a local file (0 when unknown)."""
    try:
        with open(os.path.join(path, "config.json")) as config:
            return int(json.load(config).get("max_position_embeddings") or 0)
    except (OSError, ValueError):
        return 0


@dataclass(frozen=True)
class TrainSettings:
    device: str  # "cuda:<local rank>" or "cpu"
    autocast_dtype: str | None  # "bfloat16" on CUDA: matmuls in bf16, master weights and loss in fp32
    gradient_checkpointing: bool  # recompute activations in backward: less memory, ~30 % more time
    backend: str  # torch.distributed backend for data-parallel bakes


def train_settings(*, cuda: bool, rank: int = 0, gradient_checkpointing: bool | None = None,
                   settings: Settings | None = None) -> TrainSettings:
    """One process per GPU (`cuda:<rank % devices>`: torchrun's local rank on a node); CPU bakes
    train in fp32 (bf16 is slow on these CPUs) with gloo for data-parallel groups."""
    if gradient_checkpointing is None:
        gradient_checkpointing = (settings or get_settings()).gradient_checkpointing
    if cuda:
        import torch

        local = int(os.environ.get("LOCAL_RANK", rank)) % max(torch.cuda.device_count(), 1)
        return TrainSettings(f"cuda:{local}", "bfloat16", gradient_checkpointing, "nccl")
    return TrainSettings("cpu", None, gradient_checkpointing, "gloo")


def server_arguments(settings: VllmSettings) -> list[str]:
    """The same settings as flags of vLLM's OpenAI-compatible server (`--model M --dtype float32
    --enforce-eager --no-enable-chunked-prefill ...`)."""
    arguments = []
    for name, value in settings.kwargs.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            arguments.append(flag)
        elif value is False:
            arguments.append("--no-" + name.replace("_", "-"))
        else:
            arguments += [flag, str(value)]
    return arguments

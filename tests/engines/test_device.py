"""Device settings for a CUDA machine and a CPU-only one, chosen without a GPU (the probe is injected)."""

from __future__ import annotations

from flows.engines.device import train_settings, vllm_settings
from repo_store.settings import Settings


def test_vllm_on_cuda_uses_bf16_cuda_graphs_prefix_caching_and_chunked_prefill(monkeypatch):
    for name, value in {"TENSOR_PARALLEL_SIZE": "4", "GPU_MEMORY_UTILIZATION": "0.8", "MAX_NUM_SEQS": "512"}.items():
        monkeypatch.setenv(f"BAKEHOUSE_{name}", value)  # read through repo_store.settings
    settings = vllm_settings("/models/m", cuda=True)
    assert settings.kwargs == {"model": "/models/m", "tensor_parallel_size": 4, "max_num_seqs": 512, "dtype": "bfloat16",
                               "enforce_eager": False, "enable_prefix_caching": True, "enable_chunked_prefill": True,
                               "gpu_memory_utilization": 0.8}
    assert settings.env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"} and settings.trim_every is None


def test_vllm_on_cpu_uses_fp32_eager_a_small_kv_cache_and_trims_memory(tiny_model_dir, tmp_path):
    settings = vllm_settings(str(tiny_model_dir), cuda=False, settings=Settings())
    assert settings.kwargs == {"model": str(tiny_model_dir), "tensor_parallel_size": 1, "dtype": "float32",
                               "enforce_eager": True, "enable_chunked_prefill": False,
                               "kv_cache_memory_bytes": 256 * 2**20}
    assert settings.env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} and settings.trim_every == 1.0
    # A model whose context exceeds what the CPU default plans for is capped; arguments win.
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 8192}')
    assert vllm_settings(str(tmp_path), cuda=False, settings=Settings()).kwargs["max_model_len"] == 4096
    assert vllm_settings(str(tmp_path), cuda=False, max_model_len=8192, settings=Settings()).kwargs["max_model_len"] == 8192
    assert vllm_settings(str(tmp_path), cuda=False, settings=Settings(kv_cache_mb=64)).kwargs["kv_cache_memory_bytes"] == 64 * 2**20


def test_the_bake_trains_in_bf16_autocast_on_its_own_gpu_and_fp32_on_cpu(monkeypatch):
    monkeypatch.setenv("BAKEHOUSE_GRADIENT_CHECKPOINTING", "1")
    cuda = train_settings(cuda=True, rank=3)
    monkeypatch.delenv("BAKEHOUSE_GRADIENT_CHECKPOINTING")
    assert (cuda.device, cuda.autocast_dtype, cuda.gradient_checkpointing, cuda.backend) == ("cuda:0", "bfloat16", True, "nccl")
    cpu = train_settings(cuda=False, settings=Settings())
    assert (cpu.device, cpu.autocast_dtype, cpu.gradient_checkpointing, cpu.backend) == ("cpu", None, False, "gloo")

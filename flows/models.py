"""Where a model name's weights are on this machine: no model hub is assumed reachable.

    model_folder(workspace, name)   a folder transformers and vLLM load (built or merged on first use)
    engine_model(workspace, name)   what a generation engine opens: baked checkpoints merged
    check_model(workspace, name)    InvalidInput unless the name can be resolved (builds nothing)

Names: a reserved name (`smollm2-135m`, `tiny-random`: engines/model_cache.py), a local model folder,
a hub id already in the local Hugging Face cache, or one of this workspace's baked checkpoints,
`<workspace>/<repo>/<bake>/<step>` as a bake's `model_name` lists them.

A baked checkpoint is used *merged*: its parent's weights with the LoRA adapter added in
(`merge_and_unload`), saved once under the model cache, keyed by the checkpoint's commit token (a
re-created bake gets a new folder). A bake on top of it trains a fresh adapter on those merged
weights, so its teacher (the adapter off) is exactly the first bake's model, and a rollout with it
runs at the base model's speed (vLLM on CPU serves a LoRA adapter at about a quarter of the merged
weights' throughput, as bench/serving.py measures).
Chains work: a checkpoint whose parent is itself a checkpoint merges that one first.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from repo_store import Workspace
from repo_store.bakes import ADAPTER_FILES
from targets import InvalidInput, NotFound

from flows.engines.model_cache import RESERVED, build_once, model_path
from repo_store.settings import get_settings


@dataclass(frozen=True)
class BakedCheckpoint:
    workspace: str
    repo: str
    bake: str
    step: int

    @classmethod
    def parse(cls, name: str) -> BakedCheckpoint | None:
        """`<workspace>/<repo>/<bake>/<step>`, else None (not a checkpoint name)."""
        parts = name.split("/")
        if len(parts) != 4 or not parts[3].isdigit() or os.path.exists(name):
            return None
        return cls(parts[0], parts[1], parts[2], int(parts[3]))


ALWAYS_LOCAL = ("fake", "tiny-random")  # built here in seconds: never sent to a server


def served_remotely(name: str) -> bool:
    """Whether generating with `name` goes to the OpenAI-compatible server at
    BAKEHOUSE_OPENAI_BASE_URL (bakehouse's own /v1, or a fleet) rather than an engine in this process."""
    return bool(get_settings().openai_base_url) and name not in ALWAYS_LOCAL


def engine_model(workspace: Workspace, name: str) -> str:
    """What to open an engine with: a baked checkpoint's merged folder, any other name as it is
    (the engines resolve reserved names and serve the rest). A name served remotely goes as it is."""
    if served_remotely(name):
        return name
    return model_folder(workspace, name) if BakedCheckpoint.parse(name) else name


def check_model(workspace: Workspace, name: str, *, role: str = "model") -> None:
    """InvalidInput naming the model (as `role`: "parent model", ...) unless `name` resolves here; a
    checkpoint must exist in this workspace (another workspace's is treated as missing)."""
    checkpoint = BakedCheckpoint.parse(name)
    if checkpoint is not None:
        _checkpoint_record(workspace, checkpoint, name, role)
        return
    _plain_model_folder(name, build=False, role=role)


def model_folder(workspace: Workspace, name: str) -> str:
    checkpoint = BakedCheckpoint.parse(name)
    if checkpoint is None:
        return _plain_model_folder(name, build=True)
    bake, record = _checkpoint_record(workspace, checkpoint, name)
    parent = bake.config.model.parent_model_name or workspace.get_repo(checkpoint.repo).base_model
    parent_folder = model_folder(workspace, parent)
    run = workspace.bake_run(checkpoint.repo, bake)
    key = hashlib.sha256(f"{name}\n{record.token}\n{parent_folder}".encode()).hexdigest()[:16]

    def merge(folder: Path) -> None:
        adapter = {file: run.read_checkpoint_file(record, file) for file in ADAPTER_FILES}
        merge_adapter(parent_folder, adapter, folder)

    return str(build_once(f"baked-{key}", merge))


def merge_adapter(parent_folder: str, adapter_files: dict[str, bytes], destination: Path) -> None:
    """Save parent + adapter merged (fp32) with the parent's tokenizer into `destination`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as adapter_folder:
        for file, data in adapter_files.items():
            Path(adapter_folder, file).write_bytes(data)
        base = AutoModelForCausalLM.from_pretrained(parent_folder, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, adapter_folder).merge_and_unload()
    merged.save_pretrained(destination)
    AutoTokenizer.from_pretrained(parent_folder).save_pretrained(destination)


def _checkpoint_record(workspace: Workspace, checkpoint: BakedCheckpoint, name: str, role: str = "model"):
    missing = InvalidInput(f"{role} '{name}' does not exist: no checkpoint {checkpoint.step} of bake "
                           f"'{checkpoint.bake}' in repo '{checkpoint.repo}' of this workspace")
    if checkpoint.workspace != workspace.name:
        raise missing
    try:
        bake = workspace.get_bake(checkpoint.repo, checkpoint.bake)
    except NotFound:
        raise missing from None
    record = workspace.bake_run(checkpoint.repo, bake).checkpoint(checkpoint.step)
    if record is None:
        raise missing
    return bake, record


def _plain_model_folder(name: str, *, build: bool, role: str = "model") -> str:
    if name in RESERVED:
        return str(model_path(name)) if build else name
    if os.path.isfile(os.path.join(name, "config.json")):
        return name
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json") if name.count("/") == 1 else None
    if isinstance(cached, str):
        return os.path.dirname(cached)
    raise InvalidInput(
        f"{role} '{name}' cannot be found: use a reserved name ({', '.join(RESERVED)}), a local model folder, "
        "a Hugging Face model id already downloaded to this machine's cache, or a baked checkpoint "
        "'<workspace>/<repo>/<bake>/<step>'"
    )

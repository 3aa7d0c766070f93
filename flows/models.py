"""Where a bake finds its parent model's weights: no model hub is assumed reachable."""

from __future__ import annotations

import os

from targets import InvalidInput

from flows.engines.model_cache import RESERVED, model_path


def parent_model_path(name: str) -> str:
    """A local folder transformers loads for `name`: a reserved name's build, a folder, or a hub id
    already in the local Hugging Face cache. InvalidInput saying which when there is none."""
    if name in RESERVED:
        return str(model_path(name))
    if os.path.isfile(os.path.join(name, "config.json")):
        return name
    if name.count("/") >= 3:  # <workspace>/<repo>/<bake>/<step>: a baked checkpoint
        raise InvalidInput(f"parent model '{name}': baking on top of a baked checkpoint is not supported yet")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json") if name.count("/") == 1 else None
    if isinstance(cached, str):
        return os.path.dirname(cached)
    raise InvalidInput(
        f"parent model '{name}' cannot be found: use a reserved name ({', '.join(RESERVED)}), a local model folder, "
        "or a Hugging Face model id already downloaded to this machine's cache"
    )

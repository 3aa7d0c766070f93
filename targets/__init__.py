"""Pure domain: resource specs, target configs and templates, generators, stimulus rendering. No I/O."""

from targets.config import (
    Generator,
    Message,
    PromptSpec,
    RepoSpec,
    TargetConfig,
    TargetSpec,
    config_hash,
    derive_seed,
    parse,
    resolve_target,
)
from targets.errors import BakehouseError, Conflict, InvalidInput, NotFound, ValidationFailed
from targets.names import validate_name
from targets.render import render_stimulus

__all__ = [
    "BakehouseError",
    "Conflict",
    "Generator",
    "InvalidInput",
    "Message",
    "NotFound",
    "PromptSpec",
    "RepoSpec",
    "TargetConfig",
    "TargetSpec",
    "ValidationFailed",
    "config_hash",
    "derive_seed",
    "parse",
    "render_stimulus",
    "resolve_target",
    "validate_name",
]

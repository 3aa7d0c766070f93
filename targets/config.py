"""Resource specs and the target config: what a user can say, checked once, here.

A target is stored as `{template, overrides}` plus the *resolved* config: the template's resolved
config (or the defaults) with the overrides deep-merged in. Dicts merge key by key, lists are
replaced whole, and a `null` override means "not specified". Two targets are the same target when
their resolved configs have the same content hash.
"""

from __future__ import annotations

import hashlib
import json
import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from targets.errors import ValidationFailed
from targets.names import validate_name

GeneratorType = Literal["hardcoded", "oneshot_qs", "from_dataset", "persona"]

MAX_TEMPLATE_BYTES = 1_000_000

# Sampling options a rollout may pass through `extra_kwargs`; anything else is refused up front
# rather than silently ignored by one engine and honoured by another.
SAMPLING_EXTRA_KWARGS = frozenset(
    {"top_p", "top_k", "min_p", "stop", "presence_penalty", "frequency_penalty", "repetition_penalty"}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _null_means_default(data: Any) -> Any:
    """Bread's schema makes these fields nullable: null is the same as leaving the field out."""
    if isinstance(data, dict):
        return {key: value for key, value in data.items() if value is not None}
    return data


class Message(BaseModel):
    """A chat message; extra keys (tool_calls, name, ...) travel untouched."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class RepoSpec(_Strict):
    repo_name: str
    base_model: str = "Qwen/Qwen3-32B"

    @field_validator("repo_name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value, "repo_name")

    @field_validator("base_model", mode="before")
    @classmethod
    def _default_base_model(cls, value: Any) -> Any:
        return "Qwen/Qwen3-32B" if value is None else value


class PromptSpec(_Strict):
    prompt_name: str
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None

    @field_validator("prompt_name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value, "prompt_name")


class Generator(_Strict):
    """One stimulus strategy (one of Bread's generator types). Fields a type does not use are refused, not ignored."""

    type: GeneratorType
    numq: int | None = Field(default=None, ge=1, le=1_000_000)
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1)
    dataset: str | None = None
    column: str | None = None
    questions: list[str] | None = None
    template_path: str | None = None
    template_content: str | None = None
    seed: int | None = None
    rollout_with_conditioned: bool = False

    _nulls = model_validator(mode="before")(_null_means_default)

    @model_validator(mode="after")
    def _check_type(self) -> Generator:
        if self.type == "hardcoded":
            if not self.questions:
                raise ValueError("hardcoded generator needs a non-empty 'questions' list")
            if any(not isinstance(q, str) or not q.strip() for q in self.questions):
                raise ValueError("hardcoded generator: every question must be a non-empty string")
            if self.numq is not None and self.numq > len(self.questions):
                raise ValueError(
                    f"hardcoded generator: numq={self.numq} but only {len(self.questions)} questions given"
                )
        elif self.numq is None:
            raise ValueError(f"{self.type} generator needs 'numq'")
        if self.type == "from_dataset" and not self.dataset:
            raise ValueError("from_dataset generator needs 'dataset' (a file URL or a known dataset name)")
        if self.template_content is not None:
            if len(self.template_content.encode()) > MAX_TEMPLATE_BYTES:
                raise ValueError("template_content is larger than 1 MB")
            names = {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(self.template_content)}
            missing = {"numq", "prompt_u"} - names
            if missing:
                raise ValueError(f"template_content must use ${{numq}} and ${{prompt_u}}; missing: {sorted(missing)}")
        return self

    @property
    def count(self) -> int:
        """How many stimuli this generator contributes."""
        if self.type == "hardcoded":
            return self.numq if self.numq is not None else len(self.questions or [])
        assert self.numq is not None
        return self.numq


class TargetConfig(_Strict):
    """The resolved config of a target (Bread's `TargetConfigBase`, plus `seed`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    teacher_prompt: str | None = None
    student_prompt: str | None = None
    generators: list[Generator] = Field(default_factory=list)
    model_name: str | None = None
    num_traj_per_stimulus: int = Field(default=1, ge=1, le=1024)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_concurrency: int = Field(default=10, ge=1, le=10_000)
    extra_kwargs: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    # bakehouse extension: the teacher's K most likely tokens (ids and log-probabilities) are stored
    # with every rollout token, so a bake needs no teacher forward pass; 0 stores none.
    teacher_top_k: int = Field(default=20, ge=0, le=20)

    @model_validator(mode="before")
    @classmethod
    def _accept_u_v(cls, data: Any) -> Any:
        """Bread's deprecated `u`/`v` are accepted on input and never emitted; null is "not set"."""
        if not isinstance(data, dict):
            return data
        data = _null_means_default(data)
        for old, new in (("u", "teacher_prompt"), ("v", "student_prompt")):
            if old in data:
                value = data.pop(old)
                if data.get(new) not in (None, value):
                    raise ValueError(f"'{old}' is the deprecated name of '{new}'; they disagree")
                if data.get(new) is None:
                    data[new] = value
        return data

    @field_validator("extra_kwargs")
    @classmethod
    def _known_extra_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - SAMPLING_EXTRA_KWARGS)
        if unknown:
            raise ValueError(
                f"unsupported extra_kwargs {unknown}; supported: {sorted(SAMPLING_EXTRA_KWARGS)}"
            )
        return value

    def stim_part(self) -> dict[str, Any]:
        """What a stim job's `config` echoes (Bread sends only the stim fields)."""
        return self.model_dump(include={"generators", "teacher_prompt", "student_prompt"}, exclude_none=True)

    def rollout_part(self) -> dict[str, Any]:
        return self.model_dump(
            include={"model_name", "num_traj_per_stimulus", "max_concurrency", "temperature", "max_tokens"},
            exclude_none=True,
        )

    def missing_stim_fields(self) -> list[str]:
        return [name for name in ("teacher_prompt", "student_prompt") if getattr(self, name) is None]


class TargetSpec(_Strict):
    target_name: str
    template: str = "default"
    overrides: dict[str, Any] | None = None

    @field_validator("target_name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value, "target_name")

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return validate_name(value, "template")


def parse(model: type[BaseModel], data: Any, what: str) -> Any:
    """Validate `data` as `model`, turning pydantic's report into one readable sentence."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ValidationFailed(f"invalid {what}: {describe(error)}", fields=field_errors(error)) from None


def field_errors(error: ValidationError) -> list[tuple[str, str]]:
    """(field path, message) for each fault pydantic found."""
    found = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        found.append((".".join(str(p) for p in item["loc"]) or "(root)",
                      "unknown field" if item["type"] == "extra_forbidden" else message))
    return found


def describe(error: ValidationError) -> str:
    return "; ".join(f"{where}: {message}" for where, message in field_errors(error))


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def normalise_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Target overrides with Bread's deprecated `u`/`v` renamed (what is stored and merged)."""
    try:
        return TargetConfig._accept_u_v(dict(overrides))
    except ValueError as error:
        raise ValidationFailed(f"invalid target config: {error}") from None


def resolve_target(overrides: dict[str, Any] | None, template_config: TargetConfig | None = None) -> TargetConfig:
    """Merge `overrides` over a template's resolved config (or the defaults when `None`)."""
    if overrides is not None and not isinstance(overrides, dict):
        raise ValidationFailed("invalid target overrides: must be an object")
    # Normalise the deprecated names first so `u` in overrides replaces a template's teacher_prompt.
    normalised = normalise_overrides(overrides or {})
    base = template_config.model_dump(exclude_none=True) if template_config else {}
    return parse(TargetConfig, deep_merge(base, normalised), "target config")


def _canonical(value: Any) -> Any:
    # 1 and 1.0 are the same setting; JSON text must not make them two targets.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def config_hash(config: BaseModel | dict[str, Any]) -> str:
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    text = json.dumps(_canonical(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def derive_seed(*parts: object) -> int:
    """A stable seed from any parts (target seed, stimulus id, ...): same parts, same seed.

    52 bits: vLLM seeds completion i of a request with `seed + i`, so seeds of different stimuli must
    rarely fall within n of each other; 52 bits also survive JSON readers that use doubles."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**52 - 1)

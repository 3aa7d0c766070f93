"""The bake configuration (Bread's `BakeConfigBase`): what to train on, which adapter, how long.

Defaults are Bread's resolved "default" template where it gives one. Fields Bread accepts but
bakehouse does not act on (data, deepspeed, wandb, ...) are kept as given, so configs round-trip.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from targets.names import validate_name


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class DatasetRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str
    weight: float = Field(1.0, gt=0)

    @field_validator("target")
    @classmethod
    def _target_name(cls, value: str) -> str:
        return validate_name(value, "target")


class AdapterConfig(_Open):
    """The LoRA adapter (peft's `LoraConfig` fields)."""

    r: int = Field(32, gt=0)
    lora_alpha: float = Field(16, gt=0)
    # "all-linear" or module names; names the model lacks fail when the bake starts.
    target_modules: str | list[str] = "all-linear"
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"


class ModelConfig(_Open):
    type: str = "bake"
    # The model to bake into: the repo's base model when unset, or a baked checkpoint.
    parent_model_name: str | None = None
    baked_adapter_config: AdapterConfig = Field(default_factory=AdapterConfig)


class OptimizerConfig(_Open):
    type: str | None = "adamw"
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


class SchedulerConfig(_Open):
    type: str | None = "huggingface"
    lr: float | None = None
    # bakehouse extensions: a transformers learning-rate schedule over the bake's steps.
    name: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)

    @field_validator("lr")
    @classmethod
    def _no_lr(cls, value: float | None) -> float | None:
        if value is not None:
            raise ValueError("scheduler.lr is deprecated and not allowed; set optimizer.learning_rate")
        return value


class CheckpointConfig(_Open):
    type: str = "huggingface"
    output_dir: str | None = None
    enabled: bool = True
    auto_resume: bool = False
    save_every_n_steps: int | None = Field(None, gt=0)
    save_every_n_epochs: int | None = Field(None, gt=0)
    save_end_of_training: bool = True


class BakeConfig(_Open):
    datasets: list[DatasetRef] = Field(default_factory=list)
    model_name: str | None = None
    total_trajectories: int | None = Field(None, gt=0)
    seed: int = 42
    type: str = "single_baker"
    micro_batch_size: int = Field(2, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    epochs: int = Field(1, ge=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    checkpoint: list[CheckpointConfig] = Field(default_factory=lambda: [CheckpointConfig()])
    train_log_iter_interval: int = Field(1, gt=0)
    eval_interval: int = Field(0, ge=0)
    # The longest trajectory trained on (tokens, context included); longer ones are cut at the end.
    max_length: int = Field(3000, gt=0)
    # bakehouse extensions: the teacher side of the KL.
    # teacher "auto": the rollout's stored top-K where it is this bake's teacher (recorded under the
    # teacher context by the parent model itself), else a forward pass of the parent with the adapter
    # off; "online": always that forward pass.
    teacher: Literal["auto", "online"] = "auto"
    # kl "top_k": over the teacher's K most likely tokens plus one tail bucket (K = the stored K, or
    # `teacher_top_k` online); "full": the whole vocabulary (needs the online teacher).
    kl: Literal["top_k", "full"] = "top_k"
    teacher_top_k: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _distinct_datasets(self) -> BakeConfig:
        names = [d.target for d in self.datasets]
        if len(names) != len(set(names)):
            raise ValueError("datasets: each target may appear once")
        return self

    @property
    def uses_stored_teacher(self) -> bool:
        return self.teacher == "auto" and self.kl == "top_k"

    @property
    def save_every_n_steps(self) -> int | None:
        steps = [c.save_every_n_steps for c in self.checkpoint if c.enabled and c.save_every_n_steps]
        return min(steps) if steps else None


class BakeSpec(BaseModel):
    """A bake as created: `template` is "default" or an existing bake whose config it starts from."""

    model_config = ConfigDict(extra="forbid")

    bake_name: str
    template: str = "default"
    overrides: dict[str, Any] | None = None

    @field_validator("bake_name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value, "bake_name")


def select_trajectories(lines: list[int], weights: list[float], total: int | None, seed: int) -> list[tuple[int, int]]:
    """Which trajectories a bake trains on: (dataset index, row index) pairs.

    Each dataset gets a share of `total` (default: every trajectory of every dataset once) in
    proportion to weight × its size. A share above the dataset's size repeats rows (whole passes,
    then a sample), so a weight of 2 on a dataset trains on it twice as often.
    """
    import random

    available = sum(lines)
    total = available if total is None else total
    mass = [w * n for w, n in zip(weights, lines, strict=True)]
    if total == 0 or sum(mass) == 0:
        return []
    shares = _largest_remainder(total, mass)
    rng = random.Random(seed)
    picked: list[tuple[int, int]] = []
    for dataset, (share, size) in enumerate(zip(shares, lines, strict=True)):
        rows = list(range(size)) * (share // size) if size else []
        rows += sorted(rng.sample(range(size), share % size)) if size else []
        picked += [(dataset, row) for row in sorted(rows)]
    return picked


def _largest_remainder(total: int, mass: list[float]) -> list[int]:
    exact = [total * m / sum(mass) for m in mass]
    shares = [int(e) for e in exact]
    by_remainder = sorted(range(len(mass)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def epoch_order(selection: list[tuple[int, int]], epoch: int, seed: int, page_size: int) -> list[tuple[int, int]]:
    """The order an epoch visits `selection`: pages in random order, rows shuffled within a page.

    Shuffling whole pages rather than rows lets the trainer hold one page of a dataset at a time
    (memory does not grow with the dataset) while batches still mix questions. Same seed and
    epoch, same order, so a resumed bake sees the batches an uninterrupted one would.
    """
    import random

    rng = random.Random(f"{seed}/{epoch}")
    pages: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for dataset, row in selection:
        pages.setdefault((dataset, row // page_size), []).append((dataset, row))
    keys = sorted(pages)
    rng.shuffle(keys)
    order: list[tuple[int, int]] = []
    for key in keys:
        rows = pages[key]
        rng.shuffle(rows)
        order += rows
    return order

"""Resource files: one YAML (or JSON) file describing a repo, its prompts, targets and bakes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from targets import PromptSpec, RepoSpec, TargetSpec, ValidationFailed, parse
from targets.bake import BakeSpec

EXAMPLES = Path(__file__).resolve().parents[1] / "targets" / "examples"


@dataclass
class SpecFile:
    repo: RepoSpec
    prompts: list[PromptSpec]
    targets: list[TargetSpec]
    bakes: list[BakeSpec]


def read_spec_file(path: str | Path) -> SpecFile:
    try:
        data: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValidationFailed(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict) or "repo" not in data:
        raise ValidationFailed(f"{path}: expected a mapping with 'repo', 'prompts', 'targets' and 'bakes'")
    unknown = set(data) - {"repo", "prompts", "targets", "bakes"}
    if unknown:
        raise ValidationFailed(f"{path}: unknown top-level keys {sorted(unknown)}")
    return SpecFile(
        repo=parse(RepoSpec, data["repo"], "repo"),
        prompts=[parse(PromptSpec, p, "prompt") for p in data.get("prompts") or []],
        targets=[parse(TargetSpec, t, "target") for t in data.get("targets") or []],
        bakes=[parse(BakeSpec, b, "bake") for b in data.get("bakes") or []],
    )

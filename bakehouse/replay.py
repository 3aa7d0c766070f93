"""Replay a recreation plan (`GET .../recipe/{bake}/recreation-plan`) into another repo, on this
server or another, through the SDK: `bakehouse recipe replay PLAN.json --repo NEW`.

Steps run in the plan's order, each waiting for its job. A plan names the source repo's checkpoints
(`<checkpoint_prefix>/<bake>/<step>`) where a bake starts from another bake or a target rolls out
with one; the replay writes the replayed bake's latest checkpoint there instead, known once its
run completed (the step numbers of a new run need not match the old ones).

Without training (`train=False`) the bakes are created but not run, and every step that needs a
bake's checkpoint (a child bake, a target rolling out with a baked model, their jobs) is skipped:
stim and rollout data can be made again on machines that cannot train.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from bakehouse.client import BakehouseError, Client

# The dependency each action satisfies, after `<resource_type>:<resource_name>` (as Bread's
# recreation plan names dependencies, e.g. `target:pirate:stim_complete`).
SATISFIES = {"create_prompt": "", "create_target": "", "create_bake": "", "run_stim": ":stim_complete",
             "run_rollout": ":rollout_complete", "run_bake": ":complete"}
# Where a create body names a model that may be one of the source repo's checkpoints.
MODEL_FIELDS = {"target": ("model_name",), "bake": ("model", "parent_model_name")}


@dataclass(frozen=True)
class ReplayedStep:
    step: int
    action: str
    resource_name: str
    outcome: Literal["done", "skipped"]
    because: str | None = None  # why skipped: "--no-train", or "needs <the dependency no step made>"


@dataclass
class Replay:
    """One replay of a plan into `repo_name`: what it made, and the checkpoints its bakes made."""

    client: Client
    repo_name: str
    checkpoint_prefix: str  # `<workspace>/<repo>` of the source repo's checkpoint names
    train: bool = True
    checkpoints: dict[str, str] = field(default_factory=dict)  # bake -> its latest checkpoint, replayed
    skipped: set[str] = field(default_factory=set)  # dependencies that skipped steps would have satisfied

    def run(self, step: dict[str, Any]) -> ReplayedStep:
        name, action = step["resource_name"], step["action"]
        missing = next((d for d in step["dependencies"] if d in self.skipped), None)
        if missing is not None or (action == "run_bake" and not self.train):
            self.skipped.add(f"{step['resource_type']}:{name}{SATISFIES[action]}")
            return ReplayedStep(step["step"], action, name, "skipped", f"needs {missing}" if missing else "--no-train")
        getattr(self, action)(name, step["config"])
        return ReplayedStep(step["step"], action, name, "done")

    def create_prompt(self, name: str, config: dict[str, Any]) -> None:
        content = config["content"]
        self.client.prompts.create(self.repo_name, prompt_name=name, messages=content["messages"], tools=content.get("tools"))

    def create_target(self, name: str, config: dict[str, Any]) -> None:
        self.client.targets.create(self.repo_name, target_name=name, template=config["template"],
                                   overrides=self.rewritten(config["overrides"], MODEL_FIELDS["target"]))

    def run_stim(self, name: str, config: dict[str, Any]) -> None:
        self.client.targets.stim.run(name, repo_name=self.repo_name)

    def run_rollout(self, name: str, config: dict[str, Any]) -> None:
        self.client.targets.rollout.run(name, repo_name=self.repo_name)

    def create_bake(self, name: str, config: dict[str, Any]) -> None:
        self.client.bakes.create(self.repo_name, bake_name=name, template=config["template"],
                                 overrides=self.rewritten(config["overrides"], MODEL_FIELDS["bake"]))

    def run_bake(self, name: str, config: dict[str, Any]) -> None:
        bake = self.client.bakes.run(name, repo_name=self.repo_name)
        if not bake.get("model_name"):
            raise ReplayError(f"bake '{name}' completed without a checkpoint: the bakes after it cannot start from it")
        self.checkpoints[name] = bake["model_name"][0]  # index 0 is the latest

    def rewritten(self, overrides: dict[str, Any] | None, path: tuple[str, ...]) -> dict[str, Any] | None:
        """`overrides` with the model at `path` renamed to the replayed checkpoint if it names one of
        the source repo's; anything else (the base model, other repos' checkpoints) stays."""
        *parents, leaf = path
        holder = overrides
        for key in parents:
            holder = (holder or {}).get(key)
        model = holder.get(leaf) if isinstance(holder, dict) else None
        bake = source_bake(model, self.checkpoint_prefix) if isinstance(model, str) else None
        if bake is None:
            return overrides
        if bake not in self.checkpoints:
            raise ReplayError(f"'{model}' names bake '{bake}', which this replay has not run")
        return _with(overrides, path, self.checkpoints[bake])


class ReplayError(BakehouseError):
    """The plan cannot go on here (the CLI prints the message and exits 1)."""


def source_bake(model_name: str, checkpoint_prefix: str) -> str | None:
    """The bake of `<checkpoint_prefix>/<bake>/<step>`, else None."""
    head, _, rest = model_name.partition(f"{checkpoint_prefix}/")
    bake, _, step = rest.partition("/")
    return bake if head == "" and rest and bake and step.isdigit() else None


def _with(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of nested `data` with `value` at `path` (the plan the caller holds stays as read)."""
    first, *rest = path
    return {**data, first: _with(data[first], tuple(rest), value) if rest else value}


def replay_plan(client: Client, plan: dict[str, Any], repo_name: str, *, train: bool = True,
                on_step: Callable[[ReplayedStep], None] | None = None) -> list[ReplayedStep]:
    """Create `repo_name` with the plan's base model and run the plan's steps in order into it."""
    client.repo.create(repo_name=repo_name, base_model=plan["base_model"])
    replay = Replay(client, repo_name, plan["checkpoint_prefix"], train)
    replayed = []
    for step in plan["steps"]:
        replayed.append(replay.run(step))
        if on_step is not None:
            on_step(replayed[-1])
    return replayed

"""A bake's lineage: what it depends on, and the ordered steps that make it again (what Bread's
repo tree, dependency graph and recreation plan endpoints show).

    read_lineage(ws, repo, bake)   BFS from the bake over what it needs: its parent bake (the bake
                                   whose checkpoint is its `model.parent_model_name`), its template
                                   bake, its dataset targets; a target's prompts, its template target
                                   and the bake whose checkpoint is its rollout `model_name`
    plan_recreation(lineage)       those resources as actions (create_prompt ... run_bake), sorted so
                                   that every action comes after what it needs
    repo_tree(ws, repo, status_of) every bake of a repo with its status and parent bake

Only checkpoints of this repo (`<workspace>/<repo>/<bake>/<step>`) of a bake that exists are
lineage: any other model name (the base model, a hub id, another repo's checkpoint, a deleted
bake's) is an outside model, named in configs as it is. Templates are followed too: a target or
bake stores only its overrides over its template, so the template must be made first.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from flows.models import BakedCheckpoint
from repo_store import StoredTarget, Workspace
from repo_store.store import StoredBake
from targets import InvalidInput, NotFound, PromptSpec

Kind = Literal["bake", "target", "prompt"]
Action = Literal["create_prompt", "create_target", "run_stim", "run_rollout", "create_bake", "run_bake"]
# Ties between actions ready at once go in this order, so plans read prompts, targets, data, bakes.
ACTION_ORDER: tuple[Action, ...] = ("create_prompt", "create_target", "run_stim", "run_rollout", "create_bake", "run_bake")


@dataclass(frozen=True, order=True)
class Node:
    kind: Kind
    name: str


@dataclass(frozen=True)
class Edge:
    """`source` depends on `target` (Bread's 4-tuple [source_type, source_name, target_type, target_name])."""

    source: Node
    target: Node

    def to_json(self) -> list[str]:
        return [self.source.kind, self.source.name, self.target.kind, self.target.name]


@dataclass
class Lineage:
    """Everything a bake needs, each resource once, in the order BFS met it."""

    repo_name: str
    bake_name: str  # the bake it is the lineage of
    checkpoint_prefix: str  # `<workspace>/<repo>`: this repo's checkpoints are `<prefix>/<bake>/<step>`
    base_model: str
    bakes: dict[str, StoredBake] = field(default_factory=dict)
    targets: dict[str, StoredTarget] = field(default_factory=dict)
    prompts: dict[str, PromptSpec] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    checkpoints: dict[str, list[str]] = field(default_factory=dict)  # bake -> model names, index 0 the latest


def checkpoint_bake(model_name: str | None, checkpoint_prefix: str) -> str | None:
    """The bake whose checkpoint `model_name` is, when it is one of this repo's; else None."""
    checkpoint = BakedCheckpoint.parse(model_name) if model_name else None
    if checkpoint is None or f"{checkpoint.workspace}/{checkpoint.repo}" != checkpoint_prefix:
        return None
    return checkpoint.bake


def parent_bake(ws: Workspace, repo_name: str, bake: StoredBake) -> str | None:
    """The existing bake of this repo whose checkpoint `bake` starts from, if any."""
    name = checkpoint_bake(bake.config.model.parent_model_name, f"{ws.name}/{repo_name}")
    return name if name is not None and _exists(lambda: ws.get_bake(repo_name, name)) else None


def checkpoint_steps(ws: Workspace, repo_name: str, bake: StoredBake) -> list[int]:
    """The bake's committed checkpoints, the latest first (as Bread lists model names)."""
    return [record.step for record in reversed(ws.bake_run(repo_name, bake).checkpoints())]


def model_names(ws: Workspace, repo_name: str, bake: StoredBake, steps: list[int]) -> list[str]:
    return [f"{ws.name}/{repo_name}/{bake.bake_name}/{step}" for step in steps]


@dataclass(frozen=True)
class TreeBake:
    """One bake of a repo tree."""

    bake: StoredBake
    status: str
    checkpoints: list[int]  # the latest first
    model_names: list[str]  # the same checkpoints as model names
    parent: str | None  # the bake whose checkpoint it starts from


def repo_tree(ws: Workspace, repo_name: str, status_of: Callable[[StoredBake], str]) -> list[TreeBake]:
    """Every bake of the repo with its status (`status_of` tells it) and parent bake."""
    tree = []
    for name in ws.list_bakes(repo_name):
        bake = ws.get_bake(repo_name, name)
        steps = checkpoint_steps(ws, repo_name, bake)
        tree.append(TreeBake(bake, status_of(bake), steps, model_names(ws, repo_name, bake, steps),
                             parent_bake(ws, repo_name, bake)))
    return tree


def _exists(read: Callable[[], object]) -> bool:
    try:
        read()
    except NotFound:
        return False
    return True


class _Walk:
    """One BFS over a repo's resources: what each needs, of what exists."""

    def __init__(self, ws: Workspace, repo_name: str, bake_name: str):
        self.ws, self.repo = ws, repo_name
        self.lineage = Lineage(repo_name, bake_name, f"{ws.name}/{repo_name}", ws.get_repo(repo_name).base_model)

    def visit(self, node: Node) -> list[Node]:
        """Record `node` and return what it needs (only resources that exist)."""
        if node.kind == "prompt":
            self.lineage.prompts[node.name] = self.ws.get_prompt(self.repo, node.name)
            return []
        if node.kind == "target":
            target = self.lineage.targets[node.name] = self.ws.get_target(self.repo, node.name)
            return self._target_needs(target)
        bake = self.lineage.bakes[node.name] = self.ws.get_bake(self.repo, node.name)
        self.lineage.checkpoints[node.name] = model_names(self.ws, self.repo, bake, checkpoint_steps(self.ws, self.repo, bake))
        return self._bake_needs(bake)

    def _target_needs(self, target: StoredTarget) -> list[Node]:
        config = target.config
        needs = [Node("prompt", name) for name in dict.fromkeys((config.teacher_prompt, config.student_prompt)) if name]
        if target.template != "default" and _exists(lambda: self.ws.get_target(self.repo, target.template)):
            needs.append(Node("target", target.template))
        rollout_bake = checkpoint_bake(config.model_name, self.lineage.checkpoint_prefix)
        if rollout_bake is not None and _exists(lambda: self.ws.get_bake(self.repo, rollout_bake)):
            needs.append(Node("bake", rollout_bake))
        return needs

    def _bake_needs(self, bake: StoredBake) -> list[Node]:
        needs = []
        parent = parent_bake(self.ws, self.repo, bake)
        if parent is not None:
            needs.append(Node("bake", parent))
        if bake.template != "default" and _exists(lambda: self.ws.get_bake(self.repo, bake.template)):
            needs.append(Node("bake", bake.template))
        return needs + [Node("target", dataset.target) for dataset in bake.config.datasets]


def read_lineage(ws: Workspace, repo_name: str, bake_name: str) -> Lineage:
    """BFS from the bake (NotFound when the repo or the bake does not exist)."""
    walk = _Walk(ws, repo_name, bake_name)
    start = Node("bake", bake_name)
    seen, queue, edges = {start}, deque([start]), set()
    while queue:
        node = queue.popleft()
        for need in walk.visit(node):
            edge = Edge(node, need)
            if edge not in edges:  # a bake can name one bake as its template and its parent
                edges.add(edge)
                walk.lineage.edges.append(edge)
            if need not in seen:
                seen.add(need)
                queue.append(need)
    return walk.lineage


# -- recreation plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dependency:
    """What a step waits for, written as Bread writes it: `<type>:<name>` or `<type>:<name>:<status>`."""

    node: Node
    status: Literal["stim_complete", "rollout_complete", "complete"] | None = None

    def to_json(self) -> str:
        return ":".join([self.node.kind, self.node.name] + ([self.status] if self.status else []))

    def action(self) -> tuple[Action, str]:
        """The step that satisfies this dependency."""
        made = {"prompt": "create_prompt", "target": "create_target", "bake": "create_bake"}[self.node.kind]
        done = {None: made, "stim_complete": "run_stim", "rollout_complete": "run_rollout", "complete": "run_bake"}
        return done[self.status], self.node.name


@dataclass(frozen=True)
class Step:
    action: Action
    resource_type: Kind
    resource_name: str
    dependencies: list[Dependency]
    config: dict[str, Any]


@dataclass(frozen=True)
class RecreationPlan:
    base_model: str
    checkpoint_prefix: str
    steps: list[Step]
    prompts: list[str]
    targets: list[str]
    bakes: dict[str, list[str]]  # bake -> its checkpoints' model names, index 0 the latest


def plan_recreation(lineage: Lineage) -> RecreationPlan:
    """The lineage's actions, topologically sorted (InvalidInput if bakes start from each other
    in a cycle, which creating them does not prevent: a parent checkpoint need not exist yet)."""
    steps = {(step.action, step.resource_name): step for step in _steps(lineage)}
    return RecreationPlan(lineage.base_model, lineage.checkpoint_prefix, _sorted(steps),
                          list(lineage.prompts), list(lineage.targets), dict(lineage.checkpoints))


def _steps(lineage: Lineage) -> list[Step]:
    """Every action the lineage needs. Only targets that a bake trains on get stim and rollout,
    and only bakes whose checkpoints are used (the planned bake, parents, rollout models) a run."""
    trained_on = {d.target for bake in lineage.bakes.values() for d in bake.config.datasets}
    run = {lineage.bake_name} | {edge.target.name for edge in lineage.edges if _uses_checkpoint(edge, lineage)}
    steps = [Step("create_prompt", "prompt", name, [], {"name": name, "content": prompt.model_dump(
        mode="json", exclude_none=True, include={"messages", "tools"})}) for name, prompt in lineage.prompts.items()]
    for name, target in lineage.targets.items():
        steps.append(Step("create_target", "target", name, _needs(lineage, Node("target", name)),
                          _created(target.template, target.overrides, target.config.model_dump(mode="json", exclude_none=True))))
        if name in trained_on:
            steps.append(Step("run_stim", "target", name, [Dependency(Node("target", name))], {}))
            steps.append(Step("run_rollout", "target", name,
                              [Dependency(Node("target", name)), Dependency(Node("target", name), "stim_complete")], {}))
    for name, bake in lineage.bakes.items():
        steps.append(Step("create_bake", "bake", name, _needs(lineage, Node("bake", name)),
                          _created(bake.template, bake.overrides, bake.config.model_dump(mode="json"))))
        if name in run:
            data = [Dependency(Node("target", d.target), "rollout_complete") for d in bake.config.datasets]
            steps.append(Step("run_bake", "bake", name, [Dependency(Node("bake", name)), *data], {}))
    return steps


def _created(template: str, overrides: dict[str, Any] | None, resolved: dict[str, Any]) -> dict[str, Any]:
    """A create step's config: the create body as stored (replays send it), and what it resolved to."""
    return {"template": template, "overrides": overrides, "config": resolved}


def _uses_checkpoint(edge: Edge, lineage: Lineage) -> bool:
    """Whether the edge's source starts from (bake) or rolls out with (target) a checkpoint of the
    edge's bake, rather than using it as a template."""
    if edge.target.kind != "bake":
        return False
    if edge.source.kind == "target":
        return True
    parent_model = lineage.bakes[edge.source.name].config.model.parent_model_name
    return checkpoint_bake(parent_model, lineage.checkpoint_prefix) == edge.target.name


def _needs(lineage: Lineage, node: Node) -> list[Dependency]:
    """A create step's dependencies: what its edges point at, made; a bake's checkpoint, trained."""
    needs = []
    for edge in lineage.edges:
        if edge.source == node:
            needs.append(Dependency(edge.target, "complete" if _uses_checkpoint(edge, lineage) else None))
    return needs


def _sorted(steps: dict[tuple[Action, str], Step]) -> list[Step]:
    """Kahn's algorithm; among steps ready together the earlier action kind, then the name, first."""
    waiting = {key: {dep.action() for dep in step.dependencies} for key, step in steps.items()}
    needed_by: dict[tuple[Action, str], list[tuple[Action, str]]] = {key: [] for key in steps}
    for key, needs in waiting.items():
        for need in needs:
            needed_by[need].append(key)
    rank = {action: index for index, action in enumerate(ACTION_ORDER)}
    ready = [(rank[key[0]], key[1], key) for key, needs in waiting.items() if not needs]
    heapq.heapify(ready)
    ordered = []
    while ready:
        _, _, key = heapq.heappop(ready)
        ordered.append(steps[key])
        for later in needed_by[key]:
            waiting[later].discard(key)
            if not waiting[later]:
                heapq.heappush(ready, (rank[later[0]], later[1], later))
    if len(ordered) < len(steps):
        stuck = sorted(name for (action, name), needs in waiting.items() if needs and action == "create_bake")
        raise InvalidInput(f"Bakes {stuck} start from each other's checkpoints in a cycle (or from a bake "
                           "in one): they cannot be made again")
    return ordered

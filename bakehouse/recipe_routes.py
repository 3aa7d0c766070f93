"""Lineage endpoints (Bread's repo tree and recipe endpoints): a repo's bake tree, a bake's dependency graph and
its recreation plan, in Bread's shapes (Bread's SDK validates them strictly). The graph work is in
bakehouse.lineage; these routes only shape its records. (No `from __future__ import annotations`:
FastAPI must see the dependency type `Read` itself, as in bakehouse.bake_routes.)
"""

from fastapi import APIRouter

from bakehouse import schemas as s
from bakehouse.dependencies import Read, UserId
from bakehouse.lineage import Lineage, RecreationPlan, TreeBake

router = APIRouter()
RECIPE = "/repo/{repo_name}/recipe/{bake_name}"


@router.get("/repo/{repo_name}/tree", response_model=s.RepoTree, tags=["repo"],
            description="Every bake of the repo with its status and checkpoints, and which bake each starts from.")
def get_tree(repo_name: s.ResourceName, service: Read, user_id: UserId = None):
    return tree_response(service.get_repo(repo_name).base_model, service.repo_tree(repo_name))


@router.get(f"{RECIPE}/dependency-graph", response_model=s.DependencyGraph, tags=["recipes"],
            description="Everything the bake needs (BFS over parent bakes, targets, prompts) and how it depends on it.")
def dependency_graph(repo_name: s.ResourceName, bake_name: s.ResourceName, service: Read, user_id: UserId = None):
    return graph_response(service.dependency_graph(repo_name, bake_name))


@router.get(f"{RECIPE}/recreation-plan", response_model=s.RecreationPlan, tags=["recipes"],
            description="The steps that make the bake again, each after what it needs (`bakehouse recipe replay` runs them).")
def recreation_plan(repo_name: s.ResourceName, bake_name: s.ResourceName, service: Read, user_id: UserId = None):
    return plan_response(service.recreation_plan(repo_name, bake_name))


def tree_response(base_model: str, bakes: list[TreeBake]) -> s.RepoTree:
    nodes = {
        tree.bake.bake_name: s.BakeTreeNode(status=tree.status, config=tree.bake.config.model_dump(mode="json"),
                                            checkpoints=tree.checkpoints, model_name=tree.model_names)
        for tree in bakes
    }
    edges = [["bake", tree.bake.bake_name, "bake", tree.parent] for tree in bakes if tree.parent is not None]
    return s.RepoTree(base_model=base_model, bakes=nodes, edges=edges)


def graph_response(lineage: Lineage) -> s.DependencyGraph:
    return s.DependencyGraph(
        base_model=lineage.base_model,
        bakes={name: bake.config.model_dump(mode="json") for name, bake in lineage.bakes.items()},
        targets={name: target.config.model_dump(mode="json", exclude_none=True) for name, target in lineage.targets.items()},
        prompts={name: f"prompts/{name}.json" for name in lineage.prompts},
        edges=[edge.to_json() for edge in lineage.edges],
    )


def plan_response(plan: RecreationPlan) -> s.RecreationPlan:
    steps = [
        s.RecreationPlanStep(step=number, action=step.action, resource_type=step.resource_type,
                             resource_name=step.resource_name, config=step.config,
                             dependencies=[dependency.to_json() for dependency in step.dependencies])
        for number, step in enumerate(plan.steps, start=1)
    ]
    resources = s.RecreationResources(
        prompts=plan.prompts, targets=plan.targets,
        bakes=[s.BakeResource(bake_name=name, model_names=names) for name, names in plan.bakes.items()],
    )
    return s.RecreationPlan(base_model=plan.base_model, total_steps=len(steps), steps=steps, resources=resources,
                            checkpoint_prefix=plan.checkpoint_prefix)

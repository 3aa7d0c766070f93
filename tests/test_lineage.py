"""Lineage: a repo's bake tree, a bake's dependency graph and recreation plan (read through Bread's
own SDK with strict response validation), and `bakehouse recipe replay` into a new repo."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from bakehouse.api import create_app
from bakehouse.cli import app as cli_app
from bakehouse.replay import replay_plan
from repo_store import Store
from net import serve_app
from runners import SlowRunner
from targets import PromptSpec, RepoSpec, TargetSpec
from targets.bake import BakeSpec

QUESTIONS = ["one?", "two?", "three?"]
T1 = {"teacher_prompt": "teacher", "student_prompt": "student", "model_name": "fake", "num_traj_per_stimulus": 2,
      "max_tokens": 8, "generators": [{"type": "hardcoded", "questions": QUESTIONS}]}
B_OVERRIDES = {"model": {"parent_model_name": "default/r/A/8"}, "datasets": [{"target": "t2"}]}


def build_repo(ws) -> None:
    """Prompts, t1, t2 (t1 as its template, another teacher), bake A on t1 finished with checkpoint
    8 (written as a training leaves it: a real bake needs a real model), bake B on t2 from A's checkpoint."""
    ws.create_repo(RepoSpec(repo_name="r", base_model="fake"))
    ws.create_prompt("r", PromptSpec(prompt_name="teacher", messages=[{"role": "system", "content": "Be terse."}]))
    ws.create_prompt("r", PromptSpec(prompt_name="teacher2", messages=[{"role": "system", "content": "Be loud."}],
                                     tools=[{"type": "function", "function": {"name": "shout"}}]))
    ws.create_prompt("r", PromptSpec(prompt_name="student", messages=[]))
    ws.create_target("r", TargetSpec(target_name="t1", overrides=T1))
    ws.create_target("r", TargetSpec(target_name="t2", template="t1", overrides={"teacher_prompt": "teacher2"}))
    ws.create_bake("r", BakeSpec(bake_name="A", overrides={"datasets": [{"target": "t1"}]}))
    run = ws.bake_run("r", ws.get_bake("r", "A"))
    attempt = run.job.claim(owner="test")
    run.write_checkpoint(8, {"adapter_model.safetensors": b"w", "adapter_config.json": b"{}"},
                         gen=attempt.gen, token=attempt.token, metrics=[{"iter": 8, "loss": 0.1}])
    attempt.complete(0, {})
    ws.create_bake("r", BakeSpec(bake_name="B", overrides=B_OVERRIDES))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("lineage-data")))
    _, key = store.keys.create(workspace="default", scope="write")
    build_repo(store.workspace())
    # Slow rollouts: a replay that did not wait for one would find it still running.
    with serve_app(create_app(store, SlowRunner(store))) as url:
        yield {"url": url, "key": key, "store": store}


@pytest.fixture
def bread(server):
    from aibread import Bread

    return Bread(base_url=server["url"], api_key=server["key"], _strict_response_validation=True, max_retries=0)


def test_the_dependency_graph_of_a_sequential_bake_holds_its_parent_targets_prompts_and_edges(bread):
    graph = bread.recipes.get_dependency_graph("B", repo_name="r")
    assert graph.base_model == "fake"
    assert set(graph.bakes) == {"A", "B"} and set(graph.targets) == {"t1", "t2"}
    assert graph.prompts == {name: f"prompts/{name}.json" for name in ("teacher", "teacher2", "student")}
    assert graph.bakes["B"]["model"]["parent_model_name"] == "default/r/A/8"
    assert graph.targets["t2"]["teacher_prompt"] == "teacher2" and graph.targets["t2"]["model_name"] == "fake"
    assert sorted(graph.edges) == sorted([
        ["bake", "B", "bake", "A"], ["bake", "B", "target", "t2"], ["bake", "A", "target", "t1"],
        ["target", "t2", "prompt", "teacher2"], ["target", "t2", "prompt", "student"], ["target", "t2", "target", "t1"],
        ["target", "t1", "prompt", "teacher"], ["target", "t1", "prompt", "student"],
    ])
    only_a = bread.recipes.get_dependency_graph("A", repo_name="r")
    assert set(only_a.bakes) == {"A"} and set(only_a.targets) == {"t1"} and set(only_a.prompts) == {"teacher", "student"}


def test_the_recreation_plan_puts_every_step_after_what_it_needs(bread):
    plan = bread.recipes.get_recreation_plan("B", repo_name="r")
    steps = [(step.action, step.resource_name) for step in plan.steps]
    assert plan.total_steps == len(steps) == 13 and [step.step for step in plan.steps] == list(range(1, 14))
    assert len(set(steps)) == len(steps)
    position = {step: index for index, step in enumerate(steps)}
    made_by = {"": "create", ":stim_complete": "run_stim", ":rollout_complete": "run_rollout", ":complete": "run_bake"}
    for index, step in enumerate(plan.steps):  # every dependency is a step before it
        for dependency in step.dependencies:
            kind, name, *status = dependency.split(":")
            action = made_by[f":{status[0]}" if status else ""]
            action = f"create_{kind}" if action == "create" else action
            assert position[(action, name)] < index, (step, dependency)
    for target, teacher in (("t1", "teacher"), ("t2", "teacher2")):
        for prompt in (teacher, "student"):
            assert position[("create_prompt", prompt)] < position[("create_target", target)]
        assert position[("run_stim", target)] < position[("run_rollout", target)]
    assert position[("create_target", "t1")] < position[("create_target", "t2")]  # t1 is t2's template
    assert position[("run_rollout", "t1")] < position[("run_bake", "A")] < position[("create_bake", "B")] < position[("run_bake", "B")]
    create_b = plan.steps[position[("create_bake", "B")]]
    assert create_b.dependencies == ["bake:A:complete", "target:t2"]
    assert create_b.config["template"] == "default" and create_b.config["overrides"] == B_OVERRIDES
    create_t2 = plan.steps[position[("create_target", "t2")]].config
    assert (create_t2["template"], create_t2["overrides"]) == ("t1", {"teacher_prompt": "teacher2"})
    teacher2 = plan.steps[position[("create_prompt", "teacher2")]].config
    assert teacher2["content"]["tools"] == [{"type": "function", "function": {"name": "shout"}}]
    assert plan.resources.prompts and set(plan.resources.targets) == {"t1", "t2"}
    assert {(b.bake_name, tuple(b.api_model_names)) for b in plan.resources.bakes} == {("A", ("default/r/A/8",)), ("B", ())}


def test_the_repo_tree_shows_every_bake_its_status_and_the_parent_edge(bread):
    tree = bread.repo.get_tree("r")
    assert tree.base_model == "fake"
    assert {name: node.status for name, node in tree.bakes.items()} == {"A": "complete", "B": "not_started"}
    assert tree.bakes["A"].checkpoints == [8] and tree.bakes["A"].api_model_name == ["default/r/A/8"]
    assert tree.bakes["B"].checkpoints == [] and tree.bakes["B"].config["model"]["parent_model_name"] == "default/r/A/8"
    assert tree.edges == [["bake", "B", "bake", "A"]]


def test_missing_bakes_and_repos_are_404_and_a_cycle_of_parents_cannot_be_planned(bread, server):
    import aibread

    for call in (lambda: bread.recipes.get_dependency_graph("nope", repo_name="r"),
                 lambda: bread.recipes.get_recreation_plan("nope", repo_name="r"),
                 lambda: bread.recipes.get_dependency_graph("B", repo_name="nope"),
                 lambda: bread.repo.get_tree("nope")):
        with pytest.raises(aibread.NotFoundError):
            call()
    ws = server["store"].workspace()
    ws.create_repo(RepoSpec(repo_name="loop", base_model="fake"))
    ws.create_prompt("loop", PromptSpec(prompt_name="teacher", messages=[]))
    ws.create_prompt("loop", PromptSpec(prompt_name="student", messages=[]))
    ws.create_target("loop", TargetSpec(target_name="t1", overrides=T1))
    for bake, parent in (("x", "y"), ("y", "x")):  # creating does not need the parent's checkpoint yet
        ws.create_bake("loop", BakeSpec(bake_name=bake, overrides={
            "model": {"parent_model_name": f"default/loop/{parent}/1"}, "datasets": [{"target": "t1"}]}))
    edges = bread.recipes.get_dependency_graph("x", repo_name="loop").edges
    assert ["bake", "x", "bake", "y"] in edges and ["bake", "y", "bake", "x"] in edges  # a graph shows the cycle
    with pytest.raises(aibread.BadRequestError, match=r"Bakes \['x', 'y'\] start from each other's checkpoints in a cycle"):
        bread.recipes.get_recreation_plan("x", repo_name="loop")


def test_replay_without_training_makes_the_same_targets_and_rollouts_in_a_new_repo(server, tmp_path, monkeypatch):
    from bakehouse.client import Client

    monkeypatch.setenv("BAKEHOUSE_BASE_URL", server["url"])
    monkeypatch.setenv("BAKEHOUSE_API_KEY", server["key"])
    cli = CliRunner()
    shown = cli.invoke(cli_app, ["recipe", "plan", "B", "--repo", "r"])
    assert shown.exit_code == 0, shown.output
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(shown.output)

    result = cli.invoke(cli_app, ["recipe", "replay", str(plan_file), "--repo", "copy", "--no-train"])
    assert result.exit_code == 0, result.output
    assert "run_bake A: skipped (--no-train)" in result.output
    assert "create_bake B: skipped (needs bake:A:complete)" in result.output
    assert "run_bake B: skipped (needs bake:B)" in result.output
    assert "replayed into repo copy: 10 steps done, 3 skipped" in result.output

    with Client() as client:
        assert client.repo.get("copy")["base_model"] == "fake"
        for target in ("t1", "t2"):
            assert client.targets.get(target, repo_name="copy")["config"] == client.targets.get(target, repo_name="r")["config"]
            rollout = client.targets.rollout.get(target, repo_name="copy")
            assert (rollout["status"], rollout["lines"]) == ("complete", len(QUESTIONS) * 2)
        assert client.bakes.list("copy") == ["A"]
        assert client.bakes.get("A", repo_name="copy")["status"] == "not_started"
        assert client.prompts.get("teacher2", repo_name="copy")["tools"] == [{"type": "function", "function": {"name": "shout"}}]
    again = cli.invoke(cli_app, ["recipe", "replay", str(plan_file), "--repo", "copy", "--no-train"])
    assert again.exit_code == 0 and "10 steps done" in again.output  # replaying again changes nothing


class FakeSdk:
    """Stands in for bakehouse.Client: records what a replay sends; a bake's run ends with checkpoints 4 and 2."""

    def __init__(self):
        self.sent: list[tuple[str, tuple, dict]] = []

        def record(call: str):
            return lambda *args, **kwargs: self.sent.append((call, args, kwargs)) or {}

        self.repo = SimpleNamespace(create=record("repo.create"))
        self.prompts = SimpleNamespace(create=record("prompts.create"))
        self.targets = SimpleNamespace(create=record("targets.create"), stim=SimpleNamespace(run=record("stim.run")),
                                       rollout=SimpleNamespace(run=record("rollout.run")))
        self.bakes = SimpleNamespace(create=record("bakes.create"), run=self.run_bake)

    def run_bake(self, bake_name: str, *, repo_name: str) -> dict:
        self.sent.append(("bakes.run", (bake_name,), {"repo_name": repo_name}))
        return {"status": "complete", "model_name": [f"elsewhere/{repo_name}/{bake_name}/{step}" for step in (4, 2)]}


def test_a_replayed_child_bake_starts_from_the_latest_checkpoint_of_its_replayed_parent(bread):
    plan = bread.recipes.get_recreation_plan("B", repo_name="r").to_dict()
    sdk = FakeSdk()
    replayed = replay_plan(sdk, plan, "copy")
    assert [step.outcome for step in replayed] == ["done"] * 13
    bakes = [(call, kwargs.get("bake_name") or args[0], kwargs) for call, args, kwargs in sdk.sent if call.startswith("bakes.")]
    assert [(call, name) for call, name, _ in bakes] == [
        ("bakes.create", "A"), ("bakes.run", "A"), ("bakes.create", "B"), ("bakes.run", "B")]
    assert bakes[0][2]["overrides"] == {"datasets": [{"target": "t1"}]}
    assert bakes[2][2]["overrides"] == {"model": {"parent_model_name": "elsewhere/copy/A/4"}, "datasets": [{"target": "t2"}]}
    create_b = next(step for step in plan["steps"] if step["action"] == "create_bake" and step["resource_name"] == "B")
    assert create_b["config"]["overrides"] == B_OVERRIDES  # the plan itself stays as read

"""Prompt Pursuit's mechanics on the tiny model: each round rolls out with the previous round's
checkpoint (real vLLM, merged weights) and bakes on top of it."""

from __future__ import annotations

import pytest

from flows.pursuit import run_pursuit
from repo_store import Store
from targets import PromptSpec, RepoSpec, TargetSpec
from targets.bake import BakeSpec
from tests.test_bake import BAKE

pytestmark = pytest.mark.vllm


def test_three_rounds_each_learn_from_the_model_the_round_before_baked(tmp_path):
    ws = Store(str(tmp_path)).workspace()
    ws.create_repo(RepoSpec(repo_name="r", base_model="tiny-random"))
    ws.create_prompt("r", PromptSpec(prompt_name="teacher", messages=[{"role": "system", "content": "Answer like a pirate."}]))
    ws.create_prompt("r", PromptSpec(prompt_name="student", messages=[]))
    ws.create_target("r", TargetSpec(target_name="t", overrides={
        "teacher_prompt": "teacher", "student_prompt": "student", "model_name": "tiny-random", "num_traj_per_stimulus": 2,
        "max_tokens": 8, "generators": [{"type": "hardcoded", "questions": [f"Where is treasure {i}?" for i in range(6)]}]}))
    ws.create_bake("r", BakeSpec(bake_name="b", overrides=BAKE))
    seen = []
    rounds = run_pursuit(ws, "r", target_name="t", bake_name="b", rounds=3, on_round=seen.append)
    assert seen == rounds
    assert [(r.target_name, r.bake_name, r.rollout_model) for r in rounds] == [
        ("t", "b", "tiny-random"), ("t-r2", "b-r2", "default/r/b/6"), ("t-r3", "b-r3", "default/r/b-r2/6")]
    assert [r.checkpoint for r in rounds] == ["default/r/b/6", "default/r/b-r2/6", "default/r/b-r3/6"]
    for previous, current in zip(rounds, rounds[1:]):
        rows = ws.read_page("r", current.target_name, "rollout", limit=100).rows
        assert {row["model"] for row in rows} == {previous.checkpoint} and len(rows) == 12
        # The same teacher prompt every round: only the model under it changed.
        assert rows[0]["unconditioned_stimulus"]["messages"][0]["content"] == "Answer like a pirate."
        run = ws.bake_run("r", ws.get_bake("r", current.bake_name))
        assert run.job.plan().parent_model == previous.checkpoint  # trained on top of the last round
    # A second run finds every round done and changes nothing.
    assert run_pursuit(ws, "r", target_name="t", bake_name="b", rounds=3) == rounds

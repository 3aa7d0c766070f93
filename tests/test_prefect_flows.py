"""The Prefect flows themselves: one harness for the module, the fake engine, real flow runs."""

from __future__ import annotations

import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.params import TargetJob
from flows.pipeline import target_flow
from repo_store import Store
from targets import PromptSpec, RepoSpec, TargetSpec

pytestmark = pytest.mark.prefect


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_target_flow_runs_stim_then_rollout_and_publishes_artifacts(tmp_path):
    from prefect import get_client

    data = str(tmp_path / "data")
    ws = Store(data).workspace()
    ws.create_repo(RepoSpec(repo_name="r", base_model="fake"))
    ws.create_prompt("r", PromptSpec(prompt_name="p", messages=[{"role": "system", "content": "Be kind."}]))
    ws.create_target("r", TargetSpec(target_name="t", overrides={
        "teacher_prompt": "p", "student_prompt": "p", "model_name": "fake", "num_traj_per_stimulus": 2,
        "generators": [{"type": "hardcoded", "questions": [f"q{i}?" for i in range(5)]}],
    }))
    result = target_flow(TargetJob(repo_name="r", target_name="t", data_url=data))
    assert result["stim"]["status"] == "complete"
    assert result["rollout"] == {"status": "complete", "lines": 10, "error": None}
    # Idempotent: the second run finds both jobs complete and generates nothing new.
    again = target_flow(TargetJob(repo_name="r", target_name="t", data_url=data))
    assert again["rollout"]["lines"] == 10
    assert ws.job("r", "t", "rollout").manifest().gen == 1

    import anyio

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    keys = {a.key for a in anyio.run(artifacts)}
    assert {"stim-r-t", "rollout-r-t", "rollout-r-t-summary"} <= keys


def test_cancelling_a_run_in_prefect_cancels_its_job(tmp_path):
    """What Prefect calls when a run is cancelled from the UI (after it stopped the run's process)."""
    from types import SimpleNamespace

    from flows.rollout import rollout_flow

    data = str(tmp_path / "data")
    ws = Store(data).workspace()
    ws.create_repo(RepoSpec(repo_name="r", base_model="fake"))
    ws.create_prompt("r", PromptSpec(prompt_name="p", messages=[]))
    ws.create_target("r", TargetSpec(target_name="t", overrides={
        "teacher_prompt": "p", "student_prompt": "p", "model_name": "fake",
        "generators": [{"type": "hardcoded", "questions": ["q?"]}]}))
    job = ws.job("r", "t", "rollout")
    attempt = job.claim("a run Prefect is about to stop")
    flow_run = SimpleNamespace(parameters={"job": TargetJob(repo_name="r", target_name="t", data_url=data).model_dump()})
    for hook in rollout_flow.on_cancellation_hooks:
        hook(rollout_flow, flow_run, None)
    attempt.release()  # the process ended (Prefect's SIGTERM unwinds through `running`)
    status = job.status()
    assert (status.status, status.error) == ("failed", "cancelled")
    assert job.claim("the next start") is not None  # and it resumes

"""DELETE .../stim and .../rollout: a job's output removed so that it can be made anew."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from bakehouse.api import create_app
from flows.stim import run_stim
from repo_store import Store
from runners import RecordingRunner, ThreadRunner
from targets import InvalidInput, NotFound, PromptSpec, RepoSpec, TargetSpec
from targets.bake import BakeSpec

QUESTIONS = [f"question {i}?" for i in range(5)]
TARGET = {"teacher_prompt": "teacher", "student_prompt": "student", "model_name": "fake", "num_traj_per_stimulus": 2,
          "max_tokens": 8, "generators": [{"type": "hardcoded", "questions": QUESTIONS}]}
JOB = "/v1/repo/r/targets/t/{}"


def api(tmp_path, runner_of) -> tuple[TestClient, Store, object]:
    store = Store(str(tmp_path / "data"))
    _, key = store.keys.create(workspace="default", scope="write")
    runner = runner_of(store)
    client = TestClient(create_app(store, runner), headers={"Authorization": f"Bearer {key}"})
    client.post("/v1/repo", json={"repo_name": "r", "base_model": "fake"})
    for prompt in ("teacher", "student"):
        client.post("/v1/repo/r/prompts", json={"prompt_name": prompt, "messages": []})
    client.post("/v1/repo/r/targets", json={"target_name": "t", "template": "default", "overrides": TARGET})
    return client, store, runner


def run(client: TestClient, kind: str) -> dict:
    assert client.post(JOB.format(kind)).status_code == 200
    deadline = time.monotonic() + 120
    while (job := client.get(JOB.format(kind)).json())["status"] not in ("complete", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["status"] == "complete", job["error"]
    return job


def job_files(store: Store, kind: str) -> list[str]:
    return store.storage.list_files(store.workspace().job("r", "t", kind).folder)


def test_deleting_the_rollout_removes_all_of_it_and_it_can_be_made_again(tmp_path):
    client, store, runner = api(tmp_path, ThreadRunner)
    run(client, "stim")
    rollout = run(client, "rollout")
    assert rollout["lines"] == 2 * len(QUESTIONS)
    files = job_files(store, "rollout")
    refused = client.delete(JOB.format("stim"))
    assert refused.status_code == 400 and refused.json()["code"] == "INVALID_INPUT"
    assert "delete the rollout first" in refused.json()["message"]
    while any(runner.active(ref) for ref in runner.threads):  # the worker thread may still be exiting
        time.sleep(0.05)

    deleted = client.delete(JOB.format("rollout"))
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] == {"lines": rollout["lines"], "files": len(files)}
    assert job_files(store, "rollout") == []
    after = client.get(JOB.format("rollout")).json()
    assert (after["status"], after["lines"]) == ("not_started", 0)
    assert client.get(JOB.format("rollout") + "/output").json()["output"] == []
    assert client.delete(JOB.format("rollout")).status_code == 404

    again = run(client, "rollout")
    assert again["lines"] == rollout["lines"]
    assert len(client.get(JOB.format("rollout") + "/output", params={"limit": 100}).json()["output"]) == rollout["lines"]


def test_a_job_never_started_is_404(tmp_path):
    client, _, _ = api(tmp_path, lambda store: RecordingRunner())
    missing = client.delete(JOB.format("stim"))
    assert missing.status_code == 404 and missing.json()["code"] == "RESOURCE_NOT_FOUND"
    assert "never started" in missing.json()["message"]


def test_a_queued_or_running_job_is_not_deleted(tmp_path):
    client, store, runner = api(tmp_path, lambda store: RecordingRunner())
    client.post(JOB.format("stim"))  # queued: the runner has it, storage shows no owner yet
    queued = client.delete(JOB.format("stim"))
    assert queued.status_code == 400 and "running or queued" in queued.json()["message"]
    client.post(JOB.format("stim") + "/cancel")
    attempt = store.workspace().job("r", "t", "stim").claim(owner="test")  # a worker owns it now
    running = client.delete(JOB.format("stim"))
    assert running.status_code == 400 and "is running" in running.json()["message"]
    attempt.release()
    assert client.delete(JOB.format("stim")).status_code == 200
    assert job_files(store, "stim") == []


def test_a_running_bake_keeps_the_rollout_it_reads(tmp_path):
    _, store, _ = api(tmp_path, lambda store: RecordingRunner())
    ws = store.workspace()
    ws.create_bake("r", BakeSpec(bake_name="b", overrides={"datasets": [{"target": "t"}]}))
    attempt = ws.bake_run("r", ws.get_bake("r", "b")).job.claim(owner="test")
    with pytest.raises(InvalidInput, match="Bake 'b' is running"):
        ws.delete_job("r", "t", "rollout")
    attempt.release()
    with pytest.raises(NotFound, match="never started"):
        ws.delete_job("r", "t", "rollout")


def test_storage_counts_and_removes_every_file_of_the_job(store):  # local disk and S3
    ws = store.workspace()
    ws.create_repo(RepoSpec(repo_name="r", base_model="fake"))
    for prompt in ("teacher", "student"):
        ws.create_prompt("r", PromptSpec(prompt_name=prompt, messages=[]))
    ws.create_target("r", TargetSpec(target_name="t", overrides=TARGET))
    assert run_stim(ws, "r", "t").status == "complete"
    files = job_files(store, "stim")
    assert any(f.endswith("manifest.json") for f in files) and any(f.endswith(".parquet") for f in files)
    deleted = ws.delete_job("r", "t", "stim")
    assert (deleted.lines, deleted.files) == (len(QUESTIONS), len(files))
    assert job_files(store, "stim") == [] and ws.job("r", "t", "stim").status().status == "not_started"

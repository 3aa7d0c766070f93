"""The REST API on a real uvicorn server on 127.0.0.1, driven by our SDK and by Bread's own SDK.

Jobs run as real worker processes (Prefect flows) on the fake engine; all workers share one Prefect
server started for this module, as `bakehouse up` does.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
import time

import anyio
import httpx
import pytest

from bakehouse import AsyncClient, BadRequestError, Client, ConflictError, JobTimeout, NotFoundError, PermissionDeniedError, UnprocessableEntityError
from bakehouse.api import create_app
from bakehouse.runner import JobRef, queued
from bakehouse.status import visible_status
from net import free_port, serve_app, wait_until_healthy
from repo_store import JobStatus, Store
from repo_store.records import BakePlan, LiveStep
from targets import PromptSpec, RepoSpec, TargetSpec

QUESTIONS = [f"question {i}?" for i in range(12)]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """One Prefect server for the workers of this module (a temporary one per worker costs ~10 s each)."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect")),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until_healthy(f"{url}/health", timeout=120, process=process)
        yield url
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)


@pytest.fixture(scope="module")
def api(tmp_path_factory, prefect_server):
    store = Store(str(tmp_path_factory.mktemp("api-data")))
    keys = {
        "write": store.keys.create(workspace="alpha", scope="write")[1],
        "read": store.keys.create(workspace="alpha", scope="read")[1],
        "other": store.keys.create(workspace="beta", scope="write")[1],
    }
    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = prefect_server  # inherited by the worker processes
    app = create_app(store)
    with serve_app(app) as base_url:
        yield {"url": base_url, "keys": keys, "store": store, "app": app}
    app.state.runner.close()
    if saved is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = saved


def client(api, key="write") -> Client:
    return Client(base_url=api["url"], api_key=api["keys"][key], poll_interval=0.5)


def make_target(c: Client, repo: str, target: str = "t", n: int = 2) -> None:
    c.repo.create(repo_name=repo, base_model="fake")
    c.prompts.create(repo, prompt_name="teacher", messages=[{"role": "system", "content": "Be terse."}])
    c.prompts.create(repo, prompt_name="student", messages=[])
    c.targets.create(repo, target_name=target, overrides={
        "teacher_prompt": "teacher", "student_prompt": "student", "model_name": "fake",
        "num_traj_per_stimulus": n, "max_tokens": 8,
        "generators": [{"type": "hardcoded", "questions": QUESTIONS}],
    })


def test_whole_flow_through_our_sdk(api):
    c = client(api)
    make_target(c, "ours")
    seen = []
    stim = c.targets.stim.run("t", repo_name="ours", timeout=180, on_progress=lambda job: seen.append(job["status"]))
    assert (stim["status"], stim["lines"]) == ("complete", len(QUESTIONS))
    assert set(stim["config"]) == {"generators", "teacher_prompt", "student_prompt"}
    rollout = c.targets.rollout.run("t", repo_name="ours", timeout=180)
    assert (rollout["status"], rollout["lines"], rollout["total_expected"]) == ("complete", 24, 24)
    rows = list(c.targets.rollout.iter_output("t", repo_name="ours", page_size=5))
    assert [(r["stimulus_id"], r["trajectory_id"]) for r in rows] == [(s, t) for s in range(12) for t in range(2)]
    with httpx.Client(base_url=api["url"], headers={"Authorization": f"Bearer {api['keys']['write']}"}) as http:
        page = http.get("/v1/repo/ours/targets/t/rollout/output", params={"limit": 3, "include": "logprobs"}).json()
        assert [len(r["response_token_ids"]) for r in page["output"]] == [r["response"]["usage"]["completion_tokens"] for r in page["output"]]
        assert all(len(r["teacher_top_ids"]) == len(r["response_token_ids"]) for r in page["output"])
        refused = http.get("/v1/repo/ours/targets/t/rollout/output", params={"include": "everything"})
        assert refused.status_code == 422 and "include" in refused.json()["message"]
    with_tokens = list(c.targets.rollout.iter_output("t", repo_name="ours", page_size=7, include_logprobs=True))
    assert [len(r["response_token_ids"]) for r in with_tokens] == [r["response"]["usage"]["completion_tokens"] for r in rows]
    assert all("response_token_ids" not in r for r in rows)  # Bread's rows unless asked
    typed = c.targets.rollout.scan_parquet("t", repo_name="ours").sort("stimulus_id", "trajectory_id").collect()
    assert typed.height == 24 and typed["response"].struct.field("content").to_list() == [r["response"]["content"] for r in rows]
    assert typed["question"].to_list()[0] == QUESTIONS[0]
    training = list(c.targets.rollout.iter_training_rows("t", repo_name="ours"))
    assert training[0]["student_messages"][-1]["role"] == "assistant"
    assert training[0]["teacher_messages"][0] == {"role": "system", "content": "Be terse."}
    frame = c.targets.stim.read_dataframe("t", repo_name="ours")
    assert frame.height == 12
    # Repeating a start after completion changes nothing.
    again = c.targets.rollout.run("t", repo_name="ours", poll=False)
    assert (again["status"], again["job_id"]) == ("complete", rollout["job_id"])


def test_dataframes_keep_keys_that_only_late_rows_have():
    from bakehouse._sdk.resources import _dataframe

    rows = [{"stimulus_id": i, "response": {"content": "a"}} for i in range(150)]
    rows[120] = {"stimulus_id": 120, "response": None, "error": "too long"}
    frame = _dataframe(rows)
    assert frame.height == 150 and frame["error"].to_list()[120] == "too long" and frame["error"].null_count() == 149


@pytest.mark.anyio
async def test_whole_flow_through_our_async_sdk(api):
    make_target(client(api), "async")
    async with AsyncClient(base_url=api["url"], api_key=api["keys"]["write"], poll_interval=0.5) as c:
        assert "async" in await c.repo.list()
        with pytest.raises(ConflictError):
            await c.repo.create(repo_name="async", base_model="other")
        with pytest.raises(JobTimeout):
            await c.targets.stim.run("t", repo_name="async", timeout=0.01)
        stim = await c.targets.stim.wait("t", repo_name="async", timeout=180)
        assert (stim["status"], stim["lines"]) == ("complete", len(QUESTIONS))
        seen = []
        rollout = await c.targets.rollout.run("t", repo_name="async", timeout=180, on_progress=seen.append)
        assert (rollout["status"], rollout["lines"]) == ("complete", 24) and seen[-1] == rollout
        rows = [row async for row in c.targets.rollout.iter_output("t", repo_name="async", page_size=7)]
        tokens = [row async for row in c.targets.rollout.iter_output("t", repo_name="async", include_logprobs=True)]
        assert len(tokens) == 24 and all(len(r["teacher_top_ids"]) == len(r["response_token_ids"]) > 0 for r in tokens)
        assert [(r["stimulus_id"], r["trajectory_id"]) for r in rows] == [(s, t) for s in range(12) for t in range(2)]
        training = [row async for row in c.targets.rollout.iter_training_rows("t", repo_name="async")]
        assert len(training) == 24 and training[0]["teacher_messages"][-1]["role"] == "assistant"


def test_whole_flow_through_breads_sdk(api):
    from aibread import Bread
    import aibread

    bread = Bread(base_url=api["url"], api_key=api["keys"]["write"], _strict_response_validation=True, max_retries=0)
    raw = bread.repo.with_raw_response.create(repo_name="bread", base_model="fake")
    assert raw.http_response.status_code == 201
    assert bread.repo.with_raw_response.create(repo_name="bread", base_model="fake").http_response.status_code == 200
    with pytest.raises(aibread.ConflictError) as conflict:
        bread.repo.create(repo_name="bread", base_model="other")
    assert conflict.value.response.headers["x-should-retry"] == "false"
    bread.prompts.create("bread", prompt_name="teacher", messages=[{"role": "system", "content": "Be terse."}])
    bread.prompts.create("bread", prompt_name="student", messages=[])
    target = bread.targets.create("bread", target_name="t", template="default", overrides={
        "teacher_prompt": "teacher", "student_prompt": "student", "model_name": "fake", "num_traj_per_stimulus": 3,
        "generators": [{"type": "hardcoded", "numq": 5, "questions": QUESTIONS[:5]}],
    })
    assert target.config.teacher_prompt == "teacher" and target.config.api_model_name == "fake"
    started = bread.targets.stim.run("t", repo_name="bread", poll=False)
    assert started.status in ("not_started", "running", "complete")

    def wait(resource):
        deadline = time.monotonic() + 180
        while (job := resource.get("t", repo_name="bread")).status in ("not_started", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        return job

    assert wait(bread.targets.stim).status == "complete"
    bread.targets.rollout.run("t", repo_name="bread", poll=False)
    rollout = wait(bread.targets.rollout)
    assert (rollout.status, rollout.lines, rollout.total_expected) == ("complete", 15, 15)
    page = bread.targets.rollout.get_output("t", repo_name="bread", limit=1000)
    assert len(page.output) == 15 and page.has_more is False
    assert page.output[0]["response"]["content"]
    stim_page = bread.targets.stim.get_output("t", repo_name="bread", limit=2, offset=4)
    assert len(stim_page.output) == 1 and stim_page.has_more is False
    with pytest.raises(aibread.UnprocessableEntityError):
        bread.targets.rollout.get_output("t", repo_name="bread", limit=1001)
    assert bread.targets.list("bread").targets == ["t"]
    assert "bread" in bread.repo.list().repos


def test_rollout_before_stim_is_400_and_unknown_target_404(api):
    c = client(api)
    make_target(c, "early")
    with pytest.raises(BadRequestError) as error:
        c.targets.rollout.run("t", repo_name="early", poll=False)
    assert error.value.status_code == 400
    assert error.value.message == "Stim job must complete before running rollout"
    with pytest.raises(NotFoundError, match="Target 'nope' not found"):
        c.targets.stim.get("nope", repo_name="early")


def test_a_hundred_concurrent_rollout_starts_make_one_job(api):
    c = client(api)
    make_target(c, "race", n=1)
    c.targets.stim.run("t", repo_name="race", timeout=180)
    runner = api["app"].state.runner
    started_before = runner.started
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda _: client(api).targets.rollout.run("t", repo_name="race", poll=False), range(100)))
    assert {a["status"] for a in answers} <= {"not_started", "running", "complete"}
    done = c.targets.rollout.wait("t", repo_name="race", timeout=180)
    assert (done["status"], done["lines"], done["job_id"]) == ("complete", 12, 1)
    assert runner.started - started_before == 1  # one worker process for a hundred starts


def test_a_hundred_concurrent_creates_make_one_resource(api):
    c = client(api)
    c.repo.create(repo_name="crowd", base_model="fake")
    url, headers = api["url"], {"Authorization": f"Bearer {api['keys']['write']}"}

    def create(i, content):
        body = {"prompt_name": "p", "messages": [{"role": "system", "content": content}]}
        return httpx.post(f"{url}/v1/repo/crowd/prompts", json=body, headers=headers, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        same = list(pool.map(lambda i: create(i, "identical"), range(100)))
    assert sorted(same).count(201) == 1 and same.count(200) == 99
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        different = list(pool.map(lambda i: create(i, f"version {i}"), range(100)))
    assert set(different) == {409}  # the prompt exists with other content: all conflict
    assert c.prompts.get("p", repo_name="crowd")["messages"] == [{"role": "system", "content": "identical"}]

    def create_target(i):
        body = {"target_name": "t", "template": "default", "overrides": {
            "teacher_prompt": "p", "student_prompt": "p", "temperature": 0.5 if i % 2 else 1.0}}
        return httpx.post(f"{url}/v1/repo/crowd/targets", json=body, headers=headers, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        codes = list(pool.map(create_target, range(100)))
    assert codes.count(201) == 1
    winner = c.targets.get("t", repo_name="crowd")["config"]["temperature"]
    # Every request with the winner's config saw 200, every other one 409.
    expected_same = sum(1 for i in range(100) if (0.5 if i % 2 else 1.0) == winner)
    assert codes.count(200) == expected_same - 1 and codes.count(409) == 100 - expected_same


def test_auth_and_scopes(api):
    url = api["url"]
    assert httpx.get(f"{url}/v1/health").status_code == 200
    missing = httpx.get(f"{url}/v1/repo")
    assert missing.status_code == 401 and missing.json()["code"] == "UNAUTHORIZED"
    wrong = httpx.get(f"{url}/v1/repo", headers={"Authorization": "Bearer bh_0000_nope"})
    assert wrong.status_code == 401 and set(wrong.json()) >= {"message", "code"}
    make_target(client(api), "private")
    with pytest.raises(PermissionDeniedError):
        client(api, "read").repo.create(repo_name="x")
    assert client(api, "read").repo.get("private")["repo_name"] == "private"
    with pytest.raises(NotFoundError):
        client(api, "other").repo.get("private")
    assert "private" not in client(api, "other").repo.list()


@pytest.mark.parametrize("name", ["a/b", "..", "bad\x00name", "x" * 300, "sp ace"])
def test_bad_names_get_the_envelope(api, name):
    response = httpx.post(f"{api['url']}/v1/repo", json={"repo_name": name},
                          headers={"Authorization": f"Bearer {api['keys']['write']}"})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "VALIDATION_ERROR" and body["message"]


def test_conflicts_and_schema_errors(api):
    c = client(api)
    make_target(c, "conf")
    with pytest.raises(ConflictError, match="Targets are immutable"):
        c.targets.create("conf", target_name="t", overrides={"teacher_prompt": "teacher", "student_prompt": "student"})
    with pytest.raises(UnprocessableEntityError, match="bogus: unknown field"):
        c.targets.create("conf", target_name="t2", overrides={"teacher_prompt": "teacher", "student_prompt": "student", "bogus": 1})
    response = httpx.post(f"{api['url']}/v1/repo", content=b"{not json",
                          headers={"Authorization": f"Bearer {api['keys']['write']}", "Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["code"] == "VALIDATION_ERROR"


def test_delete_target(api):
    c = client(api)
    make_target(c, "del")
    assert c.targets.delete("t", repo_name="del")["message"] == "Resource deleted successfully"
    assert c.targets.list("del") == []


def test_bake_through_breads_sdk(api):
    from aibread import Bread
    import aibread

    bread = Bread(base_url=api["url"], api_key=api["keys"]["write"], _strict_response_validation=True, max_retries=0)
    bread.bakes._sleep = lambda seconds: time.sleep(0.5)  # the SDK polls every 30 s
    bread.repo.create(repo_name="oven", base_model="tiny-random")
    bread.prompts.create("oven", prompt_name="teacher", messages=[{"role": "system", "content": "Be terse."}])
    bread.prompts.create("oven", prompt_name="student", messages=[])
    bread.targets.create("oven", target_name="t", template="default", overrides={
        "teacher_prompt": "teacher", "student_prompt": "student", "model_name": "fake", "num_traj_per_stimulus": 2,
        "max_tokens": 8, "generators": [{"type": "hardcoded", "questions": QUESTIONS[:4]}],
    })
    overrides = {"datasets": [{"target": "t"}], "epochs": 2, "micro_batch_size": 4,
                 "model": {"baked_adapter_config": {"r": 4, "lora_alpha": 8}}, "optimizer": {"learning_rate": 1e-3}}
    created = bread.bakes.create("oven", bake_name="b", template="default", overrides=overrides)
    assert created.status == "not_started" and created.config["epochs"] == 2
    with pytest.raises(aibread.BadRequestError, match="Target rollouts must complete before starting bake"):
        bread.bakes.run("b", repo_name="oven", poll=False)
    with pytest.raises(aibread.ConflictError):
        bread.bakes.create("oven", bake_name="b", template="default", overrides={**overrides, "epochs": 3})
    with pytest.raises(aibread.UnprocessableEntityError, match="scheduler.lr"):
        bread.bakes.create("oven", bake_name="bad", template="default", overrides={"scheduler": {"lr": 0.1}})
    with pytest.raises(aibread.NotFoundError):
        bread.bakes.get("nope", repo_name="oven")

    bread.targets.stim.run("t", repo_name="oven", poll=False)
    deadline = time.monotonic() + 180
    for resource in (bread.targets.stim, bread.targets.rollout):
        if resource is bread.targets.rollout:
            resource.run("t", repo_name="oven", poll=False)
        while resource.get("t", repo_name="oven").status != "complete":
            assert time.monotonic() < deadline
            time.sleep(0.5)
    bread.bakes.create("oven", bake_name="ghost", template="b", overrides={"model": {"parent_model_name": "no-such/model"}})
    with pytest.raises(aibread.BadRequestError, match="parent model 'no-such/model' cannot be found"):
        bread.bakes.run("ghost", repo_name="oven", poll=False)
    bread.bakes.delete("ghost", repo_name="oven")
    done = bread.bakes.run("b", repo_name="oven", poll=True)
    assert done.status == "complete", done.error
    assert done.api_model_name == ["alpha/oven/b/4"] and done.progress_percent == 100.0
    assert set(done.loss) == {"latest_loss", "final_loss", "min_loss", "max_loss"}
    metrics = bread.bakes.get_metrics("b", repo_name="oven")
    assert [m["iter"] for m in metrics] == [1, 2, 3, 4] and metrics[-1]["loss"] == done.loss["final_loss"]
    assert bread.bakes.run("b", repo_name="oven", poll=False).status == "complete"  # idempotent
    link = bread.bakes.download("b", repo_name="oven", expires_in=60)
    assert (link.checkpoint, link.expires_in, link.bake_name) == (4, 60, "b")
    archive = httpx.get(link.url)
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        assert sorted(tar.getnames()) == ["adapter_config.json", "adapter_model.safetensors"]
        assert json.load(tar.extractfile("adapter_config.json"))["base_model_name_or_path"] == "tiny-random"
    token = link.url.rsplit("/", 1)[-1]
    body, mac = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"path": "/etc/passwd", "exp": 2**40}).encode()).decode().rstrip("=")
    for bad in (f"{forged}.{mac}", f"{body}.{'0' * len(mac)}", "nonsense"):
        refused = httpx.get(link.url.replace(token, bad))
        assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN"
    short = bread.bakes.download("b", repo_name="oven", expires_in=1)
    time.sleep(2.1)
    expired = httpx.get(short.url)
    assert expired.status_code == 403 and "expired" in expired.json()["message"]
    with pytest.raises(aibread.NotFoundError, match="no checkpoint 3"):
        bread.bakes.download("b", repo_name="oven", checkpoint=3)
    assert bread.bakes.list("oven").bakes == ["b"]
    assert bread.bakes.delete("b", repo_name="oven").message
    assert bread.bakes.list("oven").bakes == []


def test_bake_through_our_sdk_with_progress_and_metric_pages(api):
    c = client(api)
    c.repo.create(repo_name="kitchen", base_model="tiny-random")
    c.prompts.create("kitchen", prompt_name="teacher", messages=[{"role": "system", "content": "Be terse."}])
    c.prompts.create("kitchen", prompt_name="student", messages=[])
    c.targets.create("kitchen", target_name="t", overrides={
        "teacher_prompt": "teacher", "student_prompt": "student", "model_name": "fake", "num_traj_per_stimulus": 2,
        "max_tokens": 8, "generators": [{"type": "hardcoded", "questions": QUESTIONS[:6]}],
    })
    c.targets.stim.run("t", repo_name="kitchen", timeout=180)
    c.targets.rollout.run("t", repo_name="kitchen", timeout=180)
    c.bakes.create("kitchen", bake_name="b", overrides={
        "datasets": [{"target": "t"}], "micro_batch_size": 2, "epochs": 1,
        "model": {"baked_adapter_config": {"r": 4, "lora_alpha": 8}}, "checkpoint": [{"save_every_n_steps": 3}]})
    with pytest.raises(JobTimeout, match="bake kitchen/b still"):
        c.bakes.run("b", repo_name="kitchen", timeout=0.01)  # starts it; a later run joins it
    seen = []
    done = c.bakes.run("b", repo_name="kitchen", timeout=300, on_progress=seen.append)
    assert done["status"] == "complete" and seen[-1] == done
    assert done["model_name"] == ["alpha/kitchen/b/6", "alpha/kitchen/b/3"]
    assert [m["iter"] for m in c.bakes.iter_metrics("b", repo_name="kitchen", page_size=4)] == list(range(1, 7))
    assert [m["iter"] for m in c.bakes.get_metrics("b", repo_name="kitchen", offset=4, limit=10)] == [5, 6]

    async def through_async_client():
        async with AsyncClient(base_url=api["url"], api_key=api["keys"]["write"], poll_interval=0.5) as ac:
            again = await ac.bakes.run("b", repo_name="kitchen", timeout=60)
            rows = [row async for row in ac.bakes.iter_metrics("b", repo_name="kitchen", page_size=4)]
            return again, rows, await ac.bakes.list("kitchen")

    again, rows, names = anyio.run(through_async_client)
    assert again["model_name"] == done["model_name"] and [m["iter"] for m in rows] == list(range(1, 7))
    assert names == ["b"]


def _distinct_status() -> JobStatus:
    """A status with every field set to a value of its own (none left at its default)."""
    status = JobStatus("running", lines=7, total_expected=9, progress_percent=12.5, error="slow", attempt=3,
                       summary={"dedup": 2}, phase="generating", created_at=1.0, started_at=2.0, completed_at=3.0,
                       stalled=True)
    defaults = JobStatus("not_started")
    assert all(getattr(status, f.name) != getattr(defaults, f.name) for f in dataclasses.fields(JobStatus))
    return status


class _StubJob:
    def __init__(self, *statuses: JobStatus):
        self._statuses = list(statuses)

    def status(self) -> JobStatus:
        return self._statuses.pop(0) if len(self._statuses) > 1 else self._statuses[0]

    def plan(self) -> BakePlan:
        return BakePlan(total_steps=10, trajectories=40, parent_model="fake")


class _StubBakeRun:
    def read_live(self, attempt: int) -> LiveStep:
        return LiveStep(step=5, total_steps=10, loss=0.5)


class _ViewRunner:
    def __init__(self, view):
        self.view = lambda ref, status: view(status)


@pytest.mark.parametrize("overlay, changes", [
    (lambda status: status, {}),
    (queued, {"status": "not_started", "error": None, "phase": "queued", "stalled": False}),
    (lambda status: dataclasses.replace(status, status="failed", error="gone", phase="failed"),
     {"status": "failed", "error": "gone", "phase": "failed"}),
])
def test_the_visible_status_keeps_every_field_it_does_not_change(overlay, changes):
    """storage -> runner -> visible_status -> routes: a field dropped on the way (a JobStatus copied
    field by field, say) would reach clients as its default."""
    ref = JobRef("w", "r", "t", "t-id", "stim")
    stored = _distinct_status()
    expected = dataclasses.replace(stored, **changes)
    assert visible_status(_ViewRunner(overlay), ref, _StubJob(stored)).status == expected
    bake = visible_status(_ViewRunner(overlay), dataclasses.replace(ref, kind="bake"), _StubJob(stored), _StubBakeRun())
    if expected.status == "running":  # the trainer's latest step moves the bake's progress, nothing else
        expected = dataclasses.replace(expected, progress_percent=50.0)
    assert bake.status == expected and bake.total_steps == 10


def test_every_route_shows_the_one_visible_status(tmp_path):
    """The job's status, its event stream and the job listing all show storage's fields (summary,
    phase, error) with the runner's word laid over them."""
    from fastapi.testclient import TestClient
    from runners import RecordingRunner

    class SayingRunner(RecordingRunner):
        def view(self, ref, status):
            return dataclasses.replace(status, error=f"runner: {status.error}") if status.status == "failed" else status

    store = Store(str(tmp_path))
    _, key = store.keys.create(workspace="default", scope="read")
    ws = store.workspace()
    ws.create_repo(RepoSpec(repo_name="r", base_model="fake"))
    ws.create_prompt("r", PromptSpec(prompt_name="p", messages=[]))
    ws.create_target("r", TargetSpec(target_name="t", overrides={
        "teacher_prompt": "p", "student_prompt": "p", "generators": [{"type": "hardcoded", "questions": ["q?"]}]}))
    ws.job("r", "t", "stim").claim().fail("boom", summary={"dedup": 2})
    http = TestClient(create_app(store, SayingRunner()), headers={"Authorization": f"Bearer {key}"})
    shown = http.get("/v1/repo/r/targets/t/stim").json()
    assert (shown["status"], shown["phase"], shown["summary"], shown["error"]) == ("failed", "failed", {"dedup": 2}, "runner: boom")
    listed = http.get("/v1/jobs").json()["jobs"]
    assert [(j["id"], j["phase"], j["error"]) for j in listed] == [("r/t/stim", "failed", "runner: boom")]
    with http.stream("GET", "/v1/repo/r/targets/t/stim/events") as events:
        text = "".join(events.iter_text())
    progress = json.loads(text.split("event: progress", 1)[1].split("data: ", 1)[1].split("\r\n", 1)[0])
    assert (progress["status"], progress["phase"]) == ("failed", "failed")


def test_a_router_serves_alone_with_its_dependencies_overridden(tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from runners import RecordingRunner

    from bakehouse import repo_routes
    from bakehouse.dependencies import reader
    from bakehouse.service import Service

    ws = Store(str(tmp_path)).workspace()
    ws.create_repo(RepoSpec(repo_name="r", base_model="fake"))
    app = FastAPI()
    app.include_router(repo_routes.router)
    app.dependency_overrides[reader] = lambda: Service(ws, RecordingRunner())
    assert TestClient(app).get("/repo/r").json() == {"repo_name": "r", "base_model": "fake"}

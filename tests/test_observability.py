"""Job observability: phases, times and timeline in every status, run statistics, stalled jobs, and
live events over Server-Sent Events from a real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from bakehouse.api import create_app
from flows.rollout import run_rollout
from flows.runtime import Engines
from flows.stim import run_stim
from repo_store import Store
from repo_store.stats import LatencyHistogram, RequestCounts, error_kind
from repo_store.timeline import read_timeline
from net import serve_app
from runners import SlowRunner
from targets import PromptSpec, RepoSpec, TargetSpec

QUESTIONS = [f"question {i}?" for i in range(12)]
TARGET = {"teacher_prompt": "teacher", "student_prompt": "student", "model_name": "fake", "num_traj_per_stimulus": 2,
          "max_tokens": 8, "generators": [{"type": "hardcoded", "questions": QUESTIONS}]}


def setup_target(ws, questions=QUESTIONS) -> None:
    ws.create_repo(RepoSpec(repo_name="r", base_model="fake"))
    ws.create_prompt("r", PromptSpec(prompt_name="teacher", messages=[{"role": "system", "content": "Be terse."}]))
    ws.create_prompt("r", PromptSpec(prompt_name="student", messages=[]))
    ws.create_target("r", TargetSpec(target_name="t", overrides={**TARGET, "generators": [{"type": "hardcoded", "questions": questions}]}))


@pytest.fixture
def server(tmp_path):
    store = Store(str(tmp_path / "data"))
    _, key = store.keys.create(workspace="default", scope="write")
    setup_target(store.workspace())
    app = create_app(store, SlowRunner(store))
    with serve_app(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        yield http, store, app


def wait_for(http: httpx.Client, path: str, status: str = "complete") -> dict:
    deadline = time.monotonic() + 60
    while (job := http.get(path).json())["status"] != status:
        assert time.monotonic() < deadline and job["status"] != "failed", job
        time.sleep(0.05)
    return job


def read_stream(response: httpx.Response) -> list[dict]:
    """Each event of an SSE stream with the time it arrived, until the server ends the stream."""
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if current:
                events.append({**current, "received": time.time()})
                current = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        current[name] = value.lstrip(" ")
    return events


def test_a_finished_rollout_shows_its_phases_times_timeline_and_statistics(server):
    http, store, app = server
    http.post("/v1/repo/r/targets/t/stim")
    wait_for(http, "/v1/repo/r/targets/t/stim")
    started = http.post("/v1/repo/r/targets/t/rollout").json()
    assert started["status"] in ("not_started", "running") and started["phase"] is not None
    job = wait_for(http, "/v1/repo/r/targets/t/rollout")
    assert job["phase"] == "complete" and job["stalled"] is False
    assert job["created_at"] <= job["started_at"] <= job["completed_at"]
    phases = [(e["status"], e["phase"]) for e in job["status_events"]]
    assert phases == [("not_started", "queued"), ("running", "starting"), ("running", "loading_model"),
                      ("running", "generating"), ("running", "compacting"), ("complete", "complete")]
    stats = job["stats"]
    assert (stats["requests"], stats["trajectories"], stats["errors"]) == (12, 24, 0)
    assert stats["completion_tokens"] > 0 and stats["prompt_tokens"] > 0
    # Each request sleeps 0.15 s in the engine: the percentiles say so (buckets are 10 % wide).
    assert 150 <= stats["latency_ms"]["p50"] <= stats["latency_ms"]["p95"] <= stats["latency_ms"]["p99"] < 2000
    assert stats["engine_seconds"] >= 12 * 0.15 * 0.9 and stats["trajectories_per_second"] > 0


def test_the_event_stream_of_a_running_rollout_follows_each_chunk_and_ends_with_complete(server):
    http, store, app = server
    http.post("/v1/repo/r/targets/t/stim")
    wait_for(http, "/v1/repo/r/targets/t/stim")
    http.post("/v1/repo/r/targets/t/rollout")
    with http.stream("GET", "/v1/repo/r/targets/t/rollout/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_stream(response)
    job = store.workspace().job("r", "t", "rollout")
    progress = [(e["received"], json.loads(e["data"])) for e in events if e["event"] == "progress"]
    rows = 0
    for index, record in sorted(job.chunks().items()):  # six chunks of 2 stimuli, ~0.3 s apart
        rows += record.part.rows
        seen = [at for at, data in progress if data["lines"] >= rows or data["status"] == "complete"]
        assert seen and seen[0] - record.at < 1.0, (index, seen[:1], record.at)
    assert len({data["lines"] for _, data in progress}) >= 4  # it moved while running, not only at the end
    last = events[-1]
    assert last["event"] == "status" and json.loads(last["data"])["status"] == "complete"

    # A finished job replays its timeline and the stream ends at once; Last-Event-ID skips what was seen.
    with http.stream("GET", "/v1/repo/r/targets/t/rollout/events") as response:
        replay = read_stream(response)
    ids = [int(e["id"]) for e in replay if "id" in e]
    assert ids == list(range(len(ids))) and len(ids) >= 5
    with http.stream("GET", "/v1/repo/r/targets/t/rollout/events", headers={"Last-Event-ID": str(ids[2])}) as response:
        resumed = read_stream(response)
    assert [int(e["id"]) for e in resumed if "id" in e] == ids[3:]


def test_a_killed_and_resumed_rollout_shows_the_lost_lease_and_the_resume(tmp_path):
    data = str(tmp_path / "data")
    ws = Store(data).workspace()
    setup_target(ws, [f"q {i}?" for i in range(40)])
    run_stim(ws, "r", "t")
    script = textwrap.dedent(f"""
        from flows.rollout import run_rollout
        from flows.runtime import Engines
        from repo_store import Store
        run_rollout(Store({data!r}).workspace(), "r", "t", engines=Engines(delay=0.1), chunk_size=4)
    """)
    worker = subprocess.Popen([sys.executable, "-c", script], cwd=os.getcwd())
    job = ws.job("r", "t", "rollout")
    deadline = time.monotonic() + 120
    while len(job.chunks()) < 2:
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert job.status().status == "failed"  # same host, pid gone: known at once

    resumed = run_rollout(ws, "r", "t", engines=Engines())
    assert resumed.status == "complete"
    notes = [(e.status, e.note) for e in read_timeline(job) if e.note]
    assert notes[0] == ("running", "attempt 1 started")
    assert notes[1][0] == "failed" and "attempt 1 lost its lease" in notes[1][1]
    assert notes[2][0] == "running" and notes[2][1].startswith("attempt 2 resumed the job (")
    assert notes[-1] == ("complete", "80 lines")


def test_a_job_whose_work_stopped_moving_reads_stalled(tmp_path, monkeypatch):
    monkeypatch.setenv("BAKEHOUSE_LEASE_SECONDS", "600")
    monkeypatch.setenv("BAKEHOUSE_STALL_SECONDS", "0.5")
    store = Store(str(tmp_path))
    job = store.job(store.storage.path("jobs", "one"), "rollout")
    attempt = job.claim(owner="test").keep_alive()
    try:
        attempt.set_phase("generating")
        assert (job.status().status, job.status().stalled) == ("running", False)
        time.sleep(0.8)  # no touch(): the heartbeats stop, the lease has not run out yet
        status = job.status()
        assert (status.status, status.phase, status.stalled) == ("running", "generating", True)
        attempt.touch()
        attempt.heartbeat()
        assert job.status().stalled is False
    finally:
        attempt.release()


def test_latency_histograms_merge_and_give_percentiles_within_a_bucket():
    one, two = LatencyHistogram(), LatencyHistogram()
    for ms in range(1, 101):
        (one if ms % 2 else two).add(ms)
    one.merge(LatencyHistogram(two.to_json()))  # through its stored form
    assert len(one) == 100
    for fraction, exact in ((0.5, 50), (0.95, 95), (0.99, 99)):
        assert exact <= one.percentile(fraction) <= exact * 1.1 + 1
    assert LatencyHistogram().percentile(0.5) is None


def test_request_counts_add_up_over_chunks_and_name_error_kinds():
    chunks = []
    for latency in (100.0, 300.0):
        counts = RequestCounts()
        counts.record_request(latency_ms=latency, prompt_tokens=10, cached_prompt_tokens=4, error=None)
        counts.record_request(latency_ms=latency, prompt_tokens=10, cached_prompt_tokens=None, error="HTTP 503: busy")
        counts.engine_seconds = 1.5
        chunks.append(counts.to_json())
    total = RequestCounts.total(chunks)
    assert (total["requests"], total["prompt_tokens"], total["cached_prompt_tokens"]) == (4, 40, 8)
    assert total["cache_reported_prompt_tokens"] == 20 and total.engine_seconds == 3.0
    assert dict(total.errors_by_kind) == {"http_503": 2}
    assert [error_kind(m) for m in ("gave up after 3 attempts: x", "TimeoutError: slow", "engine reported an error")] == [
        "retries_exhausted", "TimeoutError", "engine_error"]


def make_target(http: httpx.Client, repo: str, name: str) -> None:
    http.post("/v1/repo", json={"repo_name": repo, "base_model": "fake"})
    for prompt in ("teacher", "student"):
        http.post(f"/v1/repo/{repo}/prompts", json={"prompt_name": prompt, "messages": []})
    created = http.post(f"/v1/repo/{repo}/targets", json={"target_name": name, "template": "default", "overrides": TARGET})
    assert created.status_code in (200, 201), created.text


def test_the_job_list_filters_and_pages_jobs_of_every_kind_and_status(server):
    http, store, app = server
    make_target(http, "r2", "d")
    for repo, target in (("r", "t"), ("r2", "d")):
        http.post(f"/v1/repo/{repo}/targets/{target}/stim")
        wait_for(http, f"/v1/repo/{repo}/targets/{target}/stim")
    http.post("/v1/repo/r/targets/t/rollout")
    wait_for(http, "/v1/repo/r/targets/t/rollout", status="running")
    listed = http.get("/v1/jobs", params={"status": "running"}).json()
    assert [(j["id"], j["kind"], j["phase"] in ("starting", "loading_model", "generating")) for j in listed["jobs"]] == [
        ("r/t/rollout", "rollout", True)]
    http.post("/v1/repo/r/targets/t/rollout/cancel")
    wait_for(http, "/v1/repo/r/targets/t/rollout", status="failed")
    bake = {"bake_name": "b", "template": "default", "overrides": {"datasets": [{"target": "t", "weight": 1.0}]}}
    assert http.post("/v1/repo/r/bakes", json=bake).status_code == 201

    everything = http.get("/v1/jobs").json()
    assert everything["total"] == 3 and [j["id"] for j in everything["jobs"]] == ["r/t/rollout", "r2/d/stim", "r/t/stim"]
    rollout = everything["jobs"][0]
    assert (rollout["status"], rollout["error"], rollout["job_id"]) == ("failed", "cancelled", 1)
    assert [e["status"] for e in rollout["status_events"]][-1] == "failed"
    assert http.get("/v1/jobs", params={"status": "complete"}).json()["total"] == 2
    assert [j["id"] for j in http.get("/v1/jobs", params={"repo": "r2"}).json()["jobs"]] == ["r2/d/stim"]
    assert [j["id"] for j in http.get("/v1/jobs", params={"kind": "stim", "target": "t"}).json()["jobs"]] == ["r/t/stim"]
    page = http.get("/v1/jobs", params={"limit": 2, "offset": 1}).json()
    assert (page["total"], [j["id"] for j in page["jobs"]]) == (3, ["r2/d/stim", "r/t/stim"])
    middle = everything["jobs"][1]["created_at"]
    assert [j["id"] for j in http.get("/v1/jobs", params={"created_before": middle}).json()["jobs"]] == ["r/t/stim"]
    assert http.get("/v1/jobs", params={"created_after": middle}).json()["total"] == 2
    assert http.get("/v1/jobs", params={"limit": 201}).status_code == 422
    assert http.get("/v1/jobs", params={"kind": "nope"}).status_code == 422

    # A job started elsewhere (straight on storage, as the CLI or a Prefect run would) shows up
    # once the index rescans; one this API starts shows up at once.
    ws = store.workspace()
    elsewhere = ws.bake_run("r", ws.get_bake("r", "b")).job.claim(owner="another machine")
    assert http.get("/v1/jobs", params={"kind": "bake"}).json()["total"] == 0
    app.state.job_index.rescan_seconds = 0
    http.get("/v1/jobs")  # starts a rescan in the background
    deadline = time.monotonic() + 30
    while not (bakes := http.get("/v1/jobs", params={"kind": "bake"}).json())["total"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [(j["id"], j["status"], j["bake_name"]) for j in bakes["jobs"]] == [("r/bakes/b", "running", "b")]
    elsewhere.release()
    started = http.post("/v1/repo/r2/targets/d/rollout").json()
    assert started["status"] in ("not_started", "running")
    assert http.get("/v1/jobs", params={"kind": "rollout", "repo": "r2"}).json()["total"] == 1
    other_key = store.keys.create(workspace="elsewhere", scope="read")[1]
    assert http.get("/v1/jobs", headers={"Authorization": f"Bearer {other_key}"}).json() == {
        "total": 0, "offset": 0, "limit": 50, "jobs": []}


def test_validate_checks_a_target_without_creating_it(tmp_path):
    from fastapi.testclient import TestClient

    from runners import RecordingRunner

    store = Store(str(tmp_path))
    setup_target(store.workspace())
    _, key = store.keys.create(workspace="default", scope="read")
    http = TestClient(create_app(store, RecordingRunner()), headers={"Authorization": f"Bearer {key}"})
    good = http.post("/v1/repo/r/targets/validate", json={"target_name": "new", "template": "t", "overrides": {"max_tokens": 16}}).json()
    assert good["valid"] and good["errors"] == []
    assert good["resolved_config"]["max_tokens"] == 16 and good["resolved_config"]["num_traj_per_stimulus"] == 2
    assert [s["unconditioned_stimulus"]["messages"][-1]["content"] for s in good["sample_stimuli"]] == QUESTIONS[:3]
    assert good["sample_stimuli"][0]["unconditioned_stimulus"]["messages"][0] == {"role": "system", "content": "Be terse."}
    assert {k: good["estimated"][k] for k in ("stimuli", "trajectories", "max_completion_tokens")} == {
        "stimuli": 12, "trajectories": 24, "max_completion_tokens": 24 * 16}

    bad = http.post("/v1/repo/r/targets/validate", json={"target_name": "new", "template": "default", "overrides": {
        **TARGET, "teacher_prompt": "missing", "model_name": "no-such-model"}}).json()
    assert not bad["valid"]
    fields = {e["field"]: e["message"] for e in bad["errors"]}
    assert "missing" in fields["teacher_prompt"] and "model_name" in fields and "student_prompt" not in fields
    malformed = http.post("/v1/repo/r/targets/validate", json={"target_name": "new", "template": "default", "overrides": {
        **TARGET, "num_traj_per_stimulus": 0, "temprature": 1}}).json()
    assert {e["field"] for e in malformed["errors"]} == {"num_traj_per_stimulus", "temprature"}
    assert http.post("/v1/repo/r/targets/validate", json={"target_name": "x", "template": "nope"}).json()["errors"] == [
        {"field": "overrides", "message": "Template 'nope' not found"}]
    assert store.workspace().list_targets("r") == ["t"]  # nothing was created

    bake = http.post("/v1/repo/r/bakes/validate", json={"bake_name": "b", "overrides": {"datasets": [{"target": "t"}]}}).json()
    assert not bake["valid"] and [e["field"] for e in bake["errors"]] == ["model.parent_model_name", "datasets"]
    assert bake["errors"][1]["message"] == "Target rollouts must complete before starting bake"
    assert "parent model 'fake' cannot be found" in bake["errors"][0]["message"]  # "fake" only generates
    assert http.post("/v1/repo/r/bakes/validate", json={"bake_name": "b", "overrides": {"datasets": [{"target": "gone"}]}}).json()[
        "errors"][0]["message"] == "Invalid dataset reference: target 'gone' not found"
    assert store.workspace().list_bakes("r") == []
    assert http.post("/v1/repo/nope/targets/validate", json={}).status_code == 404


def test_the_sdk_follows_a_job_over_its_event_stream_and_polls_where_it_cannot(server):
    from bakehouse import AsyncClient, Client

    http, store, _ = server
    base_url, key = str(http.base_url), http.headers["Authorization"].removeprefix("Bearer ")
    client = Client(base_url=base_url, api_key=key, poll_interval=30)  # polling would wait 30 s a look
    client.targets.stim.run("t", repo_name="r")
    seen, started = [], time.monotonic()
    job = client.targets.rollout.run("t", repo_name="r", on_progress=seen.append)
    assert job["status"] == "complete" and time.monotonic() - started < 15
    assert len({s["lines"] for s in seen}) >= 4 and seen[-1]["status"] == "complete"

    # A proxy (or an older server) that does not stream events: the SDK polls instead.
    def no_events(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(404, json={"message": "Not Found", "code": "RESOURCE_NOT_FOUND"})
        return forward.handle_request(request)

    forward = httpx.HTTPTransport()
    polling = Client(http_client=httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"},
                                              transport=httpx.MockTransport(no_events)), poll_interval=0.1)
    http.delete("/v1/repo/r/targets/t/rollout")
    polled = []
    assert polling.targets.rollout.run("t", repo_name="r", on_progress=polled.append)["status"] == "complete"
    assert len(polled) >= 5  # one per look

    async def through_async_client() -> list:
        http.delete("/v1/repo/r/targets/t/rollout")
        seen = []
        async with AsyncClient(base_url=base_url, api_key=key, poll_interval=30) as aclient:
            job = await aclient.targets.rollout.run("t", repo_name="r", on_progress=seen.append)
        assert job["status"] == "complete"
        return seen

    import anyio

    started = time.monotonic()
    seen = anyio.run(through_async_client)
    assert time.monotonic() - started < 15 and len({s["lines"] for s in seen}) >= 4


def test_the_sdk_lists_jobs_validates_and_deletes_output(server):
    from bakehouse import AsyncClient, Client

    http, store, _ = server
    base_url, key = str(http.base_url), http.headers["Authorization"].removeprefix("Bearer ")
    client = Client(base_url=base_url, api_key=key, poll_interval=0.1)
    client.targets.stim.run("t", repo_name="r")
    listed = client.jobs.list(kind="stim", status="complete")
    assert [j["id"] for j in listed["jobs"]] == ["r/t/stim"]
    assert client.jobs.list(created_before="2000-01-01T00:00:00Z")["total"] == 0
    report = client.targets.validate("r", target_name="n", template="t", overrides={"num_traj_per_stimulus": 3})
    assert report["valid"] and report["estimated"]["trajectories"] == 36
    assert not client.bakes.validate("r", bake_name="b", overrides={"datasets": [{"target": "t"}]})["valid"]
    assert client.targets.stim.delete_output("t", repo_name="r")["deleted"]["lines"] == 12
    assert client.targets.stim.get("t", repo_name="r")["status"] == "not_started"

    async def through_async_client() -> tuple:
        async with AsyncClient(base_url=base_url, api_key=key) as aclient:
            return (await aclient.jobs.list(repo="r"), await aclient.targets.validate("r", target_name="n", template="t"),
                    await aclient.bakes.validate("r", bake_name="b"))

    import anyio

    jobs, target_report, bake_report = anyio.run(through_async_client)
    assert jobs["total"] == 0 and target_report["valid"]  # the stim's output is gone: no job is left
    assert not bake_report["valid"] and "Bake has no datasets" in {e["field"]: e["message"] for e in bake_report["errors"]}["datasets"]

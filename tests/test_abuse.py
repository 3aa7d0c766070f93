"""Bad input and abuse at the API edge: every refusal in the envelope, and no side effect."""

from __future__ import annotations

import json
import logging
import tempfile
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings, strategies as st
from pydantic import TypeAdapter, ValidationError as PydanticValidationError

from bakehouse.api import create_app
from bakehouse.schemas import NAME_PATTERN, ResourceName
from runners import RecordingRunner
from repo_store import JobStatus, Store
from targets import ValidationFailed, validate_name
from targets.names import MAX_NAME_LENGTH


@pytest.fixture
def api():
    store = Store(tempfile.mkdtemp(prefix="bakehouse-abuse-"))
    _, key = store.keys.create(workspace="default", scope="write")
    runner = RecordingRunner()
    app = create_app(store, runner, max_body_bytes=50_000, rate_limit_per_hour=100_000)
    client = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    client.post("/v1/repo", json={"repo_name": "r", "base_model": "fake"})
    client.post("/v1/repo/r/prompts", json={"prompt_name": "p", "messages": []})
    return {"client": client, "store": store, "key": key, "runner": runner}


def snapshot(client):
    return (client.get("/v1/repo").json(), client.get("/v1/repo/r/prompts").json(), client.get("/v1/repo/r/targets").json())


TARGET = {"teacher_prompt": "p", "student_prompt": "p", "generators": [{"type": "hardcoded", "questions": ["q?"]}]}


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("post", "/v1/repo", b"{not json", 422),
        ("post", "/v1/repo", {"repo_name": 5}, 422),
        ("post", "/v1/repo", {"repo_name": "x", "bogus": 1}, 422),
        ("post", "/v1/repo", {"repo_name": "x\x00y"}, 422),
        ("post", "/v1/repo", {"repo_name": "x" * 300}, 422),
        ("post", "/v1/repo", {"repo_name": ".."}, 422),
        ("post", "/v1/repo/r/prompts", {"prompt_name": "a/b", "messages": []}, 422),
        ("post", "/v1/repo/r/prompts", {"prompt_name": "ok", "messages": "not a list"}, 422),
        ("post", "/v1/repo/r/targets", {"target_name": "t", "template": "missing", "overrides": TARGET}, 400),
        ("post", "/v1/repo/r/targets", {"target_name": "t", "template": "default",
                                        "overrides": {**TARGET, "teacher_prompt": "ghost"}}, 400),
        ("post", "/v1/repo/r/targets", {"target_name": "t", "template": "default",
                                        "overrides": {**TARGET, "generators": [{"type": "hardcoded", "questions": ["a"], "numq": 5}]}}, 422),
        ("post", "/v1/repo/r/targets", {"target_name": "t", "template": "default",
                                        "overrides": {**TARGET, "extra_kwargs": {"logprobs": 5}}}, 422),
        ("post", "/v1/repo/r/targets", {"target_name": "t", "template": "default",
                                        "overrides": {**TARGET, "temperature": "hot"}}, 422),
        ("post", "/v1/repo/r/targets", {"target_name": "t", "template": "default", "overrides": "nope"}, 422),
        ("post", "/v1/repo/r/targets/batch", {"targets": "nope"}, 422),
        ("get", "/v1/repo/r/targets/nope/stim/output?limit=0", None, 422),
        ("get", "/v1/repo/r/targets/nope/stim/output?offset=-1", None, 422),
        ("get", "/v1/repo/r/targets/nope/stim/output?limit=abc", None, 422),
        ("post", "/v1/repo/nope/targets/t/stim", None, 404),
        ("get", "/v1/repo/sp%20ace/targets", None, 422),
        ("post", "/v1/repo/r/targets/.t/stim", None, 422),
        ("get", "/v1/jobs?created_before=0.5", None, 422),  # the schema says date-time, not a number
        ("post", "/v1/repo", {"repo_name": "big", "base_model": "x" * 60_000}, 413),
    ],
)
def test_bad_input_is_refused_in_the_envelope_without_side_effects(api, method, path, body, status):
    client = api["client"]
    before = snapshot(client)
    if isinstance(body, bytes):
        response = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
    else:
        response = client.request(method, path, json=body)
    assert response.status_code == status, response.text
    envelope = response.json()
    assert isinstance(envelope["message"], str) and envelope["message"] and envelope["code"]
    assert snapshot(client) == before
    assert api["runner"].submitted == []


def test_a_batch_reports_a_bad_name_under_failed_and_creates_the_rest(api):
    body = {"targets": [{"target_name": "a/b", "template": "default", "overrides": TARGET},
                        {"target_name": "batched", "template": "default", "overrides": TARGET}]}
    response = api["client"].post("/v1/repo/r/targets/batch", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["created"] == ["batched"] and "a/b" in response.json()["failed"]
    bakes = api["client"].post("/v1/repo/r/bakes/batch", json={"bakes": [{"bake_name": "sp ace"}]})
    assert bakes.status_code == 200 and "sp ace" in bakes.json()["failed"]


def test_the_job_list_takes_a_date_or_a_date_and_time_but_not_a_number(api):
    for since in ("2025-01-31", "2025-01-31T12:00:00Z"):
        assert api["client"].get("/v1/jobs", params={"created_after": since}).status_code == 200, since
    assert api["client"].get("/v1/jobs", params={"created_after": "1738281600"}).status_code == 422


def test_lying_content_length_cannot_smuggle_a_huge_body(api):
    def chunks():
        for _ in range(20):
            yield b"x" * 10_000

    response = api["client"].post("/v1/repo", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["code"] == "PAYLOAD_TOO_LARGE"


def test_rate_limit_answers_429_with_retry_after():
    store = Store(tempfile.mkdtemp(prefix="bakehouse-rate-"))
    _, key = store.keys.create(workspace="default", scope="read")
    _, other = store.keys.create(workspace="default", scope="read")
    client = TestClient(create_app(store, RecordingRunner(), rate_limit_per_hour=5))
    codes = [client.get("/v1/repo", headers={"Authorization": f"Bearer {key}"}).status_code for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2
    limited = client.get("/v1/repo", headers={"Authorization": f"Bearer {key}"})
    assert limited.json()["code"] == "RATE_LIMITED" and int(limited.headers["Retry-After"]) >= 1
    assert client.get("/v1/repo", headers={"Authorization": f"Bearer {other}"}).status_code == 200  # per key


def test_keys_are_stored_hashed_and_never_logged(api, caplog):
    store, key = api["store"], api["key"]
    caplog.set_level(logging.DEBUG)
    api["client"].post("/v1/repo/r/targets", json={"target_name": "t", "template": "default", "overrides": TARGET})
    api["client"].post("/v1/repo/r/targets/t/stim")
    stored = [store.storage.read_bytes(store.storage.path("keys", n)) for n in store.storage.list_names(store.storage.path("keys"))]
    random_part = key.split("_", 2)[2]  # the random part may itself contain "_"
    assert len(random_part) >= 32
    assert stored and all(key.encode() not in blob and random_part.encode() not in blob for blob in stored)
    assert key not in caplog.text and random_part not in caplog.text
    assert key not in json.dumps(api["client"].get("/v1/repo/r/targets/t/stim").json())


def test_other_workspaces_cannot_infer_existence(api):
    store = api["store"]
    _, stranger = store.keys.create(workspace="elsewhere", scope="write")
    client = TestClient(create_app(store, RecordingRunner()), headers={"Authorization": f"Bearer {stranger}"})
    for path in ("/v1/repo/{}", "/v1/repo/{}/prompts", "/v1/repo/{}/targets", "/v1/repo/{}/prompts/p"):
        existing = client.get(path.format("r"))
        missing = client.get(path.format("no-such-repo"))
        assert existing.status_code == missing.status_code == 404
        assert existing.json()["message"] == missing.json()["message"].replace("no-such-repo", "r")
    assert client.get("/v1/repo").json() == {"repos": []}
    assert client.post("/v1/repo/r/targets/t/stim").status_code == 404


def test_cancel_marks_the_job_and_tells_the_runner(api):
    client = api["client"]
    client.post("/v1/repo/r/targets", json={"target_name": "t", "template": "default", "overrides": TARGET})
    client.post("/v1/repo/r/targets/t/stim")
    response = client.post("/v1/repo/r/targets/t/stim/cancel")
    assert response.status_code == 200 and response.json()["status"] in ("not_started", "failed")
    assert [ref.kind for ref in api["runner"].cancelled] == ["stim"]


def test_a_queued_job_blocks_deleting_its_target_and_a_recreated_target_is_a_new_one(api):
    client, runner = api["client"], api["runner"]
    create = {"target_name": "t", "template": "default", "overrides": TARGET}
    client.post("/v1/repo/r/targets", json=create)
    client.post("/v1/repo/r/targets/t/stim")  # queued: storage still says not_started
    refused = client.delete("/v1/repo/r/targets/t")
    assert refused.status_code == 400 and refused.json()["code"] == "INVALID_INPUT"
    client.post("/v1/repo/r/targets/t/stim/cancel")
    assert client.delete("/v1/repo/r/targets/t").status_code == 200
    client.post("/v1/repo/r/targets", json=create)
    client.post("/v1/repo/r/targets/t/stim")
    first, second = runner.submitted
    assert (first.target_name, first.kind) == (second.target_name, second.kind) and first.target_id != second.target_id


def test_local_runner_gives_up_on_a_worker_that_never_claims(tmp_path, monkeypatch):
    from bakehouse.runner import JobRef, LocalRunner

    monkeypatch.setenv("BAKEHOUSE_START_TIMEOUT", "0.2")
    runner = LocalRunner(str(tmp_path))
    ref = JobRef("default", "r", "t", "t-id", "stim")
    idle = JobStatus("not_started")
    runner.submit(ref, idle)
    runner.submit(ref, idle)
    assert runner.started == 1  # the second start joined the first
    time.sleep(0.5)
    viewed = runner.view(ref, idle)
    assert viewed.status == "failed" and "before starting the job" in viewed.error
    runner.submit(ref, idle)  # a new start replaces the failed one
    assert runner.started == 2
    assert runner.active(ref)
    runner.cancel(ref)
    runner.close()
    assert not runner.active(ref)
    # Cancelled before it claimed the job: a terminal state, or pollers would wait forever.
    assert (runner.view(ref, idle).status, runner.view(ref, idle).error) == ("failed", "cancelled")
    runner.submit(ref, idle)  # started again: on its way again
    assert runner.active(ref) and runner.started == 3
    runner.close()


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.text(alphabet="ab9_-.", max_size=6),
    st.text(alphabet=st.sampled_from("aZ0_-./ \n\x00é"), max_size=8),
    st.from_regex(NAME_PATTERN),
    st.integers(MAX_NAME_LENGTH - 1, MAX_NAME_LENGTH + 1).map(lambda n: "a" * n),
))
def test_the_declared_name_rule_is_the_enforced_one(name):
    """What the OpenAPI schema declares for a name (bakehouse.schemas.ResourceName, validated as the
    server validates request fields) accepts exactly what targets.names.validate_name accepts."""
    try:
        validate_name(name)
        enforced = True
    except ValidationFailed:
        enforced = False
    try:
        TypeAdapter(ResourceName).validate_python(name)
        declared = True
    except PydanticValidationError:
        declared = False
    assert declared == enforced, name

"""Rate-limit headers on every authenticated response, and key usage that outlives the server."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from bakehouse.api import create_app
from bakehouse.usage import UsageRecorder
from repo_store import Store
from runners import RecordingRunner

RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


@pytest.fixture
def data(tmp_path):
    return str(tmp_path / "data")


def keyed(app, key: str) -> TestClient:
    return TestClient(app, headers={"Authorization": f"Bearer {key}"})


def test_rate_limit_headers_count_down_on_successes_and_errors(data):
    store = Store(data)
    _, key = store.keys.create(workspace="default", scope="write")
    client = keyed(create_app(store, RecordingRunner(), rate_limit_per_hour=100), key)
    first, second = client.get("/v1/repo"), client.get("/v1/repo")
    assert [first.headers["X-RateLimit-Limit"], second.headers["X-RateLimit-Limit"]] == ["100", "100"]
    assert (int(first.headers["X-RateLimit-Remaining"]), int(second.headers["X-RateLimit-Remaining"])) == (99, 98)
    assert 0 <= int(first.headers["X-RateLimit-Reset"]) <= int(second.headers["X-RateLimit-Reset"]) <= 3600
    missing = client.get("/v1/repo/nope")
    assert missing.status_code == 404 and missing.headers["X-RateLimit-Remaining"] == "97"


def test_a_refused_key_gets_429_with_remaining_zero_and_no_key_gets_no_figures(data):
    store = Store(data)
    _, key = store.keys.create(workspace="default", scope="read")
    app = create_app(store, RecordingRunner(), rate_limit_per_hour=2)
    client = keyed(app, key)
    codes = [client.get("/v1/repo") for _ in range(3)]
    assert [c.status_code for c in codes] == [200, 200, 429]
    assert codes[2].headers["X-RateLimit-Remaining"] == "0" and int(codes[2].headers["Retry-After"]) >= 1
    for headers in ({}, {"Authorization": "Bearer bh_0000_nope"}):
        refused = TestClient(app).get("/v1/repo", headers=headers)
        assert refused.status_code == 401 and not any(h in refused.headers for h in RATE_HEADERS)


def test_usage_survives_a_restart(data):
    store = Store(data)
    key, secret = store.keys.create(workspace="default", scope="read")
    with keyed(create_app(store, RecordingRunner()), secret) as client:  # `with`: runs startup and shutdown
        for _ in range(3):
            client.get("/v1/repo")
        client.get("/v1/repo/nope")
    restarted = Store(data)
    with keyed(create_app(restarted, RecordingRunner()), secret):
        usage = restarted.keys.read_usage(key.key_id, since=time.time() - 3600)
    assert usage.requests == 4 and time.time() - 60 < usage.last_used <= time.time()


def test_usage_of_two_processes_adds_up(data_url):  # local disk and S3
    first, second = UsageRecorder(Store(data_url).keys, flush_every=60), UsageRecorder(Store(data_url).keys, flush_every=60)
    for _ in range(2):
        first.record("k1")
        first.flush()  # a process writes its running total again: it must not count twice
    for _ in range(3):
        second.record("k1")
    second.record("k2")
    second.flush()
    keys = Store(data_url).keys
    assert keys.read_usage("k1", since=time.time() - 3600).requests == 5
    assert keys.read_usage("k2", since=time.time() - 3600).requests == 1
    assert keys.read_usage("k1", since=time.time() + 7200).requests == 0  # hours before `since` are left out

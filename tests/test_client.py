"""The SDK's own shapes, against a fake server (httpx.MockTransport): both clients send the same
requests, responses are typed and still read as dicts, and every error is a BakehouseError."""

from __future__ import annotations

import inspect
import json
import re
from typing import Any

import anyio
import httpx
import pytest

import bakehouse
from bakehouse import AsyncClient, BakehouseError, Client, schemas

ROW = {"stimulus_id": 0, "trajectory_id": 0, "response": {"content": "Arr."},
       "unconditioned_stimulus": {"messages": [{"role": "system", "content": "Be a pirate."}]},
       "conditioned_stimulus": {"messages": []}}
RUNNING = {"status": "running", "lines": 0}
COMPLETE = {"status": "complete", "lines": 1, "config": {}, "job_id": 1, "stalled": False,
            "status_events": [{"status": "complete", "phase": "complete", "timestamp": "2026-01-01T00:00:00Z"}]}
REPORT = {"valid": True, "errors": [{"field": "datasets", "message": "Bake has no datasets"}]}
DELETED = {"message": "Resource deleted successfully"}


def answers(parquet: str) -> list[tuple[str, str, Any]]:
    """(method, path pattern, JSON answer) of the fake server, first match wins. Starting a job
    answers `running` and reading it `complete`, so that `run` waits (stream refused, then a look)."""
    job = r"/v1/repo/r/targets/t/(stim|rollout)"
    bake = "/v1/repo/r/bakes/b"
    return [
        ("GET", "/v1/health", {"status": "ok", "version": "1"}),
        ("GET", "/v1/jobs", {"total": 0, "offset": 0, "limit": 50, "jobs": []}),
        ("GET", "/v1/repo", {"repos": ["r"]}),
        ("*", "/v1/repo(/r)?", {"repo_name": "r", "base_model": "m"}),
        ("GET", "/v1/repo/r/tree", {"base_model": "m", "bakes": {}, "edges": []}),
        ("GET", "/v1/repo/r/prompts", {"prompts": ["p"]}),
        ("*", "/v1/repo/r/prompts(/p)?", {"prompt_name": "p", "messages": []}),
        ("GET", "/v1/repo/r/targets", {"targets": ["t"]}),
        ("*", r"/v1/repo/r/(targets|bakes)/validate", REPORT),
        ("DELETE", "/v1/repo/r/(targets/t|bakes/b)", DELETED),
        ("*", "/v1/repo/r/targets(/t)?", {"target_name": "t", "config": {}}),
        ("DELETE", job, {"message": "gone", "deleted": {"lines": 1, "files": 3}}),
        ("POST", job, RUNNING),
        ("*", f"{job}(/cancel)?", COMPLETE),
        ("GET", f"{job}/output", {**COMPLETE, "output": [ROW], "offset": 0, "limit": 1000, "has_more": False}),
        ("GET", f"{job}/parquet", {"status": "complete", "lines": 1, "urls": [parquet]}),
        ("GET", "/v1/repo/r/bakes", {"bakes": ["b"]}),
        ("POST", "/v1/repo/r/bakes", {"status": "not_started", "bake_name": "b"}),
        ("POST", "/v1/repo/r/bakes/batch", {"created": ["b"], "failed": {}}),
        ("POST", bake, {**RUNNING, "bake_name": "b"}),
        ("*", f"{bake}(/cancel)?", {**COMPLETE, "bake_name": "b", "model_name": ["w/r/b/3"]}),
        ("GET", f"{bake}/download", {"url": "http://x/a.tar.gz", "bake_name": "b", "checkpoint": 3, "expires_in": 60}),
        ("GET", "/v1/repo/r/recipe/b/dependency-graph", {"base_model": "m", "bakes": {}, "targets": {}, "prompts": {},
                                                          "edges": []}),
        ("GET", "/v1/repo/r/recipe/b/recreation-plan", {
            "base_model": "m", "total_steps": 0, "steps": [], "checkpoint_prefix": "w/r",
            "resources": {"prompts": [], "targets": [], "bakes": []}}),
    ]


class FakeServer:
    """Answers from `answers` (JSON, or an httpx.Response as it is), records every request (method,
    URL, body), and refuses event streams."""

    def __init__(self, parquet: str):
        self.answers, self.sent = answers(parquet), []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, str(request.url), request.content))
        path = request.url.path
        if path.endswith("/events"):
            return httpx.Response(404, json={"message": "Not Found", "code": "RESOURCE_NOT_FOUND"})
        if path.endswith("/metrics"):  # one page, then an empty one
            return httpx.Response(200, json=[{"iter": 1, "loss": 0.5}] if request.url.params["offset"] == "0" else [])
        for method, pattern, body in self.answers:
            if method in ("*", request.method) and re.fullmatch(pattern, path):
                if isinstance(body, httpx.Response):
                    return httpx.Response(body.status_code, headers=body.headers, content=body.content)
                return httpx.Response(200, json=body)
        return httpx.Response(404, json={"message": f"no route {request.method} {path}"})


def clients(server) -> tuple[Client, AsyncClient]:
    transport = httpx.MockTransport(server)
    return (Client(http_client=httpx.Client(base_url="http://bakehouse", transport=transport), poll_interval=0.01),
            AsyncClient(http_client=httpx.AsyncClient(base_url="http://bakehouse", transport=transport), poll_interval=0.01))


TARGET = {"target_name": "t", "template": "default", "overrides": {"num_traj_per_stimulus": 2}}
BAKE = {"bake_name": "b", "template": "default", "overrides": {"datasets": [{"target": "t"}]}}
CALLS = {
    "health": lambda c: c.health(),
    "repo.create": lambda c: c.repo.create(repo_name="r", base_model="m"),
    "repo.get": lambda c: c.repo.get("r"),
    "repo.list": lambda c: c.repo.list(),
    "repo.get_tree": lambda c: c.repo.get_tree("r"),
    "prompts.create": lambda c: c.prompts.create("r", prompt_name="p", messages=[{"role": "user", "content": "Hi"}],
                                                 tools=[{"type": "function"}]),
    "prompts.get": lambda c: c.prompts.get("p", repo_name="r"),
    "prompts.list": lambda c: c.prompts.list("r"),
    "targets.create": lambda c: c.targets.create("r", **TARGET),
    "targets.get": lambda c: c.targets.get("t", repo_name="r"),
    "targets.list": lambda c: c.targets.list("r"),
    "targets.delete": lambda c: c.targets.delete("t", repo_name="r"),
    "targets.validate": lambda c: c.targets.validate("r", **TARGET),
    "jobs.list": lambda c: c.jobs.list(repo="r", kind="stim", status=None, created_after="2026-01-01T00:00:00Z"),
    "bakes.create": lambda c: c.bakes.create("r", **BAKE),
    "bakes.create_batch": lambda c: c.bakes.create_batch("r", bakes=[BAKE]),
    "bakes.get": lambda c: c.bakes.get("b", repo_name="r"),
    "bakes.list": lambda c: c.bakes.list("r"),
    "bakes.delete": lambda c: c.bakes.delete("b", repo_name="r"),
    "bakes.validate": lambda c: c.bakes.validate("r", **BAKE),
    "bakes.run": lambda c: c.bakes.run("b", repo_name="r", timeout=30),
    "bakes.download": lambda c: c.bakes.download("b", repo_name="r", checkpoint=3),
    "bakes.cancel": lambda c: c.bakes.cancel("b", repo_name="r"),
    "bakes.get_metrics": lambda c: c.bakes.get_metrics("b", repo_name="r", offset=2, limit=5),
    "bakes.iter_metrics": lambda c: c.bakes.iter_metrics("b", repo_name="r", page_size=7),
    "recipes.get_dependency_graph": lambda c: c.recipes.get_dependency_graph("b", repo_name="r"),
    "recipes.get_recreation_plan": lambda c: c.recipes.get_recreation_plan("b", repo_name="r"),
    **{f"targets.{kind}.{name}": call for kind in ("stim", "rollout") for name, call in {
        "run": lambda c, k=kind: getattr(c.targets, k).run("t", repo_name="r", poll_interval=0.01, timeout=30),
        "wait": lambda c, k=kind: getattr(c.targets, k).wait("t", repo_name="r"),
        "get": lambda c, k=kind: getattr(c.targets, k).get("t", repo_name="r"),
        "cancel": lambda c, k=kind: getattr(c.targets, k).cancel("t", repo_name="r"),
        "delete_output": lambda c, k=kind: getattr(c.targets, k).delete_output("t", repo_name="r"),
        "get_output": lambda c, k=kind: getattr(c.targets, k).get_output("t", repo_name="r", limit=5, offset=5,
                                                                         include_logprobs=True),
        "iter_output": lambda c, k=kind: getattr(c.targets, k).iter_output("t", repo_name="r", page_size=3),
        "read_dataframe": lambda c, k=kind: getattr(c.targets, k).read_dataframe("t", repo_name="r"),
        "parquet_urls": lambda c, k=kind: getattr(c.targets, k).parquet_urls("t", repo_name="r"),
        "scan_parquet": lambda c, k=kind: getattr(c.targets, k).scan_parquet("t", repo_name="r"),
        "iter_training_rows": lambda c, k=kind: getattr(c.targets, k).iter_training_rows("t", repo_name="r"),
    }.items()},
}


def resources(client: Client | AsyncClient) -> dict[str, Any]:
    return {"": client, "repo.": client.repo, "prompts.": client.prompts, "targets.": client.targets,
            "targets.stim.": client.targets.stim, "targets.rollout.": client.targets.rollout, "jobs.": client.jobs,
            "bakes.": client.bakes, "recipes.": client.recipes}


def public_methods(client: Client | AsyncClient) -> dict[str, inspect.Signature]:
    """Every public method of the client and its resources, by dotted name (the client's own
    plumbing, `request` and closing, aside)."""
    plumbing = {"request", "close", "aclose"}
    return {prefix + name: inspect.signature(method)
            for prefix, resource in resources(client).items()
            for name, method in inspect.getmembers(resource, inspect.ismethod)
            if not name.startswith("_") and name not in plumbing}


def test_sync_and_async_clients_have_the_same_methods_and_send_the_same_requests(tmp_path):
    import polars as pl

    pl.DataFrame([{"stimulus_id": 0}]).write_parquet(tmp_path / "part.parquet")
    sync_server, async_server = FakeServer(str(tmp_path / "part.parquet")), FakeServer(str(tmp_path / "part.parquet"))
    sync_client, async_client = clients(sync_server)[0], clients(async_server)[1]
    methods = public_methods(sync_client)
    assert methods.keys() == public_methods(async_client).keys() == CALLS.keys()  # a new method needs a call here
    for name, signature in public_methods(async_client).items():
        assert list(signature.parameters.values()) == list(methods[name].parameters.values()), name

    async def on_async(call):
        result = call(async_client)
        return [item async for item in result] if inspect.isasyncgen(result) else await result

    for name, call in CALLS.items():
        sync_server.sent.clear(), async_server.sent.clear()
        result = call(sync_client)
        result = list(result) if inspect.isgenerator(result) else result
        async_result = anyio.run(on_async, call)
        assert sync_server.sent == async_server.sent and sync_server.sent, name
        assert type(result) is type(async_result), name
        if not isinstance(result, pl.DataFrame | pl.LazyFrame):
            assert result == async_result, name


def test_a_wait_follows_the_stream_then_polls_and_reads_every_page():
    server = FakeServer("unused")
    client, _ = clients(server)
    seen = []
    job = client.targets.rollout.run("t", repo_name="r", on_progress=seen.append)
    assert [(method, url.removeprefix("http://bakehouse")) for method, url, _ in server.sent] == [
        ("POST", "/v1/repo/r/targets/t/rollout"), ("GET", "/v1/repo/r/targets/t/rollout/events"),
        ("GET", "/v1/repo/r/targets/t/rollout")]
    assert seen == [job] and job.status == "complete"
    server.sent.clear()
    assert [m["iter"] for m in client.bakes.iter_metrics("b", repo_name="r", page_size=1)] == [1]
    assert [url.partition("?")[2] for _, url, _ in server.sent] == ["offset=0&limit=1", "offset=1&limit=1"]


def test_responses_are_typed_read_as_dicts_too_and_keep_fields_of_a_newer_server():
    newer = {**COMPLETE, "total_expected": 2, "from_a_newer_server": {"x": 1},
             "status_events": [{**COMPLETE["status_events"][0], "note": None, "also_newer": True}]}
    server = FakeServer("unused")
    server.answers.insert(0, ("GET", "/v1/repo/r/targets/t/rollout", newer))
    client, _ = clients(server)
    job = client.targets.rollout.get("t", repo_name="r")
    assert isinstance(job, schemas.RolloutResponse)
    # attributes, typed, nested models too
    assert (job.status, job.lines, job.total_expected, job.stalled) == ("complete", 1, 2, False)
    assert isinstance(job.status_events[0], schemas.StatusEvent) and job.status_events[0].phase == "complete"
    # keys: the JSON the server sent, nested models as dicts
    assert job["status"] == job.get("status") == "complete" and job["config"] == {}
    assert job["status_events"] == [{**COMPLETE["status_events"][0], "note": None}]  # a nested extra is dropped
    assert job["from_a_newer_server"] == {"x": 1} and job.from_a_newer_server == {"x": 1}
    assert "lines" in job and "progress_percent" not in job and job.get("progress_percent", 7) == 7
    with pytest.raises(KeyError):
        job["progress_percent"]  # noqa: B018
    assert dict(job) == {**job} == job.to_dict() == json.loads(json.dumps(job.to_dict()))
    assert list(job.keys())[:2] == ["status", "lines"] and job.keys()[-1] == "from_a_newer_server"
    report = client.targets.validate("r", target_name="t")
    assert report.errors[0].field == report["errors"][0]["field"] == "datasets"
    assert client.targets.list("r") == ["t"]


def test_every_sdk_error_is_a_bakehouse_error():
    exported = [getattr(bakehouse, name) for name in bakehouse.__all__]
    errors = [cls for cls in exported if isinstance(cls, type) and issubclass(cls, Exception)]
    assert {"APIError", "APIConnectionError", "JobFailed", "JobTimeout", "JobNotComplete"} <= {e.__name__ for e in errors}
    assert all(issubclass(cls, BakehouseError) for cls in errors)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    server = FakeServer("unused")
    server.answers[:0] = [
        ("GET", "/v1/repo/gone", httpx.Response(404, json={"message": "not found", "code": "RESOURCE_NOT_FOUND"})),
        ("GET", "/v1/repo/teapot", httpx.Response(418, text="I'm a teapot")),
        ("GET", "/v1/repo/broken", httpx.Response(502, text="bad gateway")),
        ("GET", "/v1/repo/r/targets/t/stim(/output)?", {**RUNNING, "output": [], "offset": 0, "limit": 1, "has_more": False}),
        ("GET", "/v1/repo/r/bakes/b", {"status": "failed", "error": "out of memory"}),
        ("GET", "/v1/repo/odd", {"repo_name": 7}),  # not what the schema says a repo is
    ]
    client, aclient = clients(server)
    offline, aoffline = clients(refuse)
    cases = [
        (bakehouse.NotFoundError, lambda c: c.repo.get("gone")),
        (bakehouse.APIError, lambda c: c.repo.get("teapot")),
        (bakehouse.InternalServerError, lambda c: c.repo.get("broken")),
        (bakehouse.JobTimeout, lambda c: c.targets.stim.wait("t", repo_name="r", timeout=0.05)),
        (bakehouse.JobFailed, lambda c: c.bakes.run("b", repo_name="r")),
        (bakehouse.JobNotComplete, lambda c: c.targets.stim.iter_output("t", repo_name="r")),
        (bakehouse.UnexpectedResponseError, lambda c: c.repo.get("odd")),
    ]

    async def on_async(call):
        result = call(aclient)
        return [item async for item in result] if inspect.isasyncgen(result) else await result

    for expected, call in cases:
        with pytest.raises(expected) as raised:
            result = call(client)
            list(result) if inspect.isgenerator(result) else result
        assert isinstance(raised.value, BakehouseError)
        with pytest.raises(expected):
            anyio.run(on_async, call)
    with pytest.raises(bakehouse.APIConnectionError, match="cannot reach the server at http://bakehouse/"):
        offline.repo.list()
    with pytest.raises(bakehouse.APIConnectionError):
        anyio.run(aoffline.repo.list)
    failed = pytest.raises(bakehouse.JobFailed, client.bakes.run, "b", repo_name="r").value
    assert failed.job.error == failed.job["error"] == "out of memory" and str(failed) == "job failed: out of memory"

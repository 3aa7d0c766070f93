"""repo_store/: immutable resources, the job protocol, races and paging, on local disk and on S3."""

from __future__ import annotations

import io
import json
import multiprocessing
import threading

import pytest

from repo_store import Store, Superseded, rows_to_table
from repo_store.jobs import Job
from repo_store.pages import read_page
from repo_store.records import StimPlan
from targets import Conflict, InvalidInput, NotFound, PromptSpec, RepoSpec, TargetSpec, ValidationFailed


def make_target(ws, repo="r", target="t"):
    ws.create_repo(RepoSpec(repo_name=repo, base_model="tiny-random"))
    ws.create_prompt(repo, PromptSpec(prompt_name="teacher", messages=[{"role": "system", "content": "Be brief."}]))
    ws.create_prompt(repo, PromptSpec(prompt_name="student", messages=[]))
    ws.create_target(
        repo,
        TargetSpec(
            target_name=target,
            overrides={
                "teacher_prompt": "teacher",
                "student_prompt": "student",
                "generators": [{"type": "hardcoded", "questions": ["a", "b"]}],
            },
        ),
    )


# -- keys ----------------------------------------------------------------------------------------


def test_keys_verify_whatever_characters_the_random_part_holds(store, monkeypatch):
    # token_urlsafe may put "_" (the separator) inside the random part: about four keys in ten.
    monkeypatch.setattr("repo_store.keys.secrets.token_urlsafe", lambda n: "_a_b__c_" + "x" * 24)
    key, secret = store.keys.create(workspace="default", scope="write")
    assert secret.count("_") > 2
    assert store.keys.verify(secret) == key
    assert store.keys.verify(secret[:-1] + "y") is None
    assert store.keys.verify(secret.replace(key.key_id, "0" * 16)) is None


def test_sources_cannot_reach_bakehouse_storage_under_another_spelling(tmp_path):
    from repo_store.datasets import check_source

    for url in ["s3a://bucket/data/workspaces/x/part.parquet", "S3://bucket/data/a/../workspaces/x.parquet",
                "simplecache::s3://bucket/data/x.parquet", "s3://bucket/data/x.parquet"]:
        with pytest.raises(InvalidInput):
            check_source(url, "s3://bucket/data")
    assert check_source("s3://bucket/elsewhere/q.parquet", "s3://bucket/data") == "s3://bucket/elsewhere/q.parquet"
    assert check_source("s3://bucket/database/q.parquet", "s3://bucket/data")  # a sibling prefix is not inside
    with pytest.raises(InvalidInput):
        check_source(f"file://{tmp_path}/data/x.parquet", str(tmp_path / "data"))
    with pytest.raises(InvalidInput):
        check_source(f"local://{tmp_path}/other/../data/x.parquet", str(tmp_path / "data"))


# -- resources -----------------------------------------------------------------------------------


def test_repo_create_is_idempotent_and_immutable(store):
    ws = store.workspace()
    _, created = ws.create_repo(RepoSpec(repo_name="r", base_model="m1"))
    assert created
    repo, created = ws.create_repo(RepoSpec(repo_name="r", base_model="m1"))
    assert not created and repo.base_model == "m1"
    with pytest.raises(Conflict, match="base_model is immutable"):
        ws.create_repo(RepoSpec(repo_name="r", base_model="m2"))
    assert ws.list_repos() == ["r"]


def test_prompts_and_targets_are_immutable(store):
    ws = store.workspace()
    make_target(ws)
    with pytest.raises(Conflict, match="Prompts are immutable"):
        ws.create_prompt("r", PromptSpec(prompt_name="teacher", messages=[{"role": "system", "content": "other"}]))
    same = TargetSpec(target_name="t", overrides={"v": "student", "u": "teacher", "generators": [{"type": "hardcoded", "questions": ["a", "b"]}]})
    target, created = ws.create_target("r", same)
    assert not created and target.config.teacher_prompt == "teacher"
    with pytest.raises(Conflict, match="Targets are immutable"):
        ws.create_target("r", same.model_copy(update={"overrides": {**same.overrides, "temperature": 0.2}}))
    assert ws.list_targets("r") == ["t"] and ws.list_prompts("r") == ["student", "teacher"]


def test_template_must_exist_and_prompts_must_exist(store):
    ws = store.workspace()
    make_target(ws)
    with pytest.raises(InvalidInput, match="Template 'nope' not found"):
        ws.create_target("r", TargetSpec(target_name="t2", template="nope"))
    with pytest.raises(InvalidInput, match="Missing required stim fields"):
        ws.create_target("r", TargetSpec(target_name="t2", overrides={"teacher_prompt": "teacher"}))
    with pytest.raises(InvalidInput, match="student_prompt 'ghost' is not a prompt"):
        ws.create_target("r", TargetSpec(target_name="t2", overrides={"teacher_prompt": "teacher", "student_prompt": "ghost"}))
    derived, _ = ws.create_target("r", TargetSpec(target_name="t2", template="t", overrides={"temperature": 0.5}))
    assert derived.config.teacher_prompt == "teacher" and derived.config.temperature == 0.5


def test_workspaces_are_separate_namespaces(store):
    make_target(store.workspace("alpha"))
    beta = store.workspace("beta")
    assert beta.list_repos() == []
    with pytest.raises(NotFound):
        beta.get_repo("r")
    with pytest.raises(NotFound):
        beta.get_target("r", "t")


def test_missing_things_and_bad_names(store):
    ws = store.workspace()
    with pytest.raises(NotFound, match="Repository 'nope' not found"):
        ws.get_repo("nope")
    with pytest.raises(ValidationFailed, match="'/'"):
        ws.get_repo("a/b")
    with pytest.raises(ValidationFailed):
        store.workspace("..")
    make_target(ws)
    with pytest.raises(NotFound, match="Target 'x' not found"):
        ws.get_target("r", "x")


def test_delete_target_refuses_while_running_then_deletes(store):
    ws = store.workspace()
    make_target(ws)
    attempt = ws.job("r", "t", "stim").claim("test")
    with pytest.raises(InvalidInput, match="running stim job"):
        ws.delete_target("r", "t")
    attempt.release()
    ws.delete_target("r", "t")
    assert ws.list_targets("r") == []
    with pytest.raises(NotFound):
        ws.job("r", "t", "stim")
    # Created again (even with the same name): a new target whose jobs never ran.
    make_target(ws)
    assert ws.job("r", "t", "stim").status().status == "not_started"


# -- job protocol --------------------------------------------------------------------------------


def protocol_job(store, name="t"):
    """A job folder on its own: the protocol needs no target around it."""
    return store.job(store.storage.path("protocol", name), "stim")


def plan(num_chunks, total_expected=0):
    return StimPlan(num_chunks=num_chunks, total_expected=total_expected)


class FakeClock:
    """Wall-clock seconds that move only when a test says so: leases without sleeping."""

    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def page(store, job, **kwargs):
    return read_page(job, footers=store.footers, **kwargs)


def chunk_table(index: int, rows_per_chunk: int):
    start = index * rows_per_chunk
    return rows_to_table(
        [{"stimulus_id": i, "text": f"row {i}"} for i in range(start, start + rows_per_chunk)], ["stimulus_id"]
    )


def test_job_lifecycle(store):
    job = protocol_job(store)
    assert job.status().status == "not_started"
    attempt = job.claim("me")
    assert attempt is not None and attempt.gen == 1
    job.create_plan(plan(3, 30))
    assert job.claim("other") is None  # live owner: no second job
    attempt.commit_chunk(0, chunk_table(0, 10))
    status = job.status()
    assert (status.status, status.lines, status.total_expected, status.progress_percent) == ("running", 10, 30, 33.33)
    attempt.commit_chunk(1, chunk_table(1, 10))
    attempt.commit_chunk(2, chunk_table(2, 10))
    attempt.complete(3, {"trajectories": 30})
    status = job.status()
    assert (status.status, status.lines, status.progress_percent, status.summary) == ("complete", 30, 100.0, {"trajectories": 30})
    assert job.claim("again") is None  # complete: nothing to do


def test_failed_job_reports_error_and_resumes_keeping_chunks(store):
    job = protocol_job(store)
    first = job.claim("a")
    job.create_plan(plan(3))
    first.commit_chunk(0, chunk_table(0, 5))
    first.fail("model did not load")
    status = job.status()
    assert (status.status, status.error, status.lines) == ("failed", "model did not load", 5)
    second = job.claim("b")
    assert second.gen == 2
    assert sorted(job.chunks()) == [0]  # the finished chunk is kept
    for index in (1, 2):
        second.commit_chunk(index, chunk_table(index, 5))
    second.complete(3)
    assert [r["stimulus_id"] for r in page(store, job, offset=0, limit=1000).rows] == list(range(15))


def test_crashed_attempt_parts_are_invisible_and_lease_expiry_frees_the_job(store, monkeypatch):
    clock = FakeClock()
    job = Job(store.storage, store.storage.path("protocol", "crashed"), "stim", clock=clock)
    crashed = job.claim("a")
    job.create_plan(plan(2))
    crashed.commit_chunk(0, chunk_table(0, 4))
    # A part written but never committed (the process died before the marker).
    store.storage.write_bytes(job.layout.part("parts/000001-g000001.parquet"), b"garbage")
    monkeypatch.setattr("repo_store.jobs.process_alive", lambda pid: True)  # a live pid on another machine
    clock.advance(59)
    assert job.status().status == "running" and job.claim("too early") is None  # the lease (60 s) holds
    clock.advance(2)
    crashed_status = job.status()
    assert crashed_status.status == "failed" and "start it again to resume" in crashed_status.error
    assert crashed_status.lines == 4
    resumed = job.claim("b")
    assert resumed is not None and resumed.gen == 2
    resumed.commit_chunk(1, chunk_table(1, 4))
    resumed.complete(2)
    rows = page(store, job, offset=0, limit=100).rows
    assert [r["stimulus_id"] for r in rows] == list(range(8))


def test_two_attempts_committing_one_chunk_keep_the_first(store):
    job = protocol_job(store)
    first = job.claim("a")
    job.create_plan(plan(1))
    first.release()
    second = job.claim("b")
    first.commit_chunk(0, chunk_table(0, 3))
    record = second.commit_chunk(0, chunk_table(0, 4))
    assert record.gen == 1 and record.token == first.token != second.token and record.part.rows == 3
    with pytest.raises(Superseded):
        first.complete(1)  # only the newest attempt may publish
    second.complete(1)
    assert job.status().lines == 3


def test_running_view_is_the_unbroken_prefix(store):
    job = protocol_job(store)
    attempt = job.claim("a")
    job.create_plan(plan(3))
    attempt.commit_chunk(1, chunk_table(1, 5))  # a later shard finished first
    assert job.status().lines == 0 and job.status().progress_percent == 33.33
    attempt.commit_chunk(0, chunk_table(0, 5))
    assert job.status().lines == 10
    result = page(store, job, offset=5, limit=10)
    assert [r["stimulus_id"] for r in result.rows] == list(range(5, 10)) and not result.has_more


def test_complete_refuses_missing_chunks(store):
    job = protocol_job(store)
    attempt = job.claim("a")
    attempt.commit_chunk(0, chunk_table(0, 2))
    with pytest.raises(RuntimeError, match=r"chunks \[1\]"):
        attempt.complete(2)
    assert job.status().status == "running"


# -- races ---------------------------------------------------------------------------------------


def test_eight_threads_claim_one_job_one_wins(store):
    for round_ in range(5):
        job = protocol_job(store, f"race{round_}")
        barrier = threading.Barrier(8)
        winners = []

        def contend(i):
            barrier.wait()
            attempt = job.claim(f"thread-{i}")
            if attempt is not None:
                winners.append(attempt)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1
        assert job.status().status == "running"


def test_a_claim_whose_put_landed_before_its_retry_was_refused_is_still_ours(store, monkeypatch):
    # On S3, a conditional PUT that times out after landing is retried by the client and refused
    # (412): the create reports "exists". The claim must read its token back, not give up the job.
    job = protocol_job(store, "retried")
    create = type(store.storage).create_bytes

    def landed_then_refused(storage, path, data):
        create(storage, path, data)
        return False

    monkeypatch.setattr(type(store.storage), "create_bytes", landed_then_refused)
    attempt = job.claim("retrying")
    assert attempt is not None and job.status().status == "running"
    assert job.claim("another") is None  # and it is exclusive as ever
    monkeypatch.undo()
    attempt.complete(0)


def test_a_repaired_chunk_is_seen_by_other_processes_not_the_damaged_one(store):
    worker_job = protocol_job(store, "repair")
    reader_job = protocol_job(Store(store.storage.url), "repair")  # e.g. the API server's view
    attempt = worker_job.claim("worker")
    for index in range(3):
        attempt.commit_chunk(index, chunk_table(index, 4))
    before = reader_job.chunks()[1]
    assert [r["stimulus_id"] for r in page(store, reader_job, offset=4, limit=4).rows] == [4, 5, 6, 7]
    attempt.discard_chunk(1)  # found damaged by its owner
    assert sorted(reader_job.chunks()) == [0, 2]
    redone = attempt.commit_chunk(1, chunk_table(1, 4))
    assert redone.part.path != before.part.path
    assert reader_job.chunks()[1] == redone
    assert [r["stimulus_id"] for r in page(store, reader_job, offset=4, limit=4).rows] == [4, 5, 6, 7]
    attempt.complete(3)


def _claim_in_process(url, start, result):
    store = Store(url)
    start.wait()
    attempt = protocol_job(store).claim("process")
    result.put(attempt is not None)
    if attempt is not None:
        attempt.complete(0)  # leave it finished so the other process's exit changes nothing


def test_two_processes_claim_one_job_one_wins(data_url):
    context = multiprocessing.get_context("spawn")
    start, result = context.Event(), context.Queue()
    processes = [context.Process(target=_claim_in_process, args=(data_url, start, result)) for _ in range(2)]
    for p in processes:
        p.start()
    start.set()
    outcomes = [result.get(timeout=60) for _ in processes]
    for p in processes:
        p.join(timeout=60)
    assert sorted(outcomes) == [False, True]


# -- paging --------------------------------------------------------------------------------------


@pytest.fixture
def paged_job(store, monkeypatch):
    """2,345 rows in chunks of 300, compacted into parts of 1,000 rows (row groups of 1,000)."""
    monkeypatch.setattr("repo_store.jobs.COMPACTED_PART_ROWS", 1000)
    job = protocol_job(store, "paged")
    attempt = job.claim("a")
    sizes = [300] * 7 + [245]
    start = 0
    for index, size in enumerate(sizes):
        rows = [{"stimulus_id": i} for i in range(start, start + size)]
        attempt.commit_chunk(index, rows_to_table(rows, ["stimulus_id"]))
        start += size
    attempt.complete(len(sizes))
    return store


def test_compaction_layout(paged_job):
    parts = protocol_job(paged_job, "paged").committed_parts()
    assert [p.rows for p in parts] == [1200, 1145]
    assert parts[0].row_groups == [1000, 200]


@pytest.mark.parametrize(
    "offset, limit",
    [(0, 1), (0, 1000), (999, 2), (1000, 1000), (1199, 1), (1200, 5), (1150, 100), (2344, 1), (2300, 1000), (2345, 10), (5000, 10)],
)
def test_pages_at_every_boundary(paged_job, offset, limit):
    result = page(paged_job, protocol_job(paged_job, "paged"), offset=offset, limit=limit)
    expected = list(range(offset, min(offset + limit, 2345)))
    assert [r["stimulus_id"] for r in result.rows] == expected
    assert result.lines == 2345
    assert result.has_more == (offset + limit < 2345)


def test_page_limits_are_checked(paged_job):
    job = protocol_job(paged_job, "paged")
    for kwargs in ({"offset": -1, "limit": 10}, {"offset": 0, "limit": 0}, {"offset": 0, "limit": 1001}):
        with pytest.raises(ValueError):
            page(paged_job, job, **kwargs)


def test_walking_all_pages_yields_every_row_once(paged_job):
    job = protocol_job(paged_job, "paged")
    seen, offset = [], 0
    while True:
        result = page(paged_job, job, offset=offset, limit=333)
        seen += [r["stimulus_id"] for r in result.rows]
        offset += 333
        if not result.has_more:
            break
    assert seen == list(range(2345))


def test_an_attempt_that_stops_making_progress_loses_its_lease(store, monkeypatch):
    monkeypatch.setenv("BAKEHOUSE_STALL_SECONDS", "30")  # the lease stays 60 s
    monkeypatch.setattr("repo_store.jobs.process_alive", lambda pid: True)  # as if on another machine
    clock = FakeClock()
    job = Job(store.storage, store.storage.path("protocol", "hung"), "stim", clock=clock)
    working = job.claim("busy")
    for _ in range(5):  # progress keeps the lease, well past its 60 s: each wake-up of the keep-alive beats
        clock.advance(20)
        working.touch()
        assert working.beat_if_progressing()
    assert job.status().status == "running" and not job.status().stalled
    clock.advance(31)  # hung: no touch, so no heartbeat
    assert not working.beat_if_progressing()
    assert job.status().stalled and job.status().status == "running"
    clock.advance(30)
    assert job.status().status == "failed"
    assert job.claim("rescuer") is not None


def test_download_links_are_presigned_on_s3_and_signed_tokens_locally(store):
    import httpx

    from repo_store.downloads import LinkRefused

    path = store.storage.path("some", "adapter.tar.gz")
    store.storage.write_bytes(path, b"weights")
    signer = store.downloads
    if store.storage.is_local:
        assert signer.presigned_url(path, 60) is None
        token = signer.token(path, 60, now=1000.0)
        assert signer.verify(token, now=1059.0) == path
        with pytest.raises(LinkRefused, match="expired"):
            signer.verify(token, now=1061.0)
        for forged in (token[:-1] + ("0" if token[-1] != "0" else "1"), "ünïcode.ß", "", "."):
            with pytest.raises(LinkRefused, match="not valid"):
                signer.verify(forged, now=1000.0)
        assert Store(store.url).downloads.verify(token, now=1000.0) == path  # another process signs alike
    else:
        url = signer.presigned_url(path, 60)
        assert "Signature" in url or "X-Amz-Signature" in url
        assert httpx.get(url).content == b"weights"


def test_parts_have_typed_columns_that_round_trip_open_messages_exactly():
    """Tool calls, list content, names and null content survive the typed message columns; any
    Parquet reader sees nested columns, not JSON text to parse."""
    import polars as pl
    import pyarrow.parquet as pq

    from repo_store.parts import messages_from_column, write_part

    teacher = [
        {"role": "system", "content": "You are a pirate with tools."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Nassau?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Nassau\"}"}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "weather"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    row = {"unconditioned_stimulus": {"messages": teacher, "tools": [{"type": "function", "function": {"name": "weather"}}]},
           "conditioned_stimulus": {"messages": teacher[1:]}, "stimulus_id": 0, "trajectory_id": 0, "model": "m",
           "temperature": 0.7, "seed": 9, "finish_reason": "stop", "tokens": 2,
           "response": {"role": "assistant", "content": "Arr", "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}}
    failed = {**row, "trajectory_id": 1, "response": None, "finish_reason": None, "error": "too long"}
    data, _ = write_part([rows_to_table([row, failed], ["stimulus_id", "trajectory_id"], token_columns=True)])
    table = pq.read_table(io.BytesIO(data))
    assert [messages_from_column(v) for v in table.column("teacher_messages").to_pylist()] == [teacher, teacher]
    assert json.loads(table.column("row").to_pylist()[0]) == row  # Bread's row, unchanged
    frame = pl.read_parquet(io.BytesIO(data))
    assert frame.schema["response"] == pl.Struct({"role": pl.String, "content": pl.String, "usage": pl.Struct(
        {"prompt_tokens": pl.Int64, "completion_tokens": pl.Int64, "total_tokens": pl.Int64})})
    assert frame["question"].to_list() == ["And tomorrow?"] * 2
    assert frame.select(pl.col("response").struct.field("usage").struct.field("total_tokens")).to_series().to_list() == [7, None]
    assert frame["error"].to_list() == [None, "too long"]
    assert frame.select(pl.col("teacher_messages").list.get(2).struct.field("extra")).to_series()[0].startswith('{"tool_calls"')


def test_parts_written_as_json_rows_only_are_still_served(store):
    """Jobs written before the typed and token columns existed: pages come from `row`, and the token
    columns read as null."""
    import pyarrow as pa

    job = protocol_job(store)
    attempt = job.claim("me")
    job.create_plan(plan(1, 3))
    rows = [{"stimulus_id": i, "response": {"role": "assistant", "content": f"old {i}"}} for i in range(3)]
    old = pa.table({"stimulus_id": pa.array([0, 1, 2], pa.int64()),
                    "row": pa.array([json.dumps(r) for r in rows], pa.large_string())})
    attempt.commit_chunk(0, old)
    attempt.complete(1, {})
    served = page(store, job, offset=1, limit=2, include_tokens=True)
    assert [r["response"]["content"] for r in served.rows] == ["old 1", "old 2"]
    assert served.tokens == {"response_token_ids": [None, None], "teacher_top_ids": [None, None],
                             "teacher_top_logprobs": [None, None]}
    assert [json.loads(text)["stimulus_id"] for text in served.rows_json_with_tokens()] == [1, 2]


def test_a_job_resumed_across_an_upgrade_that_added_columns_still_completes(store):
    """Chunks of an older layout (ids and `row` only) and of today's (typed and token columns) make
    one compacted part with every column; the old rows read null where they have none."""
    import pyarrow as pa

    job = protocol_job(store)
    attempt = job.claim("me")
    job.create_plan(plan(2, 4))
    old = pa.table({"stimulus_id": pa.array([0, 1], pa.int64()),
                    "row": pa.array([json.dumps({"stimulus_id": i}) for i in (0, 1)], pa.large_string())})
    attempt.commit_chunk(0, old)
    new_rows = [{"stimulus_id": i, "response_token_ids": [i, 7]} for i in (2, 3)]
    attempt.commit_chunk(1, rows_to_table(new_rows, ["stimulus_id"], token_columns=True))
    attempt.complete(2, {})
    (part,) = job.committed_parts()
    served = page(store, job, offset=0, limit=4, include_tokens=True)
    assert [r["stimulus_id"] for r in served.rows] == [0, 1, 2, 3]
    assert served.tokens["response_token_ids"] == [None, None, [2, 7], [3, 7]]
    assert part.rows == 4 and len(store.storage.fs.ls(f"{job.folder}/parts")) == 3  # 2 chunks + 1 compacted

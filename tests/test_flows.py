"""Stim and rollout jobs end to end on the fake engine (fast); the real engine is in test_real_engine."""

from __future__ import annotations

import time

import polars as pl
import pytest

from flows.engines import EngineError
from flows.engines.fake import FakeEngine
from flows.rollout import run_rollout
from flows.stim import run_stim
from repo_store import Store
from targets import InvalidInput, PromptSpec, RepoSpec, TargetSpec


class CountingEngines:
    """Engines stand-in: one FakeEngine, counting requests; optionally dies after `crash_after` results."""

    def __init__(self, crash_after: int | None = None, **options):
        self.engine = FakeEngine(**options)
        self.requests = 0
        self.crash_after = crash_after

    def __call__(self, model, **options):
        outer = self

        class Wrapped:
            def generate(self, requests):
                def counted():
                    for request in requests:
                        outer.requests += 1
                        yield request

                for produced, result in enumerate(outer.engine.generate(counted()), start=1):
                    yield result
                    if outer.crash_after is not None and produced >= outer.crash_after:
                        raise RuntimeError("worker died")

        return Wrapped()


def setup_target(ws, generators, name="t", **overrides):
    ws.create_repo(RepoSpec(repo_name="r", base_model="fake"))
    ws.create_prompt("r", PromptSpec(prompt_name="teacher", messages=[{"role": "system", "content": "Answer like a pirate."}]))
    ws.create_prompt("r", PromptSpec(prompt_name="student", messages=[]))
    ws.create_target(
        "r",
        TargetSpec(
            target_name=name,
            overrides={"teacher_prompt": "teacher", "student_prompt": "student", "generators": generators,
                       "model_name": "fake", **overrides},
        ),
    )


def questions(n, prefix="q"):
    return [f"{prefix} {i}?" for i in range(n)]


def test_stim_dedups_across_generators_and_reports_it(store, tmp_path):
    ws = store.workspace()
    dataset = tmp_path / "qs.parquet"
    pl.DataFrame({"question": questions(30, "d") + ["a 1?"]}).write_parquet(dataset)
    setup_target(
        ws,
        [
            {"type": "hardcoded", "questions": questions(5, "a")},
            {"type": "hardcoded", "questions": ["a 1?", "a 2?", "new?"]},
            {"type": "from_dataset", "dataset": str(dataset), "numq": 31, "seed": 3},
            {"type": "persona", "numq": 4},
        ],
    )
    status = run_stim(ws, "r", "t", engines=CountingEngines())
    assert status.status == "complete"
    rows = list(ws.job("r", "t", "stim").iter_rows())
    asked = [r["conditioned_stimulus"]["messages"][-1]["content"] for r in rows]
    assert len(asked) == len(set(asked)) == status.lines
    assert [r["stimulus_id"] for r in rows] == list(range(len(rows)))
    assert status.summary["duplicates_dropped"] == 3  # a 1?, a 2? (generator 1) and a 1? (dataset)
    assert asked[:6] == questions(5, "a") + ["new?"]
    assert rows[0]["unconditioned_stimulus"]["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    assert rows[0]["conditioned_stimulus"]["messages"] == [{"role": "user", "content": "a 0?"}]


def test_oneshot_shortfall_is_reported_not_hidden(store):
    ws = store.workspace()
    setup_target(ws, [{"type": "oneshot_qs", "numq": 60}])
    status = run_stim(ws, "r", "t", engines=CountingEngines())
    assert status.status == "complete"
    # The fake model writes one line per request, so 3 requests a round give 3 questions a round.
    assert 0 < status.lines < 60
    assert any("made" in note and "of 60" in note for note in status.summary["shortfalls"])


def test_missing_dataset_fails_the_job_with_advice(store, monkeypatch):
    monkeypatch.delenv("BAKEHOUSE_DATASETS_URL", raising=False)
    ws = store.workspace()
    setup_target(ws, [{"type": "from_dataset", "dataset": "gsm8k", "numq": 5}])
    with pytest.raises(InvalidInput):
        run_stim(ws, "r", "t", engines=CountingEngines())
    status = ws.job("r", "t", "stim").status()
    assert status.status == "failed" and "BAKEHOUSE_DATASETS_URL" in status.error


@pytest.mark.parametrize(
    ("dataset", "column"),
    [("gsm8k", "question"), ("squad", "question"), ("mmlu", "question"), ("hellaswag", "ctx"),
     ("code_contests", "description"), ("math_problems", "problem")],
)
def test_named_datasets_read_their_own_question_column(store, tmp_path, monkeypatch, dataset, column):
    # A decoy column that the generic fallback would pick first if the named column were ignored.
    frame = {column: questions(4, dataset)} | ({} if column == "prompt" else {"prompt": ["decoy?"] * 4})
    pl.DataFrame(frame).write_parquet(tmp_path / f"{dataset}.parquet")
    monkeypatch.setenv("BAKEHOUSE_DATASETS_URL", str(tmp_path))
    ws = store.workspace()
    setup_target(ws, [{"type": "from_dataset", "dataset": dataset, "numq": 4}])
    run_stim(ws, "r", "t", engines=CountingEngines())
    stimuli = [r["conditioned_stimulus"]["messages"][-1]["content"] for r in ws.job("r", "t", "stim").iter_rows()]
    assert sorted(stimuli) == sorted(questions(4, dataset))


def test_rollout_rows_have_bread_shape_and_are_reproducible(store):
    ws = store.workspace()
    setup_target(ws, [{"type": "hardcoded", "questions": questions(10)}], num_traj_per_stimulus=3, max_tokens=12)
    setup_target(ws, [{"type": "hardcoded", "questions": questions(10)}], name="twin", num_traj_per_stimulus=3, max_tokens=12)
    for name in ("t", "twin"):
        run_stim(ws, "r", name, engines=CountingEngines())
        status = run_rollout(ws, "r", name, engines=CountingEngines(), chunk_size=4)
        assert (status.status, status.lines, status.total_expected) == ("complete", 30, 30)
    rows = ws.read_page("r", "t", "rollout", offset=0, limit=1000).rows
    twin = ws.read_page("r", "twin", "rollout", offset=0, limit=1000).rows
    assert rows == twin  # same config, same seeds, same rows
    assert [(r["stimulus_id"], r["trajectory_id"]) for r in rows] == [(s, t) for s in range(10) for t in range(3)]
    first = rows[0]
    assert first["response"]["role"] == "assistant" and first["response"]["content"]
    usage = first["response"]["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert first["conditioned_stimulus"]["messages"] == [{"role": "user", "content": "q 0?"}]
    assert first["unconditioned_stimulus"]["messages"][0]["role"] == "system"
    assert {"model", "temperature", "seed", "finish_reason"} <= set(first)
    assert len({r["response"]["content"] for r in rows[:3]}) > 1  # n distinct samples of one stimulus


def test_rollout_parts_carry_typed_token_columns_outside_breads_row(store):
    ws = store.workspace()
    setup_target(ws, [{"type": "hardcoded", "questions": questions(6)}], num_traj_per_stimulus=2, max_tokens=8,
                 teacher_top_k=3)
    run_stim(ws, "r", "t", engines=CountingEngines())
    run_rollout(ws, "r", "t", engines=CountingEngines(fail_keys={4}), chunk_size=4)
    plain = ws.read_page("r", "t", "rollout", offset=0, limit=100)
    assert not any("response_token_ids" in row for row in plain.rows)  # Bread's row, unchanged
    rows = ws.read_page("r", "t", "rollout", offset=0, limit=100, include_tokens=True).rows
    for row in rows:
        if row.get("error"):
            assert row["response_token_ids"] is None and row["teacher_top_ids"] is None
            continue
        ids, top_ids, top_logprobs = row["response_token_ids"], row["teacher_top_ids"], row["teacher_top_logprobs"]
        assert len(ids) == row["response"]["usage"]["completion_tokens"] == len(top_ids) == len(top_logprobs)
        assert all(len(t) == 3 for t in top_ids) and [t[0] for t in top_ids] == ids
        assert all(v == sorted(v, reverse=True) and max(v) <= 0 for v in top_logprobs)
    job = ws.job("r", "t", "rollout")
    frame = pl.scan_parquet(job.parquet_urls()).collect()
    assert frame.height == 12
    assert frame.schema["response_token_ids"] == pl.List(pl.Int32)
    assert frame.schema["teacher_top_logprobs"] == pl.List(pl.List(pl.Float32))


def test_failed_trajectories_are_rows_with_errors(store):
    ws = store.workspace()
    setup_target(ws, [{"type": "hardcoded", "questions": questions(4)}], num_traj_per_stimulus=2)
    run_stim(ws, "r", "t", engines=CountingEngines())
    status = run_rollout(ws, "r", "t", engines=CountingEngines(fail_keys={2}))
    assert status.status == "complete" and status.lines == 8
    rows = ws.read_page("r", "t", "rollout", offset=0, limit=100).rows
    failed = [r for r in rows if r.get("error")]
    assert [(r["stimulus_id"], r["trajectory_id"]) for r in failed] == [(2, 0), (2, 1)]
    assert all(r["response"] is None for r in failed)


def test_rollout_before_stim_is_refused_and_leaves_no_trace(store):
    ws = store.workspace()
    setup_target(ws, [{"type": "hardcoded", "questions": questions(2)}])
    with pytest.raises(InvalidInput, match="Stim job must complete before running rollout"):
        run_rollout(ws, "r", "t", engines=CountingEngines())
    assert ws.job("r", "t", "rollout").status().status == "not_started"


def test_crashed_rollout_resumes_without_redoing_or_duplicating(store):
    ws = store.workspace()
    setup_target(ws, [{"type": "hardcoded", "questions": questions(50)}], num_traj_per_stimulus=2)
    run_stim(ws, "r", "t", engines=CountingEngines())
    crashing = CountingEngines(crash_after=23)
    with pytest.raises(RuntimeError, match="worker died"):
        run_rollout(ws, "r", "t", engines=crashing, chunk_size=10)
    status = ws.job("r", "t", "rollout").status()
    assert (status.status, status.lines) == ("failed", 40)  # chunks 0 and 1 were committed
    again = CountingEngines()
    status = run_rollout(ws, "r", "t", engines=again, chunk_size=99)  # the plan's chunk size wins
    assert (status.status, status.lines) == ("complete", 100)
    assert again.requests == 30  # only the 30 stimuli of uncommitted chunks were asked again
    rows = ws.read_page("r", "t", "rollout", offset=0, limit=1000).rows
    keys = [(r["stimulus_id"], r["trajectory_id"]) for r in rows]
    assert keys == [(s, t) for s in range(50) for t in range(2)]


def test_repeated_runs_do_nothing_new(store):
    ws = store.workspace()
    setup_target(ws, [{"type": "hardcoded", "questions": questions(3)}])
    run_stim(ws, "r", "t", engines=CountingEngines())
    run_rollout(ws, "r", "t", engines=CountingEngines())
    engines = CountingEngines()
    assert run_stim(ws, "r", "t", engines=engines).status == "complete"
    assert run_rollout(ws, "r", "t", engines=engines).status == "complete"
    assert engines.requests == 0


class ThreadLauncher:
    """Runs each shard in a thread, as a deployment would in a flow run; `crash_first` shards die once."""

    def __init__(self, ws, crash_first=()):
        import threading

        self.ws, self.crash_first, self.launches, self.tokens = ws, set(crash_first), [], set()
        self._threading = threading

    def launch(self, shard, job_gen, launch_number, attempt_token):
        from flows.rollout import run_rollout_shard

        self.launches.append((shard, launch_number))
        self.tokens.add(attempt_token)
        crash = shard in self.crash_first and launch_number == 1
        engines = CountingEngines(crash_after=7 if crash else None)

        def work():
            try:
                run_rollout_shard(self.ws, "r", "t", shard=shard, job_gen=job_gen, engines=engines)
            except RuntimeError:
                pass  # the "worker" died; the supervisor notices from storage

        thread = self._threading.Thread(target=work)
        thread.start()
        return thread

    def finished(self, handle):
        return not handle.is_alive()


def test_sharded_rollout_relaunches_a_dead_shard_and_keeps_its_chunks(store, monkeypatch):
    monkeypatch.setattr("flows.rollout.SUPERVISE_SECONDS", 0.05)
    ws = store.workspace()
    setup_target(ws, [{"type": "hardcoded", "questions": questions(100)}], num_traj_per_stimulus=2)
    run_stim(ws, "r", "t", engines=CountingEngines())
    launcher = ThreadLauncher(ws, crash_first={1})
    status = run_rollout(ws, "r", "t", engines=CountingEngines(), chunk_size=5, launcher=launcher, stimuli_per_shard=30)
    assert (status.status, status.lines, status.summary["shards"]) == ("complete", 200, 4)
    assert sorted(launcher.launches) == [(0, 1), (1, 1), (1, 2), (2, 1), (3, 1)]
    assert len(launcher.tokens) == 1  # every launch came from the one supervising attempt
    job = ws.job("r", "t", "rollout")
    keys = [(r["stimulus_id"], r["trajectory_id"]) for r in job.iter_rows()]
    assert keys == [(s, t) for s in range(100) for t in range(2)]
    # The crashed shard's first launch committed one chunk (5 stimuli) before dying; it was kept.
    shard_one = [c for i, c in job.chunks().items() if 6 <= i < 12]
    assert sum(1 for c in shard_one if c.gen == 1) == 1 and sum(1 for c in shard_one if c.gen == 2) == 5
    # The statistics count what the shards generated, as the same rollout run in one process does.
    setup_target(ws, [{"type": "hardcoded", "questions": questions(100)}], name="solo", num_traj_per_stimulus=2)
    run_stim(ws, "r", "solo", engines=CountingEngines())
    solo = run_rollout(ws, "r", "solo", engines=CountingEngines(), chunk_size=5).summary
    sharded = status.summary
    for name in ("requests", "trajectories", "errors", "prompt_tokens", "completion_tokens", "trajectories_this_attempt"):
        assert sharded[name] == solo[name], name
    assert sharded["trajectories"] == 200 and sharded["completion_tokens"] > 0 and sharded["trajectories_per_second"] > 0
    assert sharded["requests"] == 100 and sharded["engine_seconds"] > 0 and sharded["latency_ms"]["p50"] is not None


def test_cancel_keeps_finished_rows_and_a_later_run_resumes(store):
    import threading

    ws = store.workspace()
    setup_target(ws, [{"type": "hardcoded", "questions": questions(60)}])
    run_stim(ws, "r", "t", engines=CountingEngines())
    job = ws.job("r", "t", "rollout")
    errors = []

    def slow_rollout():
        try:
            run_rollout(ws, "r", "t", engines=CountingEngines(delay=0.02), chunk_size=5)
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    thread = threading.Thread(target=slow_rollout)
    thread.start()
    deadline = time.monotonic() + 30
    while len(job.chunks()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert job.request_cancel() == 1
    thread.join(timeout=30)
    status = job.status()
    assert (status.status, status.error) == ("failed", "cancelled")
    assert 10 <= status.lines < 60 and len(errors) == 1
    page = ws.read_page("r", "t", "rollout", offset=0, limit=100)
    assert len(page.rows) == status.lines  # finished rows are published
    again = CountingEngines()
    assert run_rollout(ws, "r", "t", engines=again).status == "complete"
    assert again.requests == 60 - status.lines
    assert [r["stimulus_id"] for r in job.iter_rows()] == list(range(60))


def test_shard_launches_are_idempotent_per_attempt_not_per_name(monkeypatch):
    import prefect.deployments

    from flows.deployments import DeploymentShardLauncher
    from flows.params import TargetJob

    keys = []
    monkeypatch.setattr(prefect.deployments, "run_deployment",
                        lambda name, **kwargs: keys.append(kwargs["idempotency_key"]) or type("Run", (), {"id": len(keys)}))
    launcher = DeploymentShardLauncher(TargetJob(repo_name="r", target_name="t"))
    launcher.launch(0, 1, 1, "token-a")
    launcher.launch(0, 1, 1, "token-a")  # the same launch again: the same flow run
    launcher.launch(0, 1, 1, "token-b")  # same names and generation, another target (or data folder)
    assert keys[0] == keys[1] != keys[2]


def test_damaged_chunk_is_regenerated_not_served(store):
    ws = store.workspace()
    setup_target(ws, [{"type": "hardcoded", "questions": questions(30)}], num_traj_per_stimulus=2)
    run_stim(ws, "r", "t", engines=CountingEngines())
    with pytest.raises(RuntimeError):
        run_rollout(ws, "r", "t", engines=CountingEngines(crash_after=12), chunk_size=5)
    job = ws.job("r", "t", "rollout")
    damaged = job.chunks()[1]
    path = job.part_path(damaged.part)
    store.storage.write_bytes(path, store.storage.read_bytes(path)[:-40])  # truncated on storage
    again = CountingEngines()
    status = run_rollout(ws, "r", "t", engines=again)
    assert (status.status, status.lines) == ("complete", 60)
    assert job.chunks()[1].gen == 2 and job.chunks()[0].gen == 1  # redone; the healthy chunk kept
    assert again.requests == 30 - 10 + 5  # the missing chunks plus the damaged one
    rows = ws.read_page("r", "t", "rollout", offset=0, limit=1000).rows
    assert [(r["stimulus_id"], r["trajectory_id"]) for r in rows] == [(s, t) for s in range(30) for t in range(2)]


def test_several_damaged_stim_chunks_are_all_regenerated_in_one_run(store):
    ws = store.workspace()
    generators = [{"type": "hardcoded", "questions": questions(3, prefix=f"g{g}")} for g in range(5)]
    setup_target(ws, generators)
    assert run_stim(ws, "r", "t", engines=CountingEngines()).status == "complete"
    job = ws.job("r", "t", "stim")
    expected = [(r["stimulus_id"], r["unconditioned_stimulus"]["messages"][-1]["content"]) for r in job.iter_rows()]
    # As after a crash before the manifest, with chunks 0, 2 and 3 damaged and 4 missing; then a new
    # process (a fresh Store) starts the job again.
    store.storage.delete_tree(job.layout.manifest)
    for index in (0, 2, 3):
        path = job.part_path(job.chunks()[index].part)
        store.storage.write_bytes(path, store.storage.read_bytes(path)[:-30])
    store.storage.delete_tree(job.layout.chunk(4))
    ws = Store(store.storage.url).workspace()
    job = ws.job("r", "t", "stim")
    status = run_stim(ws, "r", "t", engines=CountingEngines())
    assert (status.status, status.lines) == ("complete", 15)
    assert [(r["stimulus_id"], r["unconditioned_stimulus"]["messages"][-1]["content"]) for r in job.iter_rows()] == expected


def test_a_redone_stim_chunk_that_comes_out_differently_realigns_the_chunks_after_it(store, monkeypatch):
    import dataclasses

    import flows.stim

    ws = store.workspace()
    setup_target(ws, [{"type": "hardcoded", "questions": questions(4, prefix="a")},
                      {"type": "hardcoded", "questions": questions(3, prefix="b")},
                      {"type": "hardcoded", "questions": questions(3, prefix="c")}])
    run_stim(ws, "r", "t", engines=CountingEngines())
    job = ws.job("r", "t", "stim")
    # Chunk 0 lost before the manifest; generated again, the "model" now writes 3 questions, one of
    # which generator 1 had asked.
    store.storage.delete_tree(job.layout.manifest)
    store.storage.delete_tree(job.layout.chunk(0))
    original = flows.stim.run_generator

    def answers_differently(generator, *, index, **kwargs):
        output = original(generator, index=index, **kwargs)
        return dataclasses.replace(output, questions=["a 0?", "a 1?", "b 0?"]) if index == 0 else output

    monkeypatch.setattr(flows.stim, "run_generator", answers_differently)
    ws = Store(store.storage.url).workspace()
    status = run_stim(ws, "r", "t", engines=CountingEngines())
    rows = list(ws.job("r", "t", "stim").iter_rows())
    assert status.lines == len(rows) == 8
    assert [r["stimulus_id"] for r in rows] == list(range(8))
    assert [r["unconditioned_stimulus"]["messages"][-1]["content"] for r in rows] == [
        "a 0?", "a 1?", "b 0?", "b 1?", "b 2?", "c 0?", "c 1?", "c 2?"]


def test_storage_outage_fails_the_job_clearly_then_it_resumes(store, monkeypatch):
    from botocore.exceptions import EndpointConnectionError

    ws = store.workspace()
    setup_target(ws, [{"type": "hardcoded", "questions": questions(40)}])
    run_stim(ws, "r", "t", engines=CountingEngines())
    real_write = store.storage.write_bytes
    writes = {"parts": 0}
    outage = {"on": False}

    def flaky(path, data):
        if "/parts/" in path:
            writes["parts"] += 1
            outage["on"] = outage["on"] or writes["parts"] > 2
        if outage["on"]:  # the whole store is unreachable, as S3 behind a dead network is
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        return real_write(path, data)

    real_create = store.storage.create_json

    def flaky_create(path, obj):
        if outage["on"]:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        return real_create(path, obj)

    monkeypatch.setattr(store.storage, "write_bytes", flaky)
    monkeypatch.setattr(store.storage, "create_json", flaky_create)
    with pytest.raises(EndpointConnectionError):
        run_rollout(ws, "r", "t", engines=CountingEngines(), chunk_size=5)
    monkeypatch.undo()
    status = ws.job("r", "t", "rollout").status()
    # Not even the failure could be written; the ended attempt still does not block a restart.
    assert status.status == "failed" and status.lines == 10
    again = CountingEngines()
    assert run_rollout(ws, "r", "t", engines=again).status == "complete"
    assert again.requests == 30
    assert [r["stimulus_id"] for r in ws.job("r", "t", "rollout").iter_rows()] == list(range(40))


def test_a_target_deleted_and_created_again_never_sees_the_old_output(store):
    ws = store.workspace()
    setup_target(ws, [{"type": "hardcoded", "questions": questions(5, "old")}])
    run_stim(ws, "r", "t", engines=CountingEngines())
    assert ws.read_page("r", "t", "stim", offset=0, limit=10).rows[0]["conditioned_stimulus"]["messages"][-1]["content"] == "old 0?"
    ws.delete_target("r", "t")
    ws.create_target("r", TargetSpec(target_name="t", overrides={
        "teacher_prompt": "teacher", "student_prompt": "student", "model_name": "fake",
        "generators": [{"type": "hardcoded", "questions": questions(3, "new")}]}))
    assert ws.job("r", "t", "stim").status().status == "not_started"
    run_stim(ws, "r", "t", engines=CountingEngines())
    rows = ws.read_page("r", "t", "stim", offset=0, limit=10).rows  # same Store: its caches too
    assert [r["conditioned_stimulus"]["messages"][-1]["content"] for r in rows] == questions(3, "new")


def test_an_engine_that_fails_everything_fails_the_job_instead_of_publishing_errors(store):
    ws = store.workspace()
    setup_target(ws, [{"type": "hardcoded", "questions": questions(12)}])
    run_stim(ws, "r", "t", engines=CountingEngines())
    with pytest.raises(EngineError, match="every request of chunk 0 failed"):
        run_rollout(ws, "r", "t", engines=CountingEngines(fail_keys=range(12)), chunk_size=6)
    status = ws.job("r", "t", "rollout").status()
    assert status.status == "failed" and "simulated failure" in status.error and status.lines == 0
    assert run_rollout(ws, "r", "t", engines=CountingEngines()).status == "complete"  # engine back: resumes


def test_sources_inside_bakehouse_storage_or_outside_allowed_roots_are_refused(store, tmp_path, monkeypatch):
    ws = store.workspace()
    setup_target(ws, [{"type": "hardcoded", "questions": questions(3)}])
    run_stim(ws, "r", "t", engines=CountingEngines())
    stolen = ws.job("r", "t", "stim").committed_parts()[0]
    inside = store.storage.url_for(ws.job("r", "t", "stim").part_path(stolen))  # another target's output
    setup_target(ws, [{"type": "from_dataset", "dataset": inside, "column": "row", "numq": 1}], name="thief")
    with pytest.raises(InvalidInput, match="inside bakehouse's own storage"):
        run_stim(ws, "r", "thief", engines=CountingEngines())
    outside = tmp_path / "q.csv"
    outside.write_text("question\nfrom outside?\n")
    monkeypatch.setenv("BAKEHOUSE_SOURCE_ROOTS", str(tmp_path / "allowed"))
    setup_target(ws, [{"type": "from_dataset", "dataset": str(outside), "numq": 1}], name="elsewhere")
    with pytest.raises(InvalidInput, match="BAKEHOUSE_SOURCE_ROOTS"):
        run_stim(ws, "r", "elsewhere", engines=CountingEngines())
    monkeypatch.setenv("BAKEHOUSE_SOURCE_ROOTS", str(tmp_path))
    setup_target(ws, [{"type": "from_dataset", "dataset": str(outside), "numq": 1}], name="allowed")
    assert run_stim(ws, "r", "allowed", engines=CountingEngines()).lines == 1


def test_rollout_storage_listings_do_not_grow_with_the_number_of_chunks(store, monkeypatch):
    """Committing a chunk, reporting progress and compacting read markers directly: a LIST per chunk
    would make a million-stimulus rollout on S3 quadratic."""
    monkeypatch.setenv("BAKEHOUSE_ROLLOUT_CHUNK", "2")
    listings: dict[str, int] = {}
    for method in ("list_names", "list_versions"):  # either one is a LIST on S3
        original = getattr(type(store.storage), method)

        def counting(storage, folder, original=original):
            leaf = folder.rstrip("/").rsplit("/", 1)[-1]
            listings[leaf] = listings.get(leaf, 0) + 1
            return original(storage, folder)

        monkeypatch.setattr(type(store.storage), method, counting)
    counts = {}
    for name, stimuli in (("small", 8), ("large", 80)):  # 4 and 40 chunks
        ws = store.workspace()
        setup_target(ws, [{"type": "hardcoded", "questions": questions(stimuli)}], name=name, num_traj_per_stimulus=2)
        run_stim(ws, "r", name, engines=CountingEngines())
        listings.clear()
        status = run_rollout(ws, "r", name, engines=CountingEngines())
        assert (status.status, status.lines) == ("complete", stimuli * 2)
        counts[name] = listings.get("chunks", 0)
    assert 0 < counts["small"] == counts["large"], counts  # 0 would mean the listings went uncounted


def _stim_rows(first_id, questions_asked):
    return [{"stimulus_id": first_id + i, "conditioned_stimulus": {"messages": [{"role": "user", "content": q}]}}
            for i, q in enumerate(questions_asked)]


def test_the_stim_cursor_keeps_a_later_chunk_only_while_it_lines_up():
    from flows.stim import StimCursor

    cursor = StimCursor().after(_stim_rows(0, ["a?", "b?"]))
    assert (cursor.next_id, cursor.seen) == (2, frozenset({"a?", "b?"}))
    assert cursor.lines_up(_stim_rows(2, ["c?"]))  # ids follow on, nothing asked twice
    assert cursor.lines_up([])  # a generator that made nothing new
    assert not cursor.lines_up(_stim_rows(3, ["c?"]))  # the redone chunk before it came out longer
    assert not cursor.lines_up(_stim_rows(2, ["b?"]))  # ...or now holds one of its questions
    assert cursor.fresh(["b?", "c?", "c?", "d?"]) == ["c?", "d?"]  # in order, once, none asked before

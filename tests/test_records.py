"""The job protocol's records: what earlier versions wrote is still read; what a newer or broken
writer left is refused by name, never misread."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows.rollout import run_rollout
from repo_store import Store
from repo_store.parts import PartInfo
from repo_store.records import (BakePlan, CheckpointMarker, ChunkMarker, Claim, Failure, Heartbeat, JobLayout, LiveStep,
                                Manifest, RecordError, RolloutPlan, Stamp, StimPlan)
from repo_store.timeline import read_timeline
from test_flows import CountingEngines

# A workspace as bakehouse 0.1.0 left it, before records were versioned: a finished stim (two
# generators, 10 stimuli) and a rollout (10 stimuli x 2, chunks of 4) that died after chunk 0.
FIXTURE = Path(__file__).parent / "fixtures" / "protocol-0.1.0"


@pytest.fixture
def old_workspace(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "data")
    return Store(str(tmp_path / "data")).workspace()


def test_a_workspace_written_before_versioned_records_is_read_and_its_rollout_resumes(old_workspace):
    stim = old_workspace.job("r", "t", "stim")
    status = stim.status()
    assert (status.status, status.lines, status.total_expected) == ("complete", 10, 10)
    assert status.summary["stimuli"] == 10 and status.completed_at is not None
    assert [row["stimulus_id"] for row in old_workspace.read_page("r", "t", "stim", offset=0, limit=100).rows] == list(range(10))

    rollout = old_workspace.job("r", "t", "rollout")
    assert (rollout.status().status, rollout.status().lines) == ("failed", 8)
    assert rollout.plan() == RolloutPlan(num_chunks=3, stimuli=10, stimuli_per_chunk=4, chunks_per_shard=3, total_expected=20)
    assert [event.phase for event in read_timeline(rollout)] == ["starting", "failed"]

    engines = CountingEngines()
    status = run_rollout(old_workspace, "r", "t", engines=engines, chunk_size=99)  # the stored plan's size wins
    assert (status.status, status.lines, status.attempt) == ("complete", 20, 2)
    assert engines.requests == 6  # only the stimuli of the two chunks the old attempt never committed
    rows = old_workspace.read_page("r", "t", "rollout", offset=0, limit=100).rows
    assert [(r["stimulus_id"], r["trajectory_id"]) for r in rows] == [(s, t) for s in range(10) for t in range(2)]
    assert rollout.chunk(0).gen == 1 and rollout.chunk(1).gen == 2  # the old chunk was kept, not redone


def test_a_record_from_a_newer_writer_is_refused_by_name(old_workspace):
    job = old_workspace.job("r", "t", "stim")
    path = Path(job.storage.url_for(job.layout.manifest))
    path.write_text(json.dumps({**json.loads(path.read_text()), "v": 2}))
    with pytest.raises(RecordError, match=r"manifest.json.*newer bakehouse \(record version 2"):
        old_workspace.job("r", "t", "stim").status()


def test_the_api_names_the_unreadable_record_instead_of_a_bare_internal_error(old_workspace):
    from fastapi.testclient import TestClient

    from bakehouse.api import create_app
    from runners import RecordingRunner

    store = old_workspace.store
    job = old_workspace.job("r", "t", "stim")
    path = Path(job.storage.url_for(job.layout.manifest))
    path.write_text(json.dumps({**json.loads(path.read_text()), "v": 2}))
    _, key = store.keys.create(workspace="default", scope="read")
    with TestClient(create_app(store, RecordingRunner())) as client:
        answer = client.get("/v1/repo/r/targets/t/stim", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 500 and answer.json()["code"] == "UNREADABLE_RECORD"
    assert "stim/manifest.json" in answer.json()["message"] and "upgrade bakehouse" in answer.json()["message"]


def test_a_broken_record_is_refused_not_misread(old_workspace):
    job = old_workspace.job("r", "t", "rollout")
    path = Path(job.storage.url_for(job.layout.chunk(0)))
    path.write_text(json.dumps({**json.loads(path.read_text()), "part": {"path": "parts/x.parquet"}}))
    with pytest.raises(RecordError, match=r"000000.json: unreadable chunk marker \(part.rows: Field required"):
        job.chunks()


@pytest.mark.parametrize("record", [
    Claim(gen=3, token="t", owner="rollout", host="h", pid=7, at=1.5),
    Heartbeat(at=2.0, token="t", phase="generating", phases=(("loading_model", 1.0), ("generating", 1.5)), progress_at=1.9),
    Heartbeat(at=2.0, token="t", released=True),
    Failure(error="boom", at=3.0, summary={"seconds": 1}),
    Stamp(at=4.0),
    ChunkMarker(index=12, part=PartInfo(path="parts/p.parquet", rows=3, bytes=100, row_groups=[3]), gen=2, token="t",
                stats={"requests": 3}, at=5.0),
    Manifest(kind="rollout", gen=2, lines=3, parts=[PartInfo(path="parts/p.parquet", rows=3, bytes=100, row_groups=[3])],
             summary={"seconds": 1.0}, completed_at=6.0),
    StimPlan(num_chunks=2, total_expected=20),
    RolloutPlan(num_chunks=5, total_expected=40, stimuli=20, stimuli_per_chunk=4, chunks_per_shard=2),
    BakePlan(total_steps=48, trajectories=160, parent_model="smollm2-135m"),
    CheckpointMarker(step=4, folder="00000004-g000001-ab", files={"adapter_model.safetensors": 10}, gen=1, token="t",
                     metrics=[{"iter": 4, "loss": 0.5}]),
    LiveStep(step=5, total_steps=48, loss=0.25),
])
def test_every_record_reads_back_what_was_written_through_json(record):
    data = json.loads(json.dumps(record.to_json()))
    assert data["v"] == 1
    assert type(record).from_json(data) == record


def test_rollout_plans_split_chunks_into_shards():
    plan = RolloutPlan(num_chunks=5, total_expected=40, stimuli=20, stimuli_per_chunk=4, chunks_per_shard=2)
    assert plan.shards() == [range(0, 2), range(2, 4), range(4, 5)]


def test_the_layout_names_every_protocol_path_once():
    layout = JobLayout("ws/jobs/x/rollout")
    assert layout.claim(3) == "ws/jobs/x/rollout/claims/000003.json"
    assert layout.heartbeat(3, "shard-00001") == "ws/jobs/x/rollout/shards/shard-00001/heartbeats/000003.json"
    assert layout.failure(2) == "ws/jobs/x/rollout/failures/000002.json"
    assert layout.chunk(12) == "ws/jobs/x/rollout/chunks/000012.json"
    assert (layout.manifest, layout.plan) == ("ws/jobs/x/rollout/manifest.json", "ws/jobs/x/rollout/plan.json")
    assert JobLayout.chunk_part_name(12, 3, "ab") == "parts/000012-g000003-ab.parquet"


def test_only_canonical_record_names_are_numbered():
    from repo_store.records import numbered

    listing = ["000002.json", "000010.json", "12.json", "0000003.json", "x.json", "000004.json.tmp", "00000008.json"]
    assert numbered(listing) == [2, 10]
    assert numbered(listing, width=8) == [8]  # a bake's checkpoint markers


def test_a_diverged_loss_stays_nan_on_storage_not_null():
    import math

    marker = CheckpointMarker(step=2, folder="f", files={}, gen=1, metrics=[{"loss": float("nan"), "grad_norm": float("inf")}])
    back = CheckpointMarker.from_json(json.loads(json.dumps(marker.to_json())))
    assert math.isnan(back.metrics[0]["loss"]) and back.metrics[0]["grad_norm"] == float("inf")


def test_a_claim_listed_but_gone_when_read_reads_as_expired_and_the_next_attempt_takes_over(old_workspace, monkeypatch):
    job = old_workspace.job("r", "t", "rollout")
    Path(job.storage.url_for(job.layout.failure(1))).unlink()  # so only the claim can say it is over
    claim_path, read_bytes = job.layout.claim(1), type(job.storage).read_bytes
    # Deleted between the listing and the read (an eventually consistent store): listed, reads as None.
    monkeypatch.setattr(type(job.storage), "read_bytes", lambda s, path: None if path == claim_path else read_bytes(s, path))
    status = job.status()
    assert (status.status, status.attempt) == ("failed", 1)  # resumable, as before records: not "not_started"
    attempt = job.claim("rescuer")
    assert attempt is not None and attempt.gen == 2


def test_a_record_that_is_not_json_is_refused_by_name(old_workspace):
    job = old_workspace.job("r", "t", "rollout")
    Path(job.storage.url_for(job.layout.claim(1))).write_text("{half a clai")
    with pytest.raises(RecordError, match=r"claims/000001.json: unreadable claim \(not JSON"):
        job.status()

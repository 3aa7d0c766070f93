"""Stim and rollout on the real engine: in-process vLLM on the tiny model built in code.

One engine is shared by the module (start-up is the expensive part). The crash test runs a rollout in
a child process, SIGKILLs it mid-job and resumes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from flows.rollout import run_rollout
from flows.stim import run_stim
from repo_store import Store
from targets import PromptSpec, RepoSpec, TargetSpec

pytestmark = pytest.mark.vllm


class SharedEngine:
    """`Engines` stand-in handing the module's engine to the flows (and never closing it)."""

    def __init__(self, engine):
        self.engine = engine

    def __call__(self, model, **options):
        assert model == "tiny-random"
        return self.engine


@pytest.fixture(scope="module")
def engines():
    from flows.engines import open_engine

    engine = open_engine("tiny-random", kv_cache_bytes=64 * 2**20)
    try:
        yield SharedEngine(engine)
    finally:
        engine.close()


def make_target(ws, name, generators, **overrides):
    ws.create_repo(RepoSpec(repo_name="r", base_model="tiny-random"))
    ws.create_prompt("r", PromptSpec(prompt_name="teacher", messages=[{"role": "system", "content": "You are a pirate."}]))
    ws.create_prompt("r", PromptSpec(prompt_name="student", messages=[]))
    ws.create_target("r", TargetSpec(target_name=name, overrides={
        "teacher_prompt": "teacher", "student_prompt": "student", "model_name": "tiny-random",
        "generators": generators, **overrides,
    }))


def test_every_generator_type_on_the_real_model(tmp_path, engines):
    import polars as pl

    dataset = tmp_path / "questions.jsonl"
    pl.DataFrame({"prompt": [f"dataset question {i}?" for i in range(40)]}).write_ndjson(dataset)
    ws = Store(str(tmp_path / "data")).workspace()
    make_target(ws, "gens", [
        {"type": "hardcoded", "questions": ["What is bread?", "Why bake?"]},
        {"type": "from_dataset", "dataset": str(dataset), "numq": 10, "seed": 1},
        {"type": "persona", "numq": 6, "max_tokens": 16},
        {"type": "oneshot_qs", "numq": 5, "max_tokens": 64},
    ])
    status = run_stim(ws, "r", "gens", engines=engines)
    assert status.status == "complete"
    rows = list(ws.job("r", "gens", "stim").iter_rows())
    by_generator = {g: sum(1 for r in rows if r["generator"] == g) for g in range(4)}
    assert by_generator[0] == 2 and by_generator[1] == 10
    assert by_generator[2] == 6  # the tiny model always writes something, so personas never fall short
    assert 1 <= by_generator[3] <= 5
    asked = [r["conditioned_stimulus"]["messages"][-1]["content"] for r in rows]
    assert len(set(asked)) == len(asked)


def test_rollout_n_trajectories_reproducible_over_a_big_batch(tmp_path, engines):
    ws = Store(str(tmp_path / "data")).workspace()
    # 300 stimuli of ~20 prompt tokens: well over vLLM's 4096-token batch budget at once.
    questions = [f"Tell me, matey, about the treasure number {i} and the ship that carried it?" for i in range(300)]
    for name in ("first", "second"):
        make_target(ws, name, [{"type": "hardcoded", "questions": questions}], num_traj_per_stimulus=4, max_tokens=8)
        run_stim(ws, "r", name, engines=engines)
        status = run_rollout(ws, "r", name, engines=engines, chunk_size=64)
        assert (status.status, status.lines, status.total_expected) == ("complete", 1200, 1200)
    first = list(ws.job("r", "first", "rollout").iter_rows())
    second = list(ws.job("r", "second", "rollout").iter_rows())
    assert [(r["stimulus_id"], r["trajectory_id"]) for r in first] == [(s, t) for s in range(300) for t in range(4)]
    assert [r["response"]["content"] for r in first] == [r["response"]["content"] for r in second]
    assert all(r["response"]["usage"]["prompt_tokens"] > 15 for r in first)
    assert all(r["finish_reason"] in ("length", "stop") for r in first)
    # n samples of one stimulus differ (temperature 1, one seed per request).
    assert len({r["response"]["content"] for r in first[:4]}) > 1


CHILD = textwrap.dedent("""
    import sys
    from flows.rollout import run_rollout
    from repo_store import Store
    run_rollout(Store(sys.argv[1]).workspace(), "r", "crash", chunk_size=10)
""")


def test_sigkill_mid_rollout_then_resume_loses_and_duplicates_nothing(tmp_path, engines):
    data = str(tmp_path / "data")
    ws = Store(data).workspace()
    questions = [f"What did pirate {i} bury on the island?" for i in range(400)]
    make_target(ws, "crash", [{"type": "hardcoded", "questions": questions}], num_traj_per_stimulus=2, max_tokens=24)
    run_stim(ws, "r", "crash", engines=engines)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "ERROR"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, data], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    job = ws.job("r", "crash", "rollout")
    deadline = time.monotonic() + 240
    try:
        while len(job.chunks()) < 3:
            assert child.poll() is None, "the child finished or died before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    killed_at = len(job.chunks())
    assert 3 <= killed_at < 40
    assert job.status().status == "failed"  # its process is gone: reported at once, not after the lease
    status = run_rollout(ws, "r", "crash", engines=engines)
    assert (status.status, status.lines) == ("complete", 800)
    keys = [(r["stimulus_id"], r["trajectory_id"]) for r in job.iter_rows()]
    assert keys == [(s, t) for s in range(400) for t in range(2)]
    assert job.manifest().gen == 2  # one resume, and it kept the killed attempt's chunks
    assert sum(1 for c in job.chunks().values() if c.gen == 1) == killed_at


def test_stored_teacher_logprobs_are_the_models_and_both_teacher_paths_give_one_loss(tmp_path, engines):
    """The rollout's stored top-K equals a transformers forward pass of the same model on the same
    teacher context, and a bake step's KL from it (path a) equals the online teacher's (path b)."""
    import torch

    from flows.engines.model_cache import model_path
    from flows.trainer import Trainer
    from targets.bake import BakeConfig

    ws = Store(str(tmp_path / "data")).workspace()
    make_target(ws, "t", [{"type": "hardcoded", "questions": [f"Where is treasure {i}?" for i in range(4)]}],
                num_traj_per_stimulus=2, max_tokens=16, temperature=1.0)
    run_stim(ws, "r", "t", engines=engines)
    assert run_rollout(ws, "r", "t", engines=engines).status == "complete"
    rows = ws.read_page("r", "t", "rollout", offset=0, limit=100, include_tokens=True).rows
    base = {"datasets": [{"target": "t"}], "model": {"baked_adapter_config": {"r": 8, "lora_alpha": 16}}}
    stored = Trainer(str(model_path("tiny-random")), BakeConfig(**base), parent_model="tiny-random")
    online = Trainer(str(model_path("tiny-random")), BakeConfig(**base, teacher="online"), parent_model="tiny-random")
    stored_examples = [stored.example(row) for row in rows]
    online_examples = [online.example(row) for row in rows]
    assert all(e.teacher_top_ids is not None and len(e.teacher_top_ids) == len(e.response) for e in stored_examples)
    assert all(e.teacher_top_ids is None for e in online_examples)
    assert [e.response for e in stored_examples] == [row["response_token_ids"] for row in rows]

    with torch.no_grad(), stored.model.disable_adapter():
        logits = stored.response_logits([e.teacher_context for e in stored_examples], [e.response for e in stored_examples])
    logprobs = torch.log_softmax(logits, dim=-1)
    top_ids = torch.tensor([ids for e in stored_examples for ids in e.teacher_top_ids])
    top_logprobs = torch.tensor([lp for e in stored_examples for lp in e.teacher_top_logprobs])
    worst = (logprobs.gather(-1, top_ids) - top_logprobs).abs().max().item()
    print(f"largest |stored - transformers| log-probability: {worst:.2e}")
    assert worst < 1e-2

    loss_stored = stored.step([stored_examples]).loss
    loss_online = online.step([online_examples]).loss
    print(f"first-step KL: stored teacher {loss_stored:.5f}, online teacher {loss_online:.5f}")
    # The same quantity from two sources: equal to 1e-3 relative, far inside the 1e-2 asked for.
    assert loss_stored > 0 and loss_stored == pytest.approx(loss_online, rel=1e-3)

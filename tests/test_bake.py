"""Bake end to end on the tiny model: rollouts from the fake engine, real peft training on CPU."""

from __future__ import annotations

import json

import pytest

from flows.bake import run_bake
from flows.rollout import run_rollout
from flows.stim import run_stim
from repo_store import Cancelled, Store
from targets import InvalidInput, PromptSpec, RepoSpec, TargetSpec, ValidationFailed
from targets.bake import BakeConfig, BakeSpec, epoch_order, select_trajectories

from tests.test_flows import CountingEngines


def baked_workspace(store: Store, questions: int = 6, rollout: bool = True, failing: frozenset = frozenset()):
    ws = store.workspace()
    ws.create_repo(RepoSpec(repo_name="r", base_model="tiny-random"))
    ws.create_prompt("r", PromptSpec(prompt_name="teacher", messages=[{"role": "system", "content": "Answer like a pirate."}]))
    ws.create_prompt("r", PromptSpec(prompt_name="student", messages=[]))
    ws.create_target("r", TargetSpec(target_name="t", overrides={
        "teacher_prompt": "teacher", "student_prompt": "student", "model_name": "fake", "num_traj_per_stimulus": 2,
        "max_tokens": 12, "generators": [{"type": "hardcoded", "questions": [f"Where is treasure {i}?" for i in range(questions)]}],
    }))
    run_stim(ws, "r", "t", engines=CountingEngines())
    if rollout:
        run_rollout(ws, "r", "t", engines=CountingEngines(fail_keys=set(failing)))
    return ws


BAKE = {"datasets": [{"target": "t"}], "micro_batch_size": 2, "gradient_accumulation_steps": 2, "epochs": 2,
        "optimizer": {"learning_rate": 5e-3}, "model": {"baked_adapter_config": {"r": 8, "lora_alpha": 16}},
        "checkpoint": [{"save_every_n_steps": 2}]}


@pytest.fixture
def local_store(tmp_path):
    return Store(str(tmp_path / "data"))


def test_a_bake_lowers_the_kl_and_commits_checkpoints_and_metrics(local_store):
    ws = baked_workspace(local_store)
    ws.create_bake("r", BakeSpec(bake_name="b", overrides=BAKE))
    status = run_bake(ws, "r", "b")
    assert status.status == "complete", status.error
    run = ws.bake_run("r", ws.get_bake("r", "b"))
    metrics = list(run.iter_metrics())
    assert [m["iter"] for m in metrics] == list(range(1, 7))  # 12 trajectories / 4 per step × 2 epochs
    assert metrics[-1]["loss"] < metrics[0]["loss"] * 0.8, [m["loss"] for m in metrics]
    assert all(m["loss"] >= 0 and 0 <= m["top1_agreement"] <= 1 for m in metrics)
    assert [c.step for c in run.checkpoints()] == [2, 4, 6]
    assert status.summary["final_loss"] == metrics[-1]["loss"]
    jsonl = local_store.storage.read_bytes(f"{run.folder}/train_log_metrics.jsonl").decode().splitlines()
    assert [json.loads(line) for line in jsonl] == metrics
    assert run_bake(ws, "r", "b").status == "complete"  # a repeated start returns the finished bake
    assert len(list(run.iter_metrics())) == 6


def test_a_checkpoint_is_a_peft_adapter_that_loads_on_the_base_model(local_store, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from flows.engines.tiny_model import tiny_model_path

    ws = baked_workspace(local_store, questions=2)
    ws.create_bake("r", BakeSpec(bake_name="b", overrides={**BAKE, "epochs": 1}))
    run_bake(ws, "r", "b")
    run = ws.bake_run("r", ws.get_bake("r", "b"))
    latest = run.latest_checkpoint()
    folder = tmp_path / "adapter"
    folder.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (folder / name).write_bytes(run.read_checkpoint_file(latest, name))
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-random"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path()), folder)
    lora = [n for n, p in model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert lora  # trained: lora_B starts at zero


@pytest.mark.parametrize("scheduler", [{}, {"name": "linear", "warmup_steps": 2}])
def test_a_bake_stopped_mid_way_resumes_to_the_same_losses_with_no_step_twice(local_store, scheduler):
    ws = baked_workspace(local_store)
    config = {**BAKE, "scheduler": scheduler}
    ws.create_bake("r", BakeSpec(bake_name="whole", overrides=config))
    ws.create_bake("r", BakeSpec(bake_name="resumed", overrides={**config, "seed": 42}))
    run_bake(ws, "r", "whole")
    stopped = run_bake(ws, "r", "resumed", stop_after_step=3)  # step 3 is logged, never checkpointed
    assert stopped.status != "complete"
    assert run_bake(ws, "r", "resumed").status == "complete"
    whole = list(ws.bake_run("r", ws.get_bake("r", "whole")).iter_metrics())
    resumed = list(ws.bake_run("r", ws.get_bake("r", "resumed")).iter_metrics())
    assert [m["iter"] for m in resumed] == [m["iter"] for m in whole] == list(range(1, 7))
    assert [m["loss"] for m in resumed] == pytest.approx([m["loss"] for m in whole], abs=1e-6)
    assert [m["lr"] for m in resumed] == pytest.approx([m["lr"] for m in whole])  # the schedule resumed too
    if scheduler:  # warm-up over 2 steps, then down to 0 at the end: 0, 1/2, 1, 3/4, 1/2, 1/4 of the rate
        assert [m["lr"] / 5e-3 for m in whole] == pytest.approx([0, 0.5, 1, 0.75, 0.5, 0.25])
    else:
        assert {m["lr"] for m in whole} == {5e-3}


def test_bake_before_the_rollout_completes_is_refused(local_store):
    ws = baked_workspace(local_store, questions=2, rollout=False)
    ws.create_bake("r", BakeSpec(bake_name="b", overrides=BAKE))
    with pytest.raises(InvalidInput, match="Target rollouts must complete before starting bake"):
        run_bake(ws, "r", "b")


def test_bake_configs_are_immutable_and_validated(local_store):
    from targets import Conflict

    ws = baked_workspace(local_store, questions=2, rollout=False)
    first, created = ws.create_bake("r", BakeSpec(bake_name="b", overrides=BAKE))
    assert created and first.config.micro_batch_size == 2 and first.config.seed == 42
    assert ws.create_bake("r", BakeSpec(bake_name="b", overrides=BAKE))[1] is False
    with pytest.raises(Conflict):
        ws.create_bake("r", BakeSpec(bake_name="b", overrides={**BAKE, "epochs": 3}))
    derived, _ = ws.create_bake("r", BakeSpec(bake_name="b2", template="b", overrides={"epochs": 5}))
    assert (derived.config.epochs, derived.config.micro_batch_size) == (5, 2)
    with pytest.raises(InvalidInput, match="target 'nope' not found"):
        ws.create_bake("r", BakeSpec(bake_name="b3", overrides={"datasets": [{"target": "nope"}]}))
    assert ws.list_bakes("r") == ["b", "b2"]


@pytest.mark.parametrize(("override", "field"), [
    ({"scheduler": {"lr": 0.1}}, "scheduler.lr"),
    ({"model": {"baked_adapter_config": {"r": 0}}}, "model.baked_adapter_config.r"),
    ({"model": {"baked_adapter_config": {"lora_alpha": 0}}}, "lora_alpha"),
    ({"optimizer": {"learning_rate": 0}}, "optimizer.learning_rate"),
    ({"epochs": 0}, "epochs"),
])
def test_bad_bake_configs_name_the_field(override, field):
    from targets import parse

    with pytest.raises(ValidationFailed, match=field.replace(".", r"\.")):
        parse(BakeConfig, override, "bake config")


def test_trajectories_are_sampled_by_weight_and_size():
    picked = select_trajectories([10, 10], [1.0, 3.0], total=8, seed=1)
    assert [d for d, _ in picked].count(1) == 6 and len(picked) == 8
    assert select_trajectories([3, 5], [1.0, 1.0], total=None, seed=1) == [(0, i) for i in range(3)] + [(1, i) for i in range(5)]
    twice = select_trajectories([4], [1.0], total=8, seed=1)
    assert sorted(twice) == sorted([(0, i) for i in range(4)] * 2)
    assert select_trajectories([10, 10], [1.0, 3.0], total=8, seed=1) == picked


def test_epoch_order_is_a_reproducible_permutation_that_keeps_pages_together():
    selection = [(0, i) for i in range(25)] + [(1, i) for i in range(7)]
    order = epoch_order(selection, epoch=0, seed=5, page_size=10)
    assert sorted(order) == sorted(selection) and order == epoch_order(selection, epoch=0, seed=5, page_size=10)
    assert order != epoch_order(selection, epoch=1, seed=5, page_size=10)
    pages = [(d, r // 10) for d, r in order]
    assert len([p for i, p in enumerate(pages) if i == 0 or p != pages[i - 1]]) == 4  # each page visited once


def test_a_cancelled_bake_keeps_its_checkpoints_and_resumes_from_them(local_store):
    ws = baked_workspace(local_store)
    ws.create_bake("r", BakeSpec(bake_name="b", overrides=BAKE))
    run = ws.bake_run("r", ws.get_bake("r", "b"))

    def cancel_after_step_three(percent: float) -> None:
        if percent >= 50.0:  # step 3 of 6
            run.job.request_cancel()

    with pytest.raises(Cancelled):
        run_bake(ws, "r", "b", on_progress=cancel_after_step_three)
    status = run.job.status()
    assert (status.status, status.error) == ("failed", "cancelled")
    assert [c.step for c in run.checkpoints()] == [2]  # step 4 was never reached
    assert run_bake(ws, "r", "b").status == "complete"
    assert [m["iter"] for m in run.iter_metrics()] == list(range(1, 7))


@pytest.mark.parametrize(("parent", "message"), [
    ("no-such/model", "cannot be found"),
    ("default/r/b/10", "no checkpoint 10 of bake 'b'"),
    ("other/r/b/1", "does not exist"),  # another workspace's checkpoint is as missing as none
])
def test_a_parent_model_that_does_not_exist_is_refused(local_store, parent, message):
    from flows.models import check_model, model_folder

    ws = baked_workspace(local_store, questions=2)
    ws.create_bake("r", BakeSpec(bake_name="b", overrides={**BAKE, "epochs": 1}))
    assert run_bake(ws, "r", "b").status == "complete"
    with pytest.raises(InvalidInput, match=message):
        check_model(ws, parent)
    check_model(ws, f"default/r/b/{ws.bake_run('r', ws.get_bake('r', 'b')).latest_checkpoint().step}")
    assert model_folder(ws, "tiny-random").endswith("tiny-random-v1")


def test_a_baked_checkpoint_is_a_model_a_second_bake_starts_from(local_store):
    """`<workspace>/<repo>/<bake>/<step>` resolves to the parent with the adapter merged in; a bake
    on top of it trains a fresh adapter whose teacher (adapter off) is exactly the first bake's model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from flows.engines.tiny_model import tiny_model_path
    from flows.models import model_folder
    from flows.trainer import Trainer
    from targets.bake import BakeConfig

    ws = baked_workspace(local_store, questions=4)
    ws.create_bake("r", BakeSpec(bake_name="first", overrides={**BAKE, "epochs": 1}))
    assert run_bake(ws, "r", "first").status == "complete"
    run = ws.bake_run("r", ws.get_bake("r", "first"))
    name = f"default/r/first/{run.latest_checkpoint().step}"
    folder = model_folder(ws, name)
    assert model_folder(ws, name) == folder  # merged once, then reused

    ids = torch.tensor([[5, 17, 99, 3, 250, 8]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(folder)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_path())
        adapter = tmp_adapter(run)
        first_bake = PeftModel.from_pretrained(base, adapter)(ids).logits
        parent = AutoModelForCausalLM.from_pretrained(tiny_model_path())(ids).logits
    assert (merged - first_bake).abs().max() < 1e-4 < (merged - parent).abs().max()

    ws.create_bake("r", BakeSpec(bake_name="second", overrides={**BAKE, "epochs": 1, "model": {
        **BAKE["model"], "parent_model_name": name}}))
    assert run_bake(ws, "r", "second").status == "complete"
    second = Trainer(folder, BakeConfig(**BAKE), parent_model=name)
    with torch.no_grad(), second.model.disable_adapter():
        teacher = second.model(input_ids=ids).logits
    assert (teacher - first_bake).abs().max() < 1e-4


def tmp_adapter(run):
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (folder / name).write_bytes(run.read_checkpoint_file(run.latest_checkpoint(), name))
    return folder


def test_two_data_parallel_processes_take_the_same_steps_as_one(local_store):
    ws = baked_workspace(local_store)
    config = {**BAKE, "epochs": 1, "micro_batch_size": 3, "gradient_accumulation_steps": 1}  # odd: ranks get 2 and 1
    ws.create_bake("r", BakeSpec(bake_name="one", overrides=config))
    ws.create_bake("r", BakeSpec(bake_name="two", overrides={**config, "seed": 42}))
    assert run_bake(ws, "r", "one").status == "complete"
    assert run_bake(ws, "r", "two", processes=2).status == "complete"
    one = list(ws.bake_run("r", ws.get_bake("r", "one")).iter_metrics())
    two = list(ws.bake_run("r", ws.get_bake("r", "two")).iter_metrics())
    assert [m["iter"] for m in two] == [m["iter"] for m in one] == [1, 2, 3, 4]
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], abs=1e-4)
    assert [m["grad_norm"] for m in two] == pytest.approx([m["grad_norm"] for m in one], rel=1e-3)


def test_failed_trajectories_are_skipped_not_trained_on(local_store):
    ws = baked_workspace(local_store, failing=frozenset({1, 2}))  # stimuli 1 and 2: rows with `error`
    rows = ws.read_page("r", "t", "rollout", offset=0, limit=1000, include_tokens=True).rows
    assert sum(1 for r in rows if r.get("error")) == 4
    ws.create_bake("r", BakeSpec(bake_name="b", overrides={**BAKE, "epochs": 1}))
    assert run_bake(ws, "r", "b").status == "complete"
    metrics = list(ws.bake_run("r", ws.get_bake("r", "b")).iter_metrics())
    trained = sum(m["tokens"] for m in metrics)
    from flows.trainer import Trainer
    from flows.engines.tiny_model import tiny_model_path

    trainer = Trainer(str(tiny_model_path()), ws.get_bake("r", "b").config)
    assert trained == sum(len(trainer.example(r).response) for r in rows if not r.get("error")) > 0


def test_a_bake_worker_killed_with_sigkill_resumes_with_no_step_lost_or_twice(tmp_path):
    """A real worker process (`python -m bakehouse.worker bake`) killed mid-training: the next
    start resumes from the last checkpoint and the metrics equal an uninterrupted bake's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    store = Store(str(tmp_path / "data"))
    ws = baked_workspace(store, questions=20)
    config = {**BAKE, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "checkpoint": [{"save_every_n_steps": 10}]}
    ws.create_bake("r", BakeSpec(bake_name="whole", overrides=config))
    ws.create_bake("r", BakeSpec(bake_name="killed", overrides={**config, "seed": 42}))
    run = ws.bake_run("r", ws.get_bake("r", "killed"))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": ""}
    worker = subprocess.Popen([sys.executable, "-m", "bakehouse.worker", "bake", "--repo", "r", "--bake", "killed",
                               "--data", store.url], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while (latest := run.latest_checkpoint()) is None or latest.step < 10:
        assert time.monotonic() < deadline and worker.poll() is None, "the worker never checkpointed"
        time.sleep(0.02)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert run.job.status().status != "complete", "killed too late to test a resume"
    resumed_from = run.latest_checkpoint().step
    seen: list[float] = []
    assert run_bake(ws, "r", "killed", on_progress=seen.append).status == "complete"
    assert min(seen) == pytest.approx(100.0 * (resumed_from + 1) / 80)  # no step before the checkpoint redone
    assert run_bake(ws, "r", "whole").status == "complete"
    whole = list(ws.bake_run("r", ws.get_bake("r", "whole")).iter_metrics())
    killed = list(run.iter_metrics())
    assert [m["iter"] for m in killed] == [m["iter"] for m in whole] == list(range(1, 81))
    assert [m["loss"] for m in killed] == pytest.approx([m["loss"] for m in whole], abs=1e-6)


def test_checkpoint_files_without_their_marker_are_never_a_checkpoint(local_store):
    ws = baked_workspace(local_store, questions=2, rollout=False)
    bake, _ = ws.create_bake("r", BakeSpec(bake_name="b", overrides=BAKE))
    run = ws.bake_run("r", bake)
    first = run.write_checkpoint(2, {"adapter.tar.gz": b"two"}, gen=1, token="a", metrics=[{"iter": 1}, {"iter": 2}])
    # An attempt that died between its files and its marker: the files are there, the marker is not.
    local_store.storage.write_bytes(f"{run.folder}/checkpoints/00000004-g000001-dead/adapter.tar.gz", b"half")
    assert run.latest_checkpoint() == first and [c.step for c in run.checkpoints()] == [2]
    # A second commit of a step keeps the first one's files and metrics (the marker decides).
    again = run.write_checkpoint(2, {"adapter.tar.gz": b"other"}, gen=2, token="b", metrics=[{"iter": 2}])
    assert again == first and run.read_checkpoint_file(again, "adapter.tar.gz") == b"two"
    assert [m["iter"] for m in run.iter_metrics()] == [1, 2]


@pytest.mark.vllm
def test_a_rollout_with_a_baked_checkpoint_as_its_model(local_store):
    """A target's `model_name` may be a baked checkpoint: vLLM serves it merged; rows name it."""
    from flows.runtime import Engines

    ws = baked_workspace(local_store, questions=2)
    ws.create_bake("r", BakeSpec(bake_name="b", overrides={**BAKE, "epochs": 1}))
    assert run_bake(ws, "r", "b").status == "complete"
    name = f"default/r/b/{ws.bake_run('r', ws.get_bake('r', 'b')).latest_checkpoint().step}"
    ws.create_target("r", TargetSpec(target_name="again", overrides={
        "teacher_prompt": "teacher", "student_prompt": "student", "model_name": name, "num_traj_per_stimulus": 2,
        "max_tokens": 8, "generators": [{"type": "hardcoded", "questions": ["Where now?", "And then?"]}]}))
    run_stim(ws, "r", "again", engines=CountingEngines())
    engines = Engines(kv_cache_bytes=64 * 2**20)
    try:
        assert run_rollout(ws, "r", "again", engines=engines).status == "complete"
    finally:
        engines.close()
    rows = ws.read_page("r", "again", "rollout", offset=0, limit=10, include_tokens=True).rows
    assert len(rows) == 4 and all(r["model"] == name and r["response_token_ids"] and r["teacher_top_ids"] for r in rows)

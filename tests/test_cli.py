"""The `bakehouse` command line against a real server (jobs run in threads on the fake engine)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from bakehouse.api import create_app
from bakehouse.cli import app
from net import serve_app
from repo_store import Store
from runners import ThreadRunner

SPEC = """
repo: {repo_name: cli, base_model: fake}
prompts:
  - {prompt_name: teacher, messages: [{role: system, content: Be brief.}]}
  - {prompt_name: student, messages: []}
targets:
  - target_name: t
    overrides:
      teacher_prompt: teacher
      student_prompt: student
      model_name: fake
      num_traj_per_stimulus: 2
      generators: [{type: hardcoded, questions: ["one?", "two?", "three?"]}]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("cli-data"))
    store = Store(data)
    with serve_app(create_app(store, ThreadRunner(store))) as url:
        yield {"url": url, "data": data}


def test_keys_create_prints_the_secret_alone_on_the_last_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bakehouse.cli", "keys", "create", "--workspace", "w", "--scope", "read", "--data", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )
    secret = done.stdout.strip().splitlines()[-1]
    assert secret.startswith("bh_") and done.stdout.strip() == secret  # stdout holds nothing else
    key = Store(str(tmp_path)).keys.verify(secret)
    assert key is not None and (key.workspace, key.scope) == ("w", "read")


def test_without_data_the_storage_is_the_configured_one(tmp_path, monkeypatch):
    monkeypatch.setenv("BAKEHOUSE_DATA", str(tmp_path))  # read by repo_store.settings, not by the CLI
    created = CliRunner().invoke(app, ["keys", "create", "--workspace", "w"])
    assert created.exit_code == 0, created.output
    listed = CliRunner().invoke(app, ["keys", "list"])
    assert [key.key_id for key in Store(str(tmp_path)).keys.list()] == [listed.output.split("\t")[0]]


def test_keys_revoke_stops_a_key_and_names_unknown_ids(tmp_path):
    store = Store(str(tmp_path))
    kept, kept_secret = store.keys.create(workspace="w", scope="read")
    gone, gone_secret = store.keys.create(workspace="w", scope="write")
    assert store.keys.verify(gone_secret) == gone  # cached as verified
    result = CliRunner().invoke(app, ["keys", "revoke", gone.key_id, "--data", str(tmp_path)])
    assert result.exit_code == 0 and gone.key_id in result.output
    assert Store(str(tmp_path)).keys.verify(gone_secret) is None
    assert store.keys.verify(kept_secret) == kept
    assert [k.key_id for k in store.keys.list()] == [kept.key_id]
    for unknown in (gone.key_id, "../keys"):
        result = CliRunner().invoke(app, ["keys", "revoke", unknown, "--data", str(tmp_path)])
        assert result.exit_code == 1 and "no key with id" in result.output


def test_keys_usage_prints_the_requests_per_key_and_per_hour(tmp_path):
    from fastapi.testclient import TestClient

    from runners import RecordingRunner

    store = Store(str(tmp_path))
    used, secret = store.keys.create(workspace="w", scope="read")
    idle, _ = store.keys.create(workspace="w", scope="write")
    with TestClient(create_app(store, RecordingRunner()), headers={"Authorization": f"Bearer {secret}"}) as client:
        for _ in range(3):
            client.get("/v1/repo")
    listed = CliRunner().invoke(app, ["keys", "usage", "--data", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    lines = {line.split("\t")[0]: line.split("\t") for line in listed.output.splitlines()}
    assert lines[used.key_id][1:4] == ["w", "read", "3"] and lines[used.key_id][4].endswith("UTC")
    assert lines[idle.key_id][3:] == ["0", "never"]
    hourly = CliRunner().invoke(app, ["keys", "usage", used.key_id, "--data", str(tmp_path)])
    assert hourly.exit_code == 0, hourly.output
    hour_line, last_line = hourly.output.splitlines()
    assert hour_line.endswith(":00 UTC\t3") and last_line.startswith("last used\t")
    unknown = CliRunner().invoke(app, ["keys", "usage", "0000", "--data", str(tmp_path)])
    assert unknown.exit_code == 1 and "no key with id" in unknown.output


def test_apply_run_status_output_and_export(server, tmp_path, monkeypatch):
    key = Store(server["data"]).keys.create(workspace="default", scope="write")[1]
    monkeypatch.setenv("BAKEHOUSE_BASE_URL", server["url"])
    monkeypatch.setenv("BAKEHOUSE_API_KEY", key)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    cli = CliRunner()

    result = cli.invoke(app, ["apply", str(spec)])
    assert result.exit_code == 0, result.output
    assert "repo cli: 2 prompts, 1 targets" in result.output
    assert cli.invoke(app, ["apply", str(spec)]).exit_code == 0  # identical again: fine

    result = cli.invoke(app, ["stim", "run", "t", "--repo", "cli"])
    assert result.exit_code == 0, result.output
    assert "stim complete: 3 rows" in result.output
    result = cli.invoke(app, ["rollout", "run", "t", "--repo", "cli"])
    assert result.exit_code == 0 and "rollout complete: 6 rows" in result.output

    status = json.loads(cli.invoke(app, ["rollout", "status", "t", "--repo", "cli"]).output)
    assert (status["status"], status["lines"], status["total_expected"]) == ("complete", 6, 6)
    lines = cli.invoke(app, ["rollout", "output", "t", "--repo", "cli", "--jsonl", "--limit", "4", "--offset", "1"]).output
    rows = [json.loads(line) for line in lines.splitlines()]
    assert [(r["stimulus_id"], r["trajectory_id"]) for r in rows] == [(0, 1), (1, 0), (1, 1), (2, 0)]
    table = cli.invoke(app, ["stim", "output", "t", "--repo", "cli"]).output
    assert "two?" in table

    target = tmp_path / "out.jsonl"
    assert cli.invoke(app, ["rollout", "export", "t", str(target), "--repo", "cli"]).exit_code == 0
    assert len(target.read_text().splitlines()) == 6
    parquet = tmp_path / "out.parquet"
    assert cli.invoke(app, ["stim", "export", "t", str(parquet), "--repo", "cli"]).exit_code == 0
    import polars as pl

    assert pl.read_parquet(parquet).height == 3


BAKE_SPEC = """
repo: {repo_name: clibake, base_model: tiny-random}
prompts:
  - {prompt_name: teacher, messages: [{role: system, content: Be brief.}]}
  - {prompt_name: student, messages: []}
targets:
  - target_name: t
    overrides:
      teacher_prompt: teacher
      student_prompt: student
      model_name: fake
      num_traj_per_stimulus: 2
      max_tokens: 8
      generators: [{type: hardcoded, questions: ["one?", "two?", "three?"]}]
bakes:
  - bake_name: b
    overrides: {datasets: [{target: t}], micro_batch_size: 2, model: {baked_adapter_config: {r: 4}}}
"""


def test_bake_run_status_and_metrics(server, tmp_path, monkeypatch):
    key = Store(server["data"]).keys.create(workspace="default", scope="write")[1]
    monkeypatch.setenv("BAKEHOUSE_BASE_URL", server["url"])
    monkeypatch.setenv("BAKEHOUSE_API_KEY", key)
    spec = tmp_path / "spec.yaml"
    spec.write_text(BAKE_SPEC)
    cli = CliRunner()
    result = cli.invoke(app, ["apply", str(spec)])
    assert result.exit_code == 0 and "1 targets, 1 bakes" in result.output, result.output
    result = cli.invoke(app, ["bake", "run", "b", "--repo", "clibake"])
    assert result.exit_code == 1 and "Target rollouts must complete before starting bake" in result.output
    for kind in ("stim", "rollout"):
        assert cli.invoke(app, [kind, "run", "t", "--repo", "clibake"]).exit_code == 0
    result = cli.invoke(app, ["bake", "run", "b", "--repo", "clibake"])
    assert result.exit_code == 0 and "bake complete: final loss" in result.output, result.output
    status = json.loads(cli.invoke(app, ["bake", "status", "b", "--repo", "clibake"]).output)
    assert status["model_name"] == ["default/clibake/b/3"]
    rows = [json.loads(line) for line in cli.invoke(app, ["bake", "metrics", "b", "--repo", "clibake"]).output.splitlines()]
    assert [r["iter"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] == status["loss"]["final_loss"]
    archive = tmp_path / "adapter.tar.gz"
    result = cli.invoke(app, ["bake", "download", "b", str(archive), "--repo", "clibake"])
    assert result.exit_code == 0 and "checkpoint 3 of b saved" in result.output, result.output
    import tarfile

    with tarfile.open(archive) as tar:
        assert "adapter_model.safetensors" in tar.getnames()


def test_errors_print_the_server_message_and_exit_non_zero(server, monkeypatch):
    key = Store(server["data"]).keys.create(workspace="default", scope="read")[1]
    monkeypatch.setenv("BAKEHOUSE_BASE_URL", server["url"])
    monkeypatch.setenv("BAKEHOUSE_API_KEY", key)
    result = CliRunner().invoke(app, ["stim", "status", "nope", "--repo", "missing"])
    assert result.exit_code == 1 and "Repository 'missing' not found" in result.output
    result = CliRunner().invoke(app, ["stim", "run", "nope", "--repo", "missing", "--no-wait"])
    assert result.exit_code == 1 and "scope" in result.output
    with socket.socket() as unused:  # bound, not listening: nothing answers on it
        unused.bind(("127.0.0.1", 0))
        monkeypatch.setenv("BAKEHOUSE_BASE_URL", f"http://127.0.0.1:{unused.getsockname()[1]}")
        for command in (["stim", "status", "t"], ["rollout", "run", "t"], ["rollout", "output", "t"], ["stim", "cancel", "t"]):
            result = CliRunner().invoke(app, [*command, "--repo", "r"])
            assert result.exit_code == 1 and "cannot reach the server at http://127.0.0.1:" in result.output, result.output


@pytest.mark.vllm
@pytest.mark.prefect
def test_demo_runs_the_main_job_end_to_end(tmp_path):
    """What `bash scripts/demo.sh` runs after installing: stim -> rollout -> bake on smollm2-135m, then
    held-out questions before and after."""
    import re

    env = {**__import__("os").environ, "BAKEHOUSE_DATA": str(tmp_path / "data"), "PREFECT_HOME": str(tmp_path / "prefect"),
           "OMP_NUM_THREADS": "2"}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-m", "bakehouse.cli", "demo"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Done" in done.stdout and "trajectories" in done.stdout and '"finish_reason"' in done.stdout
    job = Store(str(tmp_path / "data")).workspace().job("demo", "pirate", "rollout")
    status = job.status()
    assert status.status == "complete" and status.lines == status.total_expected > 0
    assert "Baked" in done.stdout and "KL per response token" in done.stdout
    ws = Store(str(tmp_path / "data")).workspace()
    run = ws.bake_run("demo", ws.get_bake("demo", "pirate_bake"))
    losses = [row["loss"] for row in run.iter_metrics()]
    assert run.job.status().status == "complete" and losses[-1] < losses[0]
    # The bake moved the student towards the teacher on questions it never trained on.
    before, after = map(float, re.search(r"Held-out KL.*?per\s+token:\s+before\s+(\d+\.\d+),\s+after\s+(\d+\.\d+)", done.stdout, re.S).groups())
    assert after < before / 2, done.stdout[-3000:]


def test_reading_everything_of_an_unfinished_job_needs_consent(server, monkeypatch, tmp_path):
    from bakehouse import Client, JobNotComplete

    store = Store(server["data"])
    key = store.keys.create(workspace="default", scope="write")[1]
    client = Client(base_url=server["url"], api_key=key)
    client.repo.create(repo_name="partial", base_model="fake")
    client.prompts.create("partial", prompt_name="p", messages=[])
    client.targets.create("partial", target_name="t", overrides={
        "teacher_prompt": "p", "student_prompt": "p", "generators": [{"type": "hardcoded", "questions": ["q?"]}]})
    with pytest.raises(JobNotComplete, match="not_started"):
        list(client.targets.stim.iter_output("t", repo_name="partial"))
    assert list(client.targets.stim.iter_output("t", repo_name="partial", allow_partial=True)) == []
    monkeypatch.setenv("BAKEHOUSE_BASE_URL", server["url"])
    monkeypatch.setenv("BAKEHOUSE_API_KEY", key)
    earlier = tmp_path / "x.jsonl"
    earlier.write_text('{"an": "earlier export"}\n')
    result = CliRunner().invoke(app, ["stim", "export", "t", str(earlier), "--repo", "partial"])
    assert result.exit_code == 1 and "allow_partial" in result.output
    assert earlier.read_text() == '{"an": "earlier export"}\n'  # refused before anything was written

"""prefect.yaml for real: a Prefect server, work pools, deployments, process workers, the API
submitting through the deployments, and a sharded rollout that survives losing a worker mid-shard.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from bakehouse import Client
from bakehouse.api import create_app
from bakehouse.runner import PrefectRunner
from bakehouse.up import Stack, start_stack
from net import free_port, serve_app
from repo_store import Store

pytestmark = [pytest.mark.prefect, pytest.mark.vllm]


def test_deployment_parameters_render_as_a_form():
    from prefect.utilities.callables import parameter_schema

    from flows.rollout import rollout_flow, rollout_shard_flow
    from flows.stim import stim_flow

    for flow in (stim_flow, rollout_flow, rollout_shard_flow):
        schema = parameter_schema(flow.fn).model_dump_for_openapi()
        assert "job" in schema["required"]
        job = schema["definitions"]["TargetJob"]
        assert set(job["required"]) == {"repo_name", "target_name"}
        assert job["properties"]["repo_name"]["title"] == "Repository"
        assert job["properties"]["data_url"]["description"]
    rollout = parameter_schema(rollout_flow.fn).model_dump_for_openapi()
    assert rollout["properties"]["stimuli_per_shard"]["default"] == 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("data"))
    saved = dict(os.environ)
    os.environ.update(
        BAKEHOUSE_ROLLOUT_CHUNK="10", BAKEHOUSE_LEASE_SECONDS="15", OMP_NUM_THREADS="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_LOGGING_LEVEL="ERROR", PREFECT_HOME=str(tmp_path_factory.mktemp("prefect")),
    )
    processes = Stack()
    try:
        env = start_stack(processes, data_url=data, prefect_port=free_port(), logs=tmp_path_factory.mktemp("logs"),
                          workers_per_pool=2)
        os.environ["PREFECT_API_URL"] = env["PREFECT_API_URL"]
        store = Store(data)
        _, key = store.keys.create(workspace="default", scope="write")
        app = create_app(store, PrefectRunner(stimuli_per_shard=300))
        with serve_app(app) as url:
            yield {"client": Client(base_url=url, api_key=key, poll_interval=0.5), "store": store, "stack": processes}
    finally:
        processes.stop()
        os.environ.clear()
        os.environ.update(saved)


def test_sharded_rollout_survives_a_worker_killed_mid_shard(stack):
    client, store = stack["client"], stack["store"]
    client.repo.create(repo_name="fleet", base_model="tiny-random")
    client.prompts.create("fleet", prompt_name="teacher", messages=[{"role": "system", "content": "You are a pirate."}])
    client.prompts.create("fleet", prompt_name="student", messages=[])
    client.targets.create("fleet", target_name="t", overrides={
        "teacher_prompt": "teacher", "student_prompt": "student", "model_name": "tiny-random",
        "num_traj_per_stimulus": 2, "max_tokens": 32,
        "generators": [{"type": "hardcoded", "questions": [f"Where is treasure {i} buried, captain?" for i in range(900)]}],
    })
    assert client.targets.stim.run("t", repo_name="fleet", timeout=300)["lines"] == 900
    client.targets.rollout.run("t", repo_name="fleet", poll=False)

    # Wait for a shard that has committed work, then kill the worker running it (and its flow run).
    job = store.workspace().job("fleet", "t", "rollout")
    deadline = time.monotonic() + 300
    victim = None
    while victim is None:
        assert time.monotonic() < deadline, "no shard started"
        for shard in range(3):
            latest = job.latest_claim(f"shard-{shard:05d}")
            mine = [c for i, c in job.chunks().items() if shard * 30 <= i < (shard + 1) * 30]
            if latest and job.owner_alive(f"shard-{shard:05d}") and len(mine) >= 2 and len(mine) < 25:
                victim = (shard, latest.pid)
                break
        time.sleep(0.1)
    shard, pid = victim
    workers = [c for c in stack["stack"].children if "worker" in " ".join(c.args) and "bakehouse-gpu" in " ".join(c.args)]
    for worker in workers:  # the machine that ran the shard is gone: its worker and its flow run
        if _descendant(pid, worker.pid):
            os.killpg(worker.pid, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)

    done = client.targets.rollout.wait("t", repo_name="fleet", timeout=600)
    assert (done["status"], done["lines"], done["total_expected"]) == ("complete", 1800, 1800)
    keys = [(r["stimulus_id"], r["trajectory_id"]) for r in job.iter_rows()]
    assert keys == [(s, t) for s in range(900) for t in range(2)]
    chunks = job.chunks()
    shard_chunks = [chunks[i] for i in range(shard * 30, (shard + 1) * 30)]
    assert len({c.gen for c in shard_chunks}) >= 2  # chunks the killed attempt committed were kept
    assert job.latest_claim(f"shard-{shard:05d}").gen >= 2  # the shard was run again, keeping its chunks


def _descendant(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat") as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


def _descendants(root: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != root and _descendant(int(entry), root):
            found.add(int(entry))
    return found


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=["sigterm", "sighup", "sigkill"])
def test_bakehouse_up_starts_everything_and_stopping_leaves_no_orphans(tmp_path, stop_signal):
    """SIGTERM as from a process manager; SIGHUP as from a closed terminal or a dropped ssh session;
    SIGKILL as from the OOM killer (then the children end themselves: their parent died)."""
    import subprocess
    import sys

    import httpx

    port, prefect_port = free_port(), free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "BAKEHOUSE_LOG_DIR": str(tmp_path / "logs")}
    env.pop("PREFECT_API_URL", None)
    up = subprocess.Popen(
        [sys.executable, "-m", "bakehouse.cli", "up", "--port", str(port), "--prefect-port", str(prefect_port),
         "--data", str(tmp_path / "data")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True,
    )
    children: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while True:
            assert up.poll() is None, up.stdout.read()
            assert time.monotonic() < deadline, "the stack did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        deployments = httpx.post(f"http://127.0.0.1:{prefect_port}/api/deployments/filter", json={}, timeout=10).json()
        assert {d["name"] for d in deployments} >= {"stim", "rollout", "rollout-shard", "target"}
        children = _descendants(up.pid)
        assert len(children) >= 3  # the Prefect server and a worker per pool (and their helpers)
        up.send_signal(stop_signal)
        assert up.wait(timeout=90) is not None
        deadline = time.monotonic() + 40
        while left := [pid for pid in children if os.path.exists(f"/proc/{pid}") and _alive(pid)]:
            assert time.monotonic() < deadline, f"still running after {stop_signal!r}: {left}"
            time.sleep(0.5)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        for pid in children:  # orphans of a failed run must not outlive the test
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_new_up_ends_what_an_earlier_killed_one_left_and_nothing_else(tmp_path):
    import subprocess
    import sys

    from bakehouse.up import clear_stale_stack

    def sleeper(*words: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", *words], start_new_session=True)

    left, unrelated = sleeper("prefect", "worker", "start"), sleeper("something", "else")
    record = tmp_path / "up-4200.json"
    record.write_text(json.dumps([left.pid, unrelated.pid, 999_999_999]))
    try:
        assert clear_stale_stack(record) == [left.pid]
        assert left.wait(timeout=30) is not None and unrelated.poll() is None
        assert not record.exists() and clear_stale_stack(record) == []
    finally:
        for process in (left, unrelated):
            process.kill()
            process.wait()

"""Sharded rollout through Prefect: wall time with 1 vs 2 GPU-pool workers, and per-shard overhead.

    python bench/sharded_rollout.py [--stimuli 1200] [--n 2] [--max-tokens 32] [--shards 4] [--chunk 25]
                                    [--workers 1,2] [--variants deployed,limited] [--timeout 600]

For each worker count, a fresh stack from bakehouse/up.py (`start_stack`: Prefect server on a free
127.0.0.1 port, both work pools, the deployments of prefect.yaml, `workers_per_pool` process workers
per pool) with a fresh data folder and PREFECT_HOME. The same target (tiny-random, --stimuli
hardcoded questions x n, max_tokens, seed 7) gets its stim in this process (no engine needed), then
the rollout is submitted with `run_deployment("rollout/rollout", {"job": ..., "stimuli_per_shard":
stimuli / shards})`; wall time = from that call to the job's manifest existing (polled every 0.2 s).
Every process a stack started is stopped (`Stack.stop()`), also on errors.

Two variants per stack (each on its own target with the identical config): "deployed", the pools as
`bakehouse up` makes them (each GPU-pool worker started with `--limit 1`: one shard at a time, as one
vLLM engine per GPU); and "limited", after `prefect work-pool set-concurrency-limit bakehouse-gpu
<workers>` as well (a pool-wide cap, for workers started without a limit).

Per-shard overhead. First, a baseline child process (no Prefect) loads the engine once (start-up
timed separately), creates the same plan and runs `run_rollout_shard` for every shard on that warm
engine: the generation time of each shard (vLLM generating + its chunk commits), with nothing else.
Then, for each Prefect shard flow run (read from the Prefect API):
  run       = end_time - start_time (Prefect's timestamps of the Running and the final state);
  overhead  = run - baseline generation time of the same shard: process/flow start, imports, vLLM
              start-up, storage, Prefect bookkeeping, plus CPU contention with whatever else runs;
  queue     = start_time - created (waiting for a worker to pick it up and start the process);
  to claim  = the shard's claim time on storage - start_time (flow start-up until the shard owns
              its work);
  claim->1st = first chunk marker (mtime) - claim (mostly engine start-up, plus time to the first chunk).
Also printed: total wall - sum(baseline generation) / workers (the end-to-end overhead), and the most
shard runs that were Running at the same moment.

Only 2 CPU cores here: 2 workers compete with each other and with the Prefect server, so the ratio
is a floor on what 2 machines would give. Defaults take ~6-9 minutes. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bakehouse.process_defaults import apply_defaults  # noqa: E402

apply_defaults()

from bakehouse.up import Stack, free_port, start_stack  # noqa: E402
from flows.stim import run_stim  # noqa: E402
from repo_store import Store  # noqa: E402
from common import make_target  # noqa: E402

REPO, TARGET = "sharded", "t"
PROJECT = Path(__file__).resolve().parents[1]


def make_sharded_target(ws, name: str, stimuli: int, n: int, max_tokens: int) -> None:
    make_target(ws, REPO, name, model="tiny-random", num_traj_per_stimulus=n, max_tokens=max_tokens, seed=7,
                questions=[f"Where is treasure {i} buried, captain?" for i in range(stimuli)])


def plan_for(stimuli: int, n: int, chunk: int, per_shard: int) -> dict:
    """The plan run_rollout makes (flows/rollout.py), so the baseline runs exactly the same shards."""
    num_chunks = max(1, -(-stimuli // chunk))
    return {"num_chunks": num_chunks, "stimuli_per_chunk": chunk, "chunks_per_shard": max(1, -(-per_shard // chunk)),
            "stimuli": stimuli, "total_expected": stimuli * n}


BASELINE = textwrap.dedent("""
    import json, sys, time
    from bakehouse.process_defaults import apply_defaults
    apply_defaults()
    from flows.rollout import run_rollout_shard
    from flows.runtime import Engines
    from repo_store import Store
    from repo_store.records import RolloutPlan

    data, repo, target = sys.argv[1], sys.argv[2], sys.argv[3]
    plan = RolloutPlan.from_json(json.loads(sys.argv[4]))
    ws = Store(data).workspace()
    job = ws.job(repo, target, "rollout")
    job.create_plan(plan)
    engines = Engines()
    start = time.time()
    engines("tiny-random")
    startup = time.time() - start
    seconds = []
    for shard in range(len(plan.shards())):
        start = time.time()
        result = run_rollout_shard(ws, repo, target, shard=shard, job_gen=1, engines=engines)
        assert result["status"] == "done", result
        seconds.append(time.time() - start)
    engines.close()
    print(json.dumps({"startup": startup, "seconds": seconds}))
""")


def baseline(args: argparse.Namespace, per_shard: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bakehouse-bench-shard-base-"))
    data = str(root / "data")
    ws = Store(data).workspace()
    make_sharded_target(ws, TARGET, args.stimuli, args.n, args.max_tokens)
    run_stim(ws, REPO, TARGET)
    plan = plan_for(args.stimuli, args.n, args.chunk, per_shard)
    done = subprocess.run([sys.executable, "-c", BASELINE, data, REPO, TARGET, json.dumps(plan)], cwd=PROJECT,
                          capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        sys.exit(f"baseline failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def flow_runs(api_url: str, flow_name: str, target: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
    return [r for r in runs if r.parameters["job"]["target_name"] == target]


def flow_run_state(api_url: str, run_id) -> str | None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return state.type.value if state else None


FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def one_rollout(args, api_url: str, data: str, target: str, per_shard: int, base: dict, logs: Path) -> dict:
    """Stim here, then the rollout through the `rollout` deployment; timings from storage and Prefect."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ws = Store(data).workspace()
    make_sharded_target(ws, target, args.stimuli, args.n, args.max_tokens)
    assert run_stim(ws, REPO, target).lines == args.stimuli
    job = ws.job(REPO, target, "rollout")
    started = time.time()
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        parent = run_deployment("rollout/rollout", timeout=0, parameters={
            "job": {"repo_name": REPO, "target_name": target, "data_url": data}, "stimuli_per_shard": per_shard})
    deadline = time.monotonic() + args.timeout
    polls = 0
    while job.manifest() is None:
        polls += 1
        if polls % 10 == 0 and flow_run_state(api_url, parent.id) in FINAL and job.manifest() is None:
            raise RuntimeError(f"the rollout flow run ended {flow_run_state(api_url, parent.id)} without a manifest: "
                               f"{job.status()} (logs in {logs})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no manifest after {args.timeout}s: {job.status()} (logs in {logs})")
        time.sleep(0.2)
    wall = time.time() - started
    keys = [(r["stimulus_id"], r["trajectory_id"]) for r in job.iter_rows()]
    correct = keys == [(s, t) for s in range(args.stimuli) for t in range(args.n)]
    settle = time.monotonic() + 60  # shard processes finish (release, engine close) after the last commit
    while True:
        shards = flow_runs(api_url, "rollout-shard", target)
        if all(r.state_type and r.state_type.value in FINAL for r in shards) or time.monotonic() > settle:
            break
        time.sleep(0.5)
    shards.sort(key=lambda r: (r.parameters["shard"], r.created))
    (rollout_run,) = [r for r in flow_runs(api_url, "rollout", target) if r.id == parent.id]
    plan = job.plan()
    per = plan.chunks_per_shard
    chunks = job.chunks()
    rows = []
    for run in shards:
        shard = run.parameters["shard"]
        claim = job.latest_claim(f"shard-{shard:05d}")
        mtimes = sorted(os.stat(f"{job.folder}/chunks/{i:06d}.json").st_mtime
                        for i in range(shard * per, min((shard + 1) * per, plan.num_chunks)) if i in chunks)
        start = run.start_time.timestamp() if run.start_time else float("nan")
        end = run.end_time.timestamp() if run.end_time else float("nan")
        rows.append({
            "shard": shard, "state": run.state_type.value if run.state_type else "?",
            "queue": start - run.created.timestamp(), "run": end - start,
            "to_claim": (claim.at - start) if claim else float("nan"),
            "claim_to_first": (mtimes[0] - claim.at) if claim and mtimes else float("nan"),
            "gen": base["seconds"][shard], "overhead": end - start - base["seconds"][shard],
            "start": start - started, "end": end - started,
        })
    parent_start = rollout_run.start_time.timestamp() if rollout_run.start_time else float("nan")
    return {"wall": wall, "correct": correct, "rows": rows, "lines": len(keys), "launches": len(shards),
            "parent_queue": parent_start - started,
            "max_parallel": max_overlap([(r["start"], r["end"]) for r in rows])}


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """Most shard runs in the Running state at the same moment."""
    events = sorted([(s, 1) for s, e in spans if s == s] + [(e, -1) for s, e in spans if e == e])
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def run_with_stack(args: argparse.Namespace, workers: int, per_shard: int, base: dict) -> list[dict]:
    """A fresh stack with `workers` workers per pool; the rollout as deployed, then with the GPU pool's
    concurrency limited to `workers` (one shard at a time per worker)."""
    root = Path(tempfile.mkdtemp(prefix=f"bakehouse-bench-shard-{workers}w-"))
    data = str(root / "data")
    os.environ.update(BAKEHOUSE_ROLLOUT_CHUNK=str(args.chunk), PREFECT_HOME=str(root / "prefect"))
    stack = Stack()
    results = []
    try:
        t0 = time.time()
        env = start_stack(stack, data_url=data, prefect_port=free_port(), logs=root / "logs", workers_per_pool=workers)
        up = time.time() - t0
        for variant in args.variants.split(","):
            if variant == "limited":
                done = subprocess.run([sys.executable, "-m", "prefect", "work-pool", "set-concurrency-limit", "bakehouse-gpu",
                                       str(workers)], env=env, cwd=PROJECT, capture_output=True, text=True)
                assert done.returncode == 0, done.stdout + done.stderr
            result = one_rollout(args, env["PREFECT_API_URL"], data, f"t-{variant}", per_shard, base, root / "logs")
            result.update(workers=workers, variant=variant, up=up)
            results.append(result)
            print(f"\n### {workers} worker(s) per pool, GPU pool {'limit ' + str(workers) if variant == 'limited' else 'as deployed (no limit)'}"
                  f": rollout wall {result['wall']:.1f}s (stack up in {up:.0f}s; the rollout flow run started "
                  f"{result['parent_queue']:.1f}s after submission); {result['lines']} rows, exact keys {result['correct']}, "
                  f"{result['launches']} shard runs, at most {result['max_parallel']} running at once")
            print("| shard | state | starts at s | queue s | run s | to claim s | claim->1st chunk s | generation s (baseline) | overhead s |")
            print("|---|---|---|---|---|---|---|---|---|")
            for row in result["rows"]:
                print(f"| {row['shard']} | {row['state']} | {row['start']:.1f} | {row['queue']:.1f} | {row['run']:.1f} | "
                      f"{row['to_claim']:.1f} | {row['claim_to_first']:.1f} | {row['gen']:.1f} | {row['overhead']:.1f} |")
            sys.stdout.flush()
    finally:
        stack.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stimuli", type=int, default=1200)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=25)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--variants", default="deployed,limited",
                        help="deployed: pools as `bakehouse up` makes them; limited: GPU pool concurrency limit = workers")
    args = parser.parse_args()
    per_shard = -(-args.stimuli // args.shards)
    counts = [int(w) for w in args.workers.split(",")]

    print(f"{args.stimuli} stimuli x n={args.n}, tiny-random, max_tokens {args.max_tokens}, {args.shards} shards of "
          f"{per_shard} stimuli, chunk {args.chunk}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {os.cpu_count()} CPUs")
    base = baseline(args, per_shard)
    print(f"baseline (one process, warm engine, no Prefect): engine start {base['startup']:.1f}s, generation per shard "
          + ", ".join(f"{s:.1f}s" for s in base["seconds"]) + f" (sum {sum(base['seconds']):.1f}s)", flush=True)

    results = []
    for workers in counts:
        results.extend(run_with_stack(args, workers, per_shard, base))

    print("\n| GPU pool | workers | wall s | speed-up vs 1 worker | shard runs at once (max) | median per-shard overhead s | wall - generation/workers s |")
    print("|---|---|---|---|---|---|---|")
    for result in results:
        first = next(r["wall"] for r in results if r["variant"] == result["variant"])
        overheads = [r["overhead"] for r in result["rows"]]
        end_to_end = result["wall"] - sum(base["seconds"]) / result["workers"]
        label = "as deployed" if result["variant"] == "deployed" else f"limit {result['workers']}"
        print(f"| {label} | {result['workers']} | {result['wall']:.1f} | {first / result['wall']:.2f} | {result['max_parallel']} | "
              f"{statistics.median(overheads):.1f} | {end_to_end:.1f} |")
    if not all(r["correct"] for r in results):
        sys.exit("FAILED: rows lost, duplicated or out of order")


if __name__ == "__main__":
    main()

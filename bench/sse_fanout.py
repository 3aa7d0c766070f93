"""What 100 clients following one running rollout over SSE cost the rollout.

    python bench/sse_fanout.py [--clients 100] [--stimuli 6000] [--rounds 2]

The rollout runs in a worker process of its own (as `LocalRunner` starts one) on the fake engine,
which is CPU-bound: on this 2-core machine the worker, the API and the clients share the cores, so
this is the harsh case. Rounds alternate between no client and `--clients` clients following the
job's event stream from the start to the end; the throughput (trajectories per second of the job's
own clock) of each is compared in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench.common import make_target, serve_api  # noqa: E402
from flows.stim import run_stim  # noqa: E402
from repo_store import Store  # noqa: E402

WORKER = textwrap.dedent("""
    import sys
    from flows.rollout import run_rollout
    from repo_store import Store
    status = run_rollout(Store(sys.argv[1]).workspace(), "r", sys.argv[2], chunk_size=64)
    assert status.status == "complete", status
""")


async def follow(base_url: str, key: str, target: str, clients: int, counts: list[int]) -> None:
    async def one(http: httpx.AsyncClient) -> None:
        events = 0
        async with http.stream("GET", f"/v1/repo/r/targets/{target}/rollout/events") as response:
            async for line in response.aiter_lines():
                events += line.startswith("event:")
        counts.append(events)

    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=600,
                                 limits=httpx.Limits(max_connections=clients + 10)) as http:
        await asyncio.gather(*(one(http) for _ in range(clients)))


def rollout_rate(store: Store, folder: str, target: str, base_url: str, key: str, clients: int) -> float:
    counts: list[int] = []
    watchers = threading.Thread(target=lambda: asyncio.run(follow(base_url, key, target, clients, counts))) if clients else None
    if watchers:
        watchers.start()
        time.sleep(1.0)  # every client connected before the job starts
    worker = subprocess.run([sys.executable, "-c", WORKER, folder, target], check=True)
    if watchers:
        watchers.join(timeout=120)
        assert len(counts) == clients and min(counts) >= 3, counts
    summary = store.workspace().job("r", target, "rollout").status().summary
    assert worker.returncode == 0
    return summary["trajectories"] / summary["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--stimuli", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder)
        ws = store.workspace()
        targets = [f"t{i}" for i in range(2 * args.rounds)]
        for target in targets:
            make_target(ws, "r", target, model="fake", questions=[f"question {i}?" for i in range(args.stimuli)],
                        num_traj_per_stimulus=2, max_tokens=32)
            run_stim(ws, "r", target)
        _, key = store.keys.create(workspace="default", scope="read")
        rates: dict[int, list[float]] = {0: [], args.clients: []}
        with serve_api(store) as base_url:
            for round_number in range(args.rounds):
                for offset, clients in enumerate((0, args.clients)):
                    target = targets[2 * round_number + offset]
                    rates[clients].append(rollout_rate(store, folder, target, base_url, key, clients))
                    print(f"round {round_number + 1}, {clients:3d} clients: {rates[clients][-1]:,.0f} trajectories/s")
    alone, watched = statistics.median(rates[0]), statistics.median(rates[args.clients])
    print(f"median: alone {alone:,.0f}/s, with {args.clients} SSE clients {watched:,.0f}/s: "
          f"ratio {watched / alone:.3f} (cost {100 * (1 - watched / alone):.1f} %)")


if __name__ == "__main__":
    main()

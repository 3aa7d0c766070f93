"""Chat through bakehouse's /v1/chat/completions against straight to the vLLM server behind it, and a
baked model served as a LoRA adapter against the same checkpoint merged.

    python bench/serving.py [--model tiny-random] [--requests 40] [--max-tokens 32] [--rounds 3]

Bakes a small checkpoint on `--model` (rollouts from the fake engine, a few steps of real training),
starts the API on uvicorn, and warms it (its vLLM server starts and loads the adapter). Then, in the
same run:
1. chat latency (p50, p95) and requests/s at concurrency 1 and 8, through our endpoint and straight
   to the vLLM server, the same requests (temperature 0, `max_tokens` tokens, ignore_eos), in
   alternating rounds (medians);
2. generation throughput of the checkpoint as an adapter on the base model's server against a
   server of its merged weights (both vLLM's OpenAI server on this machine), n = 4 per request,
   alternating, best of `--rounds` each.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bakehouse.serving import ChatServing  # noqa: E402
from bench.common import make_target, serve_api  # noqa: E402
from flows.bake import run_bake  # noqa: E402
from flows.rollout import run_rollout  # noqa: E402
from flows.stim import run_stim  # noqa: E402
from repo_store import Store  # noqa: E402
from targets.bake import BakeSpec  # noqa: E402

QUESTIONS = [f"Tell me about treasure number {i}." for i in range(24)]
CHECKPOINT = "default/bench/b/6"


def bake(store: Store, model: str) -> None:
    ws = store.workspace()
    # The trajectories come from the fake engine (fast); the bake trains `model` on them.
    make_target(ws, "bench", "t", model="fake", questions=QUESTIONS, num_traj_per_stimulus=2, max_tokens=16)
    run_stim(ws, "bench", "t")
    run_rollout(ws, "bench", "t")
    ws.create_bake("bench", BakeSpec(bake_name="b", overrides={
        "datasets": [{"target": "t"}], "micro_batch_size": 4, "gradient_accumulation_steps": 2, "epochs": 1,
        "model": {"parent_model_name": model}, "checkpoint": [{"save_every_n_steps": 6}]}))
    assert run_bake(ws, "bench", "b").status == "complete"


def timed_requests(url: str, headers: dict, model: str, requests: int, concurrency: int, max_tokens: int, n: int = 1) -> tuple[float, float, float, int]:
    """(p50 ms, p95 ms, requests per second, completion tokens) of `requests` chats at `concurrency`
    (greedy for n = 1, sampled with a seed per request otherwise)."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0 if n == 1 else 1.0, "ignore_eos": True, "n": n}
    latencies, tokens = [], []

    def one(index: int) -> None:
        started = time.perf_counter()
        response = client.post(f"{url}/chat/completions", headers=headers, timeout=600,
                               json={**body, "seed": index, "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}]})
        latencies.append(1000 * (time.perf_counter() - started))
        assert response.status_code == 200, response.text
        tokens.append(response.json()["usage"]["completion_tokens"])

    with httpx.Client(limits=httpx.Limits(max_connections=concurrency)) as client:
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
        seconds = time.perf_counter() - started
    latencies.sort()
    return statistics.median(latencies), latencies[int(0.95 * (len(latencies) - 1))], requests / seconds, sum(tokens)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder)
        bake(store, args.model)
        _, key = store.keys.create(workspace="default", scope="read")
        auth = {"Authorization": f"Bearer {key}"}
        serving = ChatServing()
        with serve_api(store, serving=serving) as api_url:
            ours = f"{api_url}/v1"
            timed_requests(ours, auth, CHECKPOINT, 2, 1, 4)  # warm: starts the vLLM server
            server = serving.server_for(CHECKPOINT)
            print(f"chat with {CHECKPOINT} (served {serving.checkpoints_as}), {args.requests} requests of "
                  f"{args.max_tokens} tokens:")
            print(f"{'concurrency':>11} {'path':>8} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>7}")
            for concurrency in (1, 8):
                runs = {"direct": [], "ours": []}
                for _ in range(args.rounds):  # alternated, so drift on this noisy machine hits both alike
                    runs["direct"].append(timed_requests(server.base_url, {}, CHECKPOINT, args.requests, concurrency, args.max_tokens))
                    runs["ours"].append(timed_requests(ours, auth, CHECKPOINT, args.requests, concurrency, args.max_tokens))
                direct, through = (tuple(statistics.median(r[i] for r in runs[name]) for i in range(4)) for name in ("direct", "ours"))
                for name, figures in (("direct", direct), ("ours", through)):
                    print(f"{concurrency:>11} {name:>8} {figures[0]:>8.1f} {figures[1]:>8.1f} {figures[2]:>7.2f}")
                print(f"{'':>11} overhead: p50 {100 * (through[0] / direct[0] - 1):+.1f} %, "
                      f"throughput {100 * (1 - through[2] / direct[2]):+.1f} %")
        as_adapter, as_merged = ChatServing(checkpoints_as="adapter"), ChatServing(checkpoints_as="merged")
        try:
            adapter_url = as_adapter.route(store.workspace(), CHECKPOINT).base_url
            merged_url = as_merged.route(store.workspace(), CHECKPOINT).base_url
            runs = {"adapter": [], "merged": []}
            for _ in range(args.rounds):
                for name, url in (("adapter", adapter_url), ("merged", merged_url)):
                    runs[name].append(timed_requests(url, {}, CHECKPOINT, args.requests, 8, args.max_tokens, n=4))
            adapter, whole = (min(runs[name], key=lambda figures: figures[2]) for name in ("adapter", "merged"))
        finally:
            as_adapter.close()
            as_merged.close()
    seconds = {name: args.requests / figures[2] for name, figures in (("adapter", adapter), ("merged", whole))}
    print(f"generation, n=4, concurrency 8 (best of {args.rounds}): adapter {adapter[3] / seconds['adapter']:,.0f} tok/s, "
          f"merged {whole[3] / seconds['merged']:,.0f} tok/s: the adapter runs at "
          f"{(adapter[3] / seconds['adapter']) / (whole[3] / seconds['merged']):.2f}x the merged model")


if __name__ == "__main__":
    main()

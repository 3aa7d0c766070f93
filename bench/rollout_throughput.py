"""Rollout throughput and memory benchmark: the full rollout job vs raw vLLM, on the tiny model.

    python bench/rollout_throughput.py [--stimuli 200] [--n 4] [--max-tokens 32] [--repeats 3]
                                       [--skip-rss] [--rss-sizes 10000,100000] [--rss-max-tokens 8]
                                       [--model tiny-random]

Part 1, throughput. One in-process VllmEngine on "tiny-random" (the engine's own CPU settings) is
loaded once and shared by every measurement, so engine start-up is excluded everywhere. The same
--stimuli chat prompts (a short system prompt + a distinct question), n trajectories each, the same
per-stimulus seeds (the rollout's `derive_seed(target seed, "rollout", stimulus id)`), are run as:
  raw        `LLM.chat(conversations, [SamplingParams(n=n, seed=...)])`, one batch;
  full       `flows.rollout.run_rollout` on a fresh target in a temp local Store (stim written by
             `flows.stim.run_stim` beforehand, untimed): chat rendering, streaming, Parquet chunks,
             commits, manifest;
  full-k0    the same rollout with `teacher_top_k: 0`: no teacher top-K stored (full stores 20,
             the default), to price the log-probabilities;
  duplicate  the common alternative: stimuli x n requests with n=1 through `LLM.chat`, seeded
             `seed + j` so they sample exactly what n=n samples.
Each is measured --repeats times (order rotated); the median wall seconds and trajectories/s are
printed with the ratios full/raw (throughput; target >= 0.9 on CPU) and full/duplicate, and whether
the three produced identical texts.

Part 2, memory (unless --skip-rss). For each size in --rss-sizes (trajectories = stimuli x n), a fresh
`python bench/rollout_throughput.py --rss-child SIZE` runs stim + rollout with --rss-max-tokens and
prints its peak RSS (getrusage ru_maxrss) before and after the rollout; the parent prints both
peaks and their difference in MB (target: flat, within 300 MB).

Defaults take about 3.5 minutes on 2 cores (2.5 of them the 100k-trajectory child). Not a test: machines
are noisy, ratios measured in the same run are what to compare. OMP_NUM_THREADS defaults to 1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before torch/vllm are imported: no hub, in-process engine core, one OpenMP thread (vLLM on CPU starts in seconds in-process).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# In-process vLLM edits os.environ (LD_PRELOAD, LOCAL_WORLD_SIZE): RSS children get this copy instead.
START_ENV = dict(os.environ)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bakehouse.process_defaults import apply_defaults  # noqa: E402

apply_defaults()

from repo_store import Store  # noqa: E402
from common import make_target  # noqa: E402
from targets import derive_seed  # noqa: E402

from flows.rollout import run_rollout  # noqa: E402
from flows.stim import run_stim  # noqa: E402

MODEL = "tiny-random"
REPO = "bench"
TARGET_SEED = 0
SYSTEM = "You are a helpful baker. Answer briefly and precisely."
_TOPICS = ("rye", "spelt", "sourdough", "brioche", "focaccia", "bagels", "ciabatta", "baguettes", "pretzels")
_ASPECTS = ("proof", "knead", "score", "hydrate", "cool", "store", "shape", "steam", "bake")


def question(i: int) -> str:
    """A distinct, short question per index."""
    return f"How should I {_ASPECTS[i % 9]} {_TOPICS[(i // 9) % 9]} for batch {i}?"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class OneEngine:
    """`flows.runtime.Engines` stand-in: hands out an already-loaded engine and never closes it."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def __call__(self, model: str, **options):
        return self.engine

    def close(self) -> None:
        pass


def open_tiny_engine():
    from flows.engines.vllm_engine import VllmEngine

    return VllmEngine(MODEL)  # the engine's defaults: what run_rollout would load


def make_rollout_target(store: Store, name: str, stimuli: int, n: int, max_tokens: int, top_k: int = 20) -> None:
    make_target(store.workspace(), REPO, name, model=MODEL, system=SYSTEM, num_traj_per_stimulus=n, temperature=1.0,
                max_tokens=max_tokens, seed=TARGET_SEED, questions=[question(i) for i in range(stimuli)],
                teacher_top_k=top_k)


def stored_bytes(store: Store, name: str) -> int:
    job = store.workspace().job(REPO, name, "rollout")
    return sum(part.bytes for part in job.committed_parts())


# -- part 1: throughput ----------------------------------------------------------------------------


def conversations(stimuli: int) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question(i)}] for i in range(stimuli)]


def run_raw(llm, stimuli: int, n: int, max_tokens: int) -> dict[int, list[str]]:
    from vllm import SamplingParams

    params = [SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens, seed=derive_seed(TARGET_SEED, "rollout", i))
              for i in range(stimuli)]  # fmt: skip
    outputs = llm.chat(conversations(stimuli), params, use_tqdm=False)
    return {i: [c.text for c in sorted(o.outputs, key=lambda c: c.index)] for i, o in enumerate(outputs)}


def run_duplicate(llm, stimuli: int, n: int, max_tokens: int) -> dict[int, list[str]]:
    from vllm import SamplingParams

    convs = conversations(stimuli)
    messages, params = [], []
    for i in range(stimuli):
        seed = derive_seed(TARGET_SEED, "rollout", i)
        for j in range(n):  # vLLM seeds child j of an n-request with seed + j
            messages.append(convs[i])
            params.append(SamplingParams(n=1, temperature=1.0, max_tokens=max_tokens, seed=seed + j))
    outputs = llm.chat(messages, params, use_tqdm=False)
    return {i: [outputs[i * n + j].outputs[0].text for j in range(n)] for i in range(stimuli)}


def run_full(engine, store: Store, name: str) -> dict[int, list[str]]:
    """Time only run_rollout; returns {stimulus_id: texts} read back afterwards (untimed)."""
    status = run_rollout(store.workspace(), REPO, name, engines=OneEngine(engine))
    assert status.status == "complete", status
    return status


def read_full(store: Store, name: str) -> dict[int, list[str]]:
    texts: dict[int, list[str]] = {}
    for row in store.workspace().job(REPO, name, "rollout").iter_rows():
        texts.setdefault(row["stimulus_id"], []).append((row["response"] or {}).get("content"))
    return texts


def throughput(args: argparse.Namespace) -> None:
    trajectories = args.stimuli * args.n
    t0 = time.perf_counter()
    engine = open_tiny_engine()
    llm = engine._llm  # the engine's vllm.LLM (private attribute; reused so the model loads once)
    print(f"engine start {time.perf_counter() - t0:.1f}s (excluded); {args.stimuli} stimuli x n={args.n}, "
          f"max_tokens {args.max_tokens}, {args.repeats} repeats, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")  # fmt: skip

    root = tempfile.mkdtemp(prefix="bakehouse-bench-rollout-")
    store = Store(root)
    names = [f"t{r}" for r in range(args.repeats + 1)]  # t0 warms up
    plain = [f"k0-{r}" for r in range(args.repeats)]
    for name in names + plain:
        make_rollout_target(store, name, args.stimuli, args.n, args.max_tokens, top_k=0 if name in plain else 20)
        assert run_stim(store.workspace(), REPO, name, engines=OneEngine(engine)).lines == args.stimuli

    # Warm-up (first batches pay one-off costs: tokenizer caches, allocator growth).
    run_raw(llm, args.stimuli, args.n, args.max_tokens)
    run_full(engine, store, names[0])

    seconds: dict[str, list[float]] = {"raw": [], "full": [], "full-k0": [], "duplicate": []}
    texts: dict[str, dict[int, list[str]]] = {}
    for r in range(args.repeats):
        jobs = {
            "raw": lambda: run_raw(llm, args.stimuli, args.n, args.max_tokens),
            "full": lambda: run_full(engine, store, names[r + 1]),
            "full-k0": lambda: run_full(engine, store, plain[r]),
            "duplicate": lambda: run_duplicate(llm, args.stimuli, args.n, args.max_tokens),
        }
        order = list(jobs)[r % 4:] + list(jobs)[: r % 4]  # rotate so no side always runs first
        for label in order:
            start = time.perf_counter()
            out = jobs[label]()
            seconds[label].append(time.perf_counter() - start)
            if r == 0:
                texts[label] = read_full(store, names[1]) if label == "full" else out

    med = {k: statistics.median(v) for k, v in seconds.items()}
    print(f"\n{'':<10} {'median s':>9} {'traj/s':>8}   all runs (s)")
    for label in ("raw", "full", "full-k0", "duplicate"):
        runs = " ".join(f"{s:.2f}" for s in seconds[label])
        print(f"{label:<10} {med[label]:>9.2f} {trajectories / med[label]:>8.0f}   {runs}")
    print(f"\nfull/raw throughput       {med['raw'] / med['full']:.2f}  (target >= 0.90)")
    print(f"full/duplicate throughput {med['duplicate'] / med['full']:.2f}")
    print(f"full (top-20 stored) / full-k0 throughput {med['full-k0'] / med['full']:.2f}  (target >= 0.90)")
    with_k, without = stored_bytes(store, names[1]), stored_bytes(store, plain[0])
    print(f"stored bytes per trajectory: top-20 {with_k / trajectories:.0f}, k0 {without / trajectories:.0f}")
    same_raw = texts["full"] == texts["raw"]
    same_dup = texts["duplicate"] == texts["raw"]
    print(f"identical texts: full==raw {same_raw}, duplicate==raw {same_dup}")
    engine.close()


# -- part 2: peak RSS --------------------------------------------------------------------------------


def rss_child(trajectories: int, n: int, max_tokens: int) -> None:
    stimuli = -(-trajectories // n)
    engine = open_tiny_engine()
    store = Store(tempfile.mkdtemp(prefix="bakehouse-bench-rss-"))
    make_rollout_target(store, "rss", stimuli, n, max_tokens)
    run_stim(store.workspace(), REPO, "rss", engines=OneEngine(engine))
    before = rss_mb()
    start = time.perf_counter()
    status = run_rollout(store.workspace(), REPO, "rss", engines=OneEngine(engine))
    elapsed = time.perf_counter() - start
    print(json.dumps({"trajectories": status.lines, "stimuli": stimuli, "seconds": round(elapsed, 1),
                      "peak_before_rollout_mb": round(before), "peak_mb": round(rss_mb())}))  # fmt: skip
    engine.close()


def memory(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.rss_sizes.split(",") if s.strip()]
    print(f"\npeak RSS, fresh process per size, n={args.n}, max_tokens {args.rss_max_tokens}")
    print(f"{'trajectories':>12} {'stimuli':>8} {'rollout s':>9} {'traj/s':>7} {'peak pre-rollout MB':>19} {'peak MB':>8}")
    peaks = []
    for size in sizes:
        cmd = [sys.executable, __file__, "--rss-child", str(size), "--n", str(args.n),
               "--rss-max-tokens", str(args.rss_max_tokens)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env=START_ENV)
        if done.returncode != 0:
            sys.exit(f"child for {size} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        peaks.append(result["peak_mb"])
        print(f"{result['trajectories']:>12,} {result['stimuli']:>8,} {result['seconds']:>9.1f} "
              f"{result['trajectories'] / result['seconds']:>7.0f} {result['peak_before_rollout_mb']:>19,} {result['peak_mb']:>8,}")  # fmt: skip
    if len(peaks) >= 2:
        print(f"peak difference {sizes[-1]:,} vs {sizes[0]:,}: {peaks[-1] - peaks[0]:+,} MB (target: within 300 MB)")


def main() -> None:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stimuli", type=int, default=200)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--rss-sizes", default="10000,100000", help="trajectories per child, comma-separated")
    parser.add_argument("--rss-max-tokens", type=int, default=8)
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="tiny-random", help="throughput on another model, e.g. smollm2-135m")
    args = parser.parse_args()
    MODEL = args.model
    if args.rss_child is not None:
        rss_child(args.rss_child, args.n, args.rss_max_tokens)
        return
    throughput(args)
    if not args.skip_rss:
        memory(args)


if __name__ == "__main__":
    main()

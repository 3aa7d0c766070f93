"""Output-page latency through the REST API at concurrency 1, 10 and 50, local disk and moto S3.

    python bench/api_pages.py [--rows 1000000] [--requests 200]

Builds one finished rollout-shaped job (bench/page_reads.py's `build_job`), serves it with uvicorn on
127.0.0.1, and has N client threads read random pages of 1,000 rows (`GET .../rollout/output`). Prints
p50/p99 ms per request and pages per second; the baseline is the same page read in-process (no HTTP),
measured in the same run, so the ratio shows what the API layer costs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from common import serve_api  # noqa: E402
from page_reads import build_job  # noqa: E402
from repo_store import Store  # noqa: E402

LIMIT = 1000


def measure(url: str, key: str, rows: int, concurrency: int, requests: int) -> tuple[float, float, float]:
    rng = random.Random(concurrency)
    offsets = [rng.randrange(0, rows - LIMIT) for _ in range(requests)]
    latencies: list[float] = []
    local = threading.local()

    def one(offset: int) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        start = time.perf_counter()
        response = local.client.get("/v1/repo/bench/targets/paging/rollout/output", params={"offset": offset, "limit": LIMIT})
        latencies.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200 and len(response.json()["output"]) == LIMIT

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, offsets))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1], requests / elapsed


def in_process_p50(store: Store, rows: int) -> float:
    job = store.workspace().job("bench", "paging", "rollout")
    rng = random.Random(0)
    samples = []
    for _ in range(50):
        offset = rng.randrange(0, rows - LIMIT)
        start = time.perf_counter()
        store.read_page(job, offset=offset, limit=LIMIT)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def run(label: str, store: Store, rows: int, requests: int) -> None:
    _, key = store.keys.create(workspace="default", scope="read")
    with serve_api(store) as url:
        measure_all(store, url, key, rows, requests)


def measure_all(store: Store, url: str, key: str, rows: int, requests: int) -> None:
    baseline = in_process_p50(store, rows)
    print(f"\n{label}: {rows:,} rows; in-process page p50 {baseline:.1f} ms (baseline)")
    print(f"{'concurrency':>11} {'p50 ms':>8} {'p99 ms':>8} {'pages/s':>8} {'p50 / baseline':>15}")
    for concurrency in (1, 10, 50):
        p50, p99, rate = measure(url, key, rows, concurrency, requests)
        print(f"{concurrency:>11} {p50:>8.1f} {p99:>8.1f} {rate:>8.1f} {p50 / baseline:>15.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    local = Store(tempfile.mkdtemp(prefix="bakehouse-api-bench-"))
    build_job(local, args.rows)
    run("local disk", local, args.rows, args.requests)

    import boto3

    port = 20000 + random.randrange(20000)
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1")
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        remote = Store(f"s3://{bucket}/data")
        remote.storage.fs.put(f"{local.storage.root}/", f"{bucket}/data/", recursive=True)
        run("moto S3 over HTTP", remote, args.rows, args.requests)
    finally:
        moto.terminate()
        moto.wait()


if __name__ == "__main__":
    main()

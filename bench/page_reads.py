"""Page-read benchmark: our manifest page reader vs a polars glob scan, local disk and moto S3.

    python bench/page_reads.py [--rows 1000000] [--pages 30]

Builds one finished rollout-shaped job of --rows rows (compacted into 25,000-row parts), then reads
pages of 1,000 rows at offset 0, the middle and the end. Prints p50/p99 milliseconds and HTTP
requests per page (counted at the S3 server) for both readers, and the ratio ours/baseline measured
in the same run. Not a test: machines are noisy, ratios are what to compare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from repo_store import Store, rows_to_table  # noqa: E402
from common import make_target  # noqa: E402

LIMIT = 1000


class CountingS3Server:
    """moto's S3 app behind a WSGI wrapper that counts requests (the number a real bucket bills)."""

    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log(self, *args, **kwargs) -> None:
                pass

        app = DomainDispatcherApplication(create_backend_app)
        self.requests = 0
        self.bytes_sent = 0

        def counted(environ, start_response):
            self.requests += 1
            return app(environ, start_response)

        self.server = make_server("127.0.0.1", 0, counted, threaded=True, request_handler=Quiet)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def build_job(store: Store, rows: int) -> str:
    """A target `bench/paging` whose rollout is a finished job of `rows` rows; returns the job folder
    relative to the storage root."""
    ws = store.workspace()
    make_target(ws, "bench", "paging", model="fake", questions=["q?"])
    job = ws.job("bench", "paging", "rollout")
    attempt = job.claim("bench")
    chunk = 25_000
    for index, start in enumerate(range(0, rows, chunk)):
        batch = [
            {
                "stimulus_id": i,
                "trajectory_id": 0,
                "conditioned_stimulus": {"messages": [{"role": "user", "content": f"question number {i}?"}]},
                "response": {"role": "assistant", "content": f"answer {i} " * 8},
            }
            for i in range(start, min(start + chunk, rows))
        ]
        attempt.commit_chunk(index, rows_to_table(batch, ["stimulus_id", "trajectory_id"]))
    attempt.complete((rows + chunk - 1) // chunk)
    return job.folder.removeprefix(store.storage.root + "/")


def timed(fn, pages: int, counter=None) -> tuple[float, float, float]:
    fn()  # warm: manifest and footers cached, connections open
    samples, requests = [], 0
    for _ in range(pages):
        before = counter.requests if counter else 0
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
        requests += (counter.requests - before) if counter else 0
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return statistics.median(samples), p99, requests / pages


def run(label: str, store: Store, glob: str, storage_options: dict | None, rows: int, pages: int, counter) -> None:
    ws = store.workspace()
    job = ws.job("bench", "paging", "rollout")  # the page reader is measured, not the target lookup
    print(f"\n{label}: {rows:,} rows in {len(job.committed_parts())} parts")
    print(f"{'offset':>10} {'ours p50':>9} {'p99':>7} {'req':>5} | {'polars p50':>10} {'p99':>7} {'req':>5} | {'p50 ratio':>9}")
    for offset in (0, rows // 2, rows - LIMIT):

        def ours() -> None:
            page = store.read_page(job, offset=offset, limit=LIMIT)
            assert page.rows[0]["stimulus_id"] == offset

        def baseline() -> None:
            frame = pl.scan_parquet(glob, storage_options=storage_options).slice(offset, LIMIT).select("row").collect()
            assert frame.height == LIMIT

        a = timed(ours, pages, counter)
        b = timed(baseline, pages, counter)
        print(f"{offset:>10,} {a[0]:>9.1f} {a[1]:>7.1f} {a[2]:>5.1f} | {b[0]:>10.1f} {b[1]:>7.1f} {b[2]:>5.1f} | {a[0] / b[0]:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=30)
    args = parser.parse_args()

    local_root = tempfile.mkdtemp(prefix="bakehouse-bench-")
    local = Store(local_root)
    t0 = time.perf_counter()
    folder = build_job(local, args.rows)
    print(f"built {args.rows:,} rows locally in {time.perf_counter() - t0:.1f}s")
    parts_glob = f"{local.storage.root}/{folder}/parts/compact-*.parquet"
    run("local disk", local, parts_glob, None, args.rows, args.pages, None)

    import os

    import boto3

    server = CountingS3Server()
    os.environ.update(
        AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=bucket)
    remote = Store(f"s3://{bucket}/data")
    # Copy the finished job as-is: same parts, same manifest.
    remote.storage.fs.put(f"{local.storage.root}/", f"{bucket}/data/", recursive=True)
    s3_glob = f"s3://{bucket}/data/{folder}/parts/compact-*.parquet"
    options = {"aws_endpoint_url": server.endpoint, "aws_allow_http": "true", "aws_region": "us-east-1",
               "aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
    run("moto S3 over HTTP", remote, s3_glob, options, args.rows, args.pages, server)
    server.stop()


if __name__ == "__main__":
    main()

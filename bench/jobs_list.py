"""`GET /v1/jobs` with many jobs in the workspace: the in-memory index against a scan per request.

    python bench/jobs_list.py [--jobs 10000] [--requests 50]

Writes a workspace of `--jobs` finished jobs (half stim, half rollout, through the job protocol,
with empty outputs), starts the API on a real server and times `GET /v1/jobs?limit=50` after the
first listing built the index. The baseline, in the same run, is what the listing cost without the
index: reading every job's status and timeline once (what a scan per request would do).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bakehouse.job_index import JobIndex  # noqa: E402
from bench.common import serve_api  # noqa: E402
from bakehouse.runner import LocalRunner  # noqa: E402
from repo_store import Store, rows_to_table  # noqa: E402
from targets import PromptSpec, RepoSpec, TargetSpec  # noqa: E402

TARGET = {"teacher_prompt": "teacher", "student_prompt": "student", "model_name": "fake",
          "generators": [{"type": "hardcoded", "questions": ["q?"]}]}


def write_jobs(store: Store, jobs: int) -> None:
    ws = store.workspace()
    ws.create_repo(RepoSpec(repo_name="r", base_model="fake"))
    for prompt in ("teacher", "student"):
        ws.create_prompt("r", PromptSpec(prompt_name=prompt, messages=[]))
    for index in range(jobs // 2):
        ws.create_target("r", TargetSpec(target_name=f"t{index:05d}", overrides=TARGET))
        for kind in ("stim", "rollout"):
            job = ws.job("r", f"t{index:05d}", kind)
            job.request_start()
            attempt = job.claim(owner="bench")
            attempt.commit_chunk(0, rows_to_table([], ["stimulus_id"]))
            attempt.complete(1, {})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder)
        started = time.perf_counter()
        write_jobs(store, args.jobs)
        print(f"wrote {args.jobs} jobs in {time.perf_counter() - started:.1f} s")
        _, key = store.keys.create(workspace="default", scope="read")

        baseline_index = JobIndex(Store(folder), LocalRunner(folder))
        started = time.perf_counter()
        baseline_index._scan("default")  # every job folder read once: the cost of an unindexed listing
        scan_ms = 1000 * (time.perf_counter() - started)

        with serve_api(store) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as http:
            started = time.perf_counter()
            first = http.get("/v1/jobs", params={"limit": 50}).json()
            cold_ms = 1000 * (time.perf_counter() - started)
            assert first["total"] == args.jobs, first["total"]
            times = {}
            for name, params in (("newest 50", {"limit": 50}), ("status=complete, offset 5000", {"status": "complete", "offset": 5000}),
                                 ("kind=stim", {"kind": "stim", "limit": 200})):
                samples = []
                for _ in range(args.requests):
                    started = time.perf_counter()
                    assert http.get("/v1/jobs", params=params).status_code == 200
                    samples.append(1000 * (time.perf_counter() - started))
                times[name] = statistics.median(samples)
    print(f"first listing (builds the index by a scan): {cold_ms:,.0f} ms")
    print(f"baseline, a scan of every job (an unindexed listing would pay this per request): {scan_ms:,.0f} ms")
    for name, p50 in times.items():
        print(f"GET /v1/jobs {name}: p50 {p50:.1f} ms   (scan / indexed = {scan_ms / p50:,.0f}x)")


if __name__ == "__main__":
    main()

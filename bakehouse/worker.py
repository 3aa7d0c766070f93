"""`python -m bakehouse.worker stim|rollout|target --repo R --target T` or `bake --repo R --bake B`:
run one job's Prefect flow.

Started by the API's local runner; also handy by hand. Exit code 0 when the job is complete (or
already owned by another live worker), 1 when it failed.
"""

from __future__ import annotations

import argparse
import signal
import sys

from bakehouse.process_defaults import apply_defaults


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bakehouse.worker")
    parser.add_argument("kind", choices=["stim", "rollout", "target", "bake"])
    parser.add_argument("--workspace", default="default")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--target")
    parser.add_argument("--bake")
    parser.add_argument("--processes", type=int, default=1, help="bake: data-parallel processes (one per GPU)")
    parser.add_argument("--data", default=None)
    args = parser.parse_args(argv)
    apply_defaults()
    # SIGTERM (runner shutdown, cancel) unwinds like Ctrl-C, so the attempt is released for resuming.
    signal.signal(signal.SIGTERM, _interrupt)

    if (args.kind == "bake") != (args.bake is not None) or (args.kind != "bake") != (args.target is not None):
        parser.error("bake needs --bake; stim, rollout and target need --target")
    from flows.bake import bake_flow
    from flows.params import BakeJob, TargetJob
    from flows.pipeline import target_flow
    from flows.rollout import rollout_flow
    from flows.stim import stim_flow

    if args.kind == "bake":
        flow, job = bake_flow, BakeJob(repo_name=args.repo, bake_name=args.bake, workspace=args.workspace, data_url=args.data,
                                          processes=args.processes)
    else:
        flow = {"stim": stim_flow, "rollout": rollout_flow, "target": target_flow}[args.kind]
        job = TargetJob(repo_name=args.repo, target_name=args.target, workspace=args.workspace, data_url=args.data)
    try:
        result = flow(job)
    except Exception as error:  # noqa: BLE001 - the job records the error on storage; say it here too
        print(f"bakehouse worker: {args.kind} {args.repo}/{args.target or args.bake} failed: {error}", file=sys.stderr)
        return 1
    return 0 if result.get("status", "complete") != "failed" else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # stopped (SIGTERM/Ctrl-C); an owned attempt was already released
        sys.exit(130)

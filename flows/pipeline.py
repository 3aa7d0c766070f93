"""The target pipeline: stim, then rollout, as one Prefect flow run with two subflow runs."""

from __future__ import annotations

from prefect import flow

from flows.params import TargetJob
from flows.rollout import rollout_flow
from flows.stim import stim_flow


@flow(name="target", log_prints=True)
def target_flow(job: TargetJob, stimuli_per_shard: int = 0) -> dict:
    """Stim then rollout for one target; each step is idempotent, so rerunning resumes where it stopped."""
    stim = stim_flow(job)
    if stim["status"] != "complete":
        return {"stim": stim, "rollout": None}
    return {"stim": stim, "rollout": rollout_flow(job, stimuli_per_shard)}

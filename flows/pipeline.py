"""The target pipeline: stim, then rollout, as one Prefect flow run with two subflow runs."""

from __future__ import annotations

from prefect import flow

from flows.rollout import rollout_flow
from flows.stim import stim_flow


@flow(name="target", log_prints=True)
def target_flow(repo_name: str, target_name: str, workspace: str = "default", data_url: str | None = None) -> dict:
    """Stim then rollout for one target; each step is idempotent, so rerunning resumes where it stopped."""
    stim = stim_flow(repo_name, target_name, workspace, data_url)
    if stim["status"] != "complete":
        return {"stim": stim, "rollout": None}
    return {"stim": stim, "rollout": rollout_flow(repo_name, target_name, workspace, data_url)}

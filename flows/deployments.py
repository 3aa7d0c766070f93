"""Prefect deployments as the distributed engine: shard runs are flow runs on the GPU work pool.

Deployment names match prefect.yaml: `<flow name>/<deployment name>`.
"""

from __future__ import annotations

from typing import Any

from flows.params import TargetJob

STIM = "stim/stim"
ROLLOUT = "rollout/rollout"
ROLLOUT_SHARD = "rollout-shard/rollout-shard"
TARGET = "target/target"
BAKE = "bake/bake"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def in_deployment() -> bool:
    """Whether this flow run was started from a deployment (so shard deployments can be reached)."""
    from prefect.runtime import deployment

    return bool(deployment.id)


def flow_run_state(flow_run_id: Any) -> str | None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return state.type.value if state else None


class DeploymentShardLauncher:
    """Launches rollout shards through the `rollout-shard` deployment."""

    def __init__(self, job: TargetJob):
        self.job = job

    def launch(self, shard: int, job_gen: int, launch_number: int, attempt_token: str) -> Any:
        from prefect.deployments import run_deployment

        run = run_deployment(
            ROLLOUT_SHARD,
            parameters={"job": self.job.model_dump(), "shard": shard, "job_attempt": job_gen},
            timeout=0,
            as_subflow=True,
            # A repeated launch of the same shard by the same attempt is the same flow run. The token,
            # not the names: a target created again under its name (or the same names in another data
            # folder sharing this Prefect server) starts its generations at 1 again.
            idempotency_key=f"rollout/{attempt_token}/shard-{shard}/{launch_number}",
        )
        return run.id

    def finished(self, handle: Any) -> bool:
        return flow_run_state(handle) in FINAL_STATES

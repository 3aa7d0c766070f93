"""Flow parameters: references to a target, never data (Prefect caps parameters at 512 KB).

They are pydantic models so the Prefect UI's "Custom run" renders a form with titles and help.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TargetJob(BaseModel):
    """Which target's job to run, and where its data lives."""

    model_config = ConfigDict(extra="forbid")

    repo_name: str = Field(title="Repository", description="The repository that holds the target.")
    target_name: str = Field(title="Target", description="The target whose stim or rollout to run.")
    workspace: str = Field("default", title="Workspace", description="The workspace (namespace of repositories).")
    data_url: str | None = Field(
        None,
        title="Storage URL",
        description="A folder or s3://bucket/prefix. Empty: the worker's BAKEHOUSE_DATA.",
    )


class BakeJob(BaseModel):
    """Which bake to run, and where its data lives."""

    model_config = ConfigDict(extra="forbid")

    repo_name: str = Field(title="Repository", description="The repository that holds the bake.")
    bake_name: str = Field(title="Bake", description="The bake to train (or resume).")
    processes: int = Field(1, ge=1, title="Processes", description="Data-parallel processes on the machine (one per GPU).")
    workspace: str = Field("default", title="Workspace", description="The workspace (namespace of repositories).")
    data_url: str | None = Field(
        None,
        title="Storage URL",
        description="A folder or s3://bucket/prefix. Empty: the worker's BAKEHOUSE_DATA.",
    )

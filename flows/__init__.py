"""Orchestration: Prefect flows for stim and rollout, and the generation engines they drive."""

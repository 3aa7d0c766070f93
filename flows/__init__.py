"""Orchestration: the stim and rollout jobs, their Prefect flows, and the generation engines they drive.

    flows/stim.py       run_stim / stim_flow          generators -> stimulus rows
    flows/rollout.py    run_rollout / rollout_flow    stimuli -> trajectories (vLLM, n per request)
    flows/pipeline.py   target_flow                   stim then rollout
    flows/engines/      in-process vLLM, OpenAI-compatible HTTP, a fake for tests
"""

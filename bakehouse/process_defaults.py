"""Process-wide defaults of other tools (Prefect, vLLM, the model hub), applied by every entry point
before Prefect or vLLM is imported. bakehouse's own settings are repo_store.settings."""

from __future__ import annotations

import os

_DEFAULTS = {
    # A temporary Prefect server starts in each process that has no PREFECT_API_URL: on 2 cores it
    # can take 20 s, past Prefect's own default timeout.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # No model hub is needed for the reserved models; never hang trying to reach one.
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_LOGGING_LEVEL": "ERROR",
}


def apply_defaults() -> None:
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)

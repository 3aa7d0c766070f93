"""bakehouse: stim -> rollout training data, Bread-compatible. The edges: API, SDK and CLI.

    bakehouse/api.py      FastAPI routes (thin) -> bakehouse/service.py -> repo_store / runner
    bakehouse/client.py   the Python SDK (`from bakehouse import Client, AsyncClient`); its parts in bakehouse/_sdk/
    bakehouse/cli.py      the `bakehouse` command
"""

from bakehouse.client import (
    APIConnectionError,
    APIError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    BakehouseError,
    Client,
    ConflictError,
    InternalServerError,
    JobFailed,
    JobNotComplete,
    JobTimeout,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnexpectedResponseError,
    UnprocessableEntityError,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BakehouseError",
    "Client",
    "ConflictError",
    "InternalServerError",
    "JobFailed",
    "JobNotComplete",
    "JobTimeout",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "UnexpectedResponseError",
    "UnprocessableEntityError",
]

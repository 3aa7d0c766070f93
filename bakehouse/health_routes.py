"""`GET /v1/health`: the one route without an API key."""

from fastapi import APIRouter

from bakehouse import schemas as s
from bakehouse.errors import ERROR_RESPONSES

VERSION = "0.1.0"

router = APIRouter(tags=["health"])


@router.get("/health", response_model=s.HealthResponse, responses={500: ERROR_RESPONSES[500]})
def health() -> s.HealthResponse:
    return s.HealthResponse(status="healthy", version=VERSION)

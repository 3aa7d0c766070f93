"""The Bread-compatible REST API: `create_app` builds the app's shared state, middleware and error
handlers and includes one router per resource. The routes are thin, over bakehouse.service:

    health_routes   /v1/health
    job_routes      /v1/jobs, and each target's stim and rollout job
    repo_routes     /v1/repo, /v1/repo/{repo_name}
    recipe_routes   a repo's bake tree, a bake's dependency graph and recreation plan
    prompt_routes   /v1/repo/{repo_name}/prompts...
    target_routes   /v1/repo/{repo_name}/targets... (and the dry run of a create)
    bake_routes     /v1/repo/{repo_name}/bakes..., and /v1/downloads/{token}
    chat_routes     /v1/models, /v1/chat/completions (OpenAI-compatible)

Their dependencies (state, API key, `Service`, shared parameters) are in bakehouse.dependencies,
the error envelope in bakehouse.errors, the schemas in bakehouse.schemas.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
from fastapi import APIRouter, FastAPI

from bakehouse import bake_routes, chat_routes, health_routes, job_routes, prompt_routes, recipe_routes, repo_routes, target_routes
from bakehouse.errors import ERROR_RESPONSES, add_exception_handlers
from bakehouse.events import JobWatches
from bakehouse.health_routes import VERSION
from bakehouse.job_index import JobIndex
from bakehouse.limits import BodySizeLimit, RateLimiter, RateLimitHeaders
from bakehouse.runner import LocalRunner, Runner
from bakehouse.serving import ChatServing
from bakehouse.usage import UsageRecorder
from bakehouse.viewer import mount_viewer
from repo_store import Store
from repo_store.settings import get_settings

__all__ = ["VERSION", "app_from_env", "create_app"]

# In this order: a literal path (`.../batch`, `.../validate`) must come before the `{name}` path it
# would match too, and each module keeps its own in that order.
ROUTERS = (health_routes.router, job_routes.router, repo_routes.router, recipe_routes.router, prompt_routes.router,
           target_routes.router, bake_routes.router, chat_routes.router)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    state.usage.start()
    try:
        yield
    finally:
        state.usage.close()
        await state.upstream.aclose()
        await anyio.to_thread.run_sync(state.serving.close)


def create_app(
    store: Store,
    runner: Runner | None = None,
    *,
    max_body_bytes: int | None = None,
    rate_limit_per_hour: int | None = None,
    serving: ChatServing | None = None,
) -> FastAPI:
    """The API over `store`. Limits default to BAKEHOUSE_MAX_BODY_BYTES (10 MB) and
    BAKEHOUSE_RATE_LIMIT_PER_HOUR (36,000 requests per key, bursts included). Key usage is written
    to storage every BAKEHOUSE_USAGE_FLUSH_SECONDS (5) while the app runs, and at its shutdown."""
    settings = get_settings()
    app = FastAPI(title="bakehouse (Bread-compatible API)", version=VERSION, lifespan=lifespan)
    state = app.state  # what bakehouse.dependencies hands the routes
    state.store = store
    state.runner = runner or LocalRunner(store.url)
    state.job_index = JobIndex(store, state.runner)
    state.usage = UsageRecorder(store.keys, flush_every=settings.usage_flush_seconds)
    state.limiter = RateLimiter(rate_limit_per_hour or settings.rate_limit_per_hour)
    state.serving = serving or ChatServing()
    state.upstream = httpx.AsyncClient()
    state.watches = JobWatches()
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes or settings.max_body_bytes)
    add_exception_handlers(app)
    v1 = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)
    for router in ROUTERS:
        v1.include_router(router)
    app.include_router(v1)
    mount_viewer(app)
    return app


def app_from_env() -> FastAPI:
    """For `uvicorn bakehouse.api:app_from_env --factory` (storage from BAKEHOUSE_DATA)."""
    from bakehouse.process_defaults import apply_defaults

    apply_defaults()
    return create_app(Store(get_settings().data))

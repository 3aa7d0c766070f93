"""Fuzz every operation of the OpenAPI schema (schemathesis) with every check: no 5xx, responses match
the schema, invalid input is rejected, and valid input is accepted.

Runs in-process against the ASGI app with a runner that records job starts instead of spawning
workers, over a store seeded with a repo, prompts, a target and a bake so that valid paths exist.
"""

from __future__ import annotations

import tempfile

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES

from bakehouse.api import create_app
from runners import RecordingRunner
from repo_store import Store
from targets import PromptSpec, RepoSpec, TargetSpec
from targets.bake import BakeSpec


store = Store(tempfile.mkdtemp(prefix="bakehouse-fuzz-"))
_, KEY = store.keys.create(workspace="default", scope="write")
_ws = store.workspace()
_ws.create_repo(RepoSpec(repo_name="r", base_model="fake"))
_ws.create_prompt("r", PromptSpec(prompt_name="p", messages=[]))
_ws.create_target("r", TargetSpec(target_name="t", overrides={
    "teacher_prompt": "p", "student_prompt": "p", "generators": [{"type": "hardcoded", "questions": ["q?"]}]}))
_ws.create_bake("r", BakeSpec(bake_name="b", overrides={"datasets": [{"target": "t"}]}))

CONFIG = SchemathesisConfig.from_dict({
    # Through the security scheme, so that the cases that leave the key out (negative data) stay without it.
    "auth": {"openapi": {"HTTPBearer": {"bearer": KEY}}},
    # A schema cannot say what exists (404), what conflicts (409) or what is not possible yet (400
    # INVALID_INPUT: "stim must complete first", a template that does not exist): schema-valid
    # requests meet those by design. Malformed input is 422, which valid data must never get.
    "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES, "400"]}},
})
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(store, RecordingRunner()), config=CONFIG)


def refused_only_for_state(ctx, response, case):
    """Valid data may meet 400 only as "not possible now" (Bread's INVALID_INPUT), or on the
    OpenAI-compatible chat as a value past this server's limits (`n`): never as malformed input."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 400:
        return None
    body = response.json()
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    assert body.get("code") == "INVALID_INPUT" or error.get("code") == "invalid_value", f"valid data refused: {body}"
    return None


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_check_passes(case):
    case.call_and_validate(additional_checks=[refused_only_for_state])

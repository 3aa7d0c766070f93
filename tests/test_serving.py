"""Chat with base and baked models through /v1/chat/completions: the official `openai` client against
our server, which starts a real vLLM server (tiny model, LoRA) on first use and loads a baked
checkpoint's adapter from storage."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from bakehouse.api import create_app
from flows.bake import run_bake
from flows.rollout import run_rollout
from flows.stim import run_stim
from repo_store import Store
from net import serve_app
from runners import RecordingRunner
from targets import TargetSpec
from targets.bake import BakeSpec
from tests.test_bake import BAKE, baked_workspace

pytestmark = pytest.mark.vllm

MESSAGES = [{"role": "user", "content": "Where is the treasure?"}]


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("serving-data")))
    ws = baked_workspace(store)
    ws.create_bake("r", BakeSpec(bake_name="b", overrides=BAKE))
    assert run_bake(ws, "r", "b").status == "complete"
    ws.create_bake("r", BakeSpec(bake_name="unfinished", overrides=BAKE))
    ws.bake_run("r", ws.get_bake("r", "unfinished")).job.claim(owner="elsewhere")  # running on another machine
    keys = {"read": store.keys.create(workspace="default", scope="read")[1],
            "other": store.keys.create(workspace="elsewhere", scope="read")[1]}
    app = create_app(store, RecordingRunner())
    with serve_app(app, stop_timeout=60) as url:
        yield {"url": url, "keys": keys, "app": app, "store": store,
               "client": openai.OpenAI(base_url=f"{url}/v1", api_key=keys["read"], max_retries=0, timeout=600)}


def test_models_lists_the_base_model_and_every_checkpoint_of_finished_bakes(chat):
    ids = [model.id for model in chat["client"].models.list().data]
    assert ids == ["tiny-random", "default/r/b/6", "default/r/b/4", "default/r/b/2"]
    other = openai.OpenAI(base_url=f"{chat['url']}/v1", api_key=chat["keys"]["other"], max_retries=0)
    assert [model.id for model in other.models.list().data] == []


def test_chat_with_a_baked_checkpoint_and_the_base_model(chat):
    client = chat["client"]
    baked = client.chat.completions.create(model="default/r/b/6", messages=MESSAGES, max_tokens=8, n=2,
                                           temperature=1.0, seed=7, logprobs=True, top_logprobs=2)
    assert baked.model == "default/r/b/6" and len(baked.choices) == 2
    assert all(choice.message.content is not None for choice in baked.choices)
    assert len(baked.choices[0].logprobs.content[0].top_logprobs) == 2
    again = client.chat.completions.create(model="default/r/b/6", messages=MESSAGES, max_tokens=8, n=2,
                                           temperature=1.0, seed=7)
    assert [c.message.content for c in again.choices] == [c.message.content for c in baked.choices]  # seeded
    base = client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=8, temperature=0)
    assert base.model == "tiny-random" and base.choices[0].finish_reason in ("stop", "length")
    # The adapter changes the model: greedy answers of base and checkpoint differ in their log-probabilities.
    greedy = client.chat.completions.create(model="default/r/b/6", messages=MESSAGES, max_tokens=8, temperature=0,
                                            logprobs=True)
    plain = client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=8, temperature=0,
                                           logprobs=True)
    assert greedy.choices[0].logprobs.content[0].logprob != plain.choices[0].logprobs.content[0].logprob
    serving = chat["app"].state.serving
    assert serving.checkpoints_as == "merged"  # on the CPU: the checkpoint's own server, its weights merged
    assert {server.served_name for server in serving.servers()} == {"tiny-random", "default/r/b/6"}


def test_a_checkpoint_served_as_an_adapter_on_its_parents_server(chat):
    """The GPU default: one server per parent, the checkpoint's LoRA adapter loaded from storage on demand."""
    from bakehouse.serving import ChatServing

    serving = ChatServing(checkpoints_as="adapter")
    try:
        ws = chat["store"].workspace()
        route = serving.route(ws, "default/r/b/6")
        assert route.served_model == "default/r/b/6"
        answer = httpx.post(f"{route.base_url}/chat/completions", timeout=120, json={
            "model": route.served_model, "messages": MESSAGES, "max_tokens": 6, "temperature": 0, "logprobs": True})
        assert answer.status_code == 200, answer.text
        assert serving.route(ws, "default/r/b/4").base_url == route.base_url  # the same server, a second adapter
        (server,) = serving.servers()
        assert (server.served_name, server.loaded_adapters()) == ("tiny-random", ["default/r/b/6", "default/r/b/4"])
        merged = chat["client"].chat.completions.create(model="default/r/b/6", messages=MESSAGES, max_tokens=6,
                                                        temperature=0, logprobs=True)
        first = answer.json()["choices"][0]["logprobs"]["content"][0]
        assert first["token"] == merged.choices[0].logprobs.content[0].token  # adapter on base = merged weights
        assert abs(first["logprob"] - merged.choices[0].logprobs.content[0].logprob) < 1e-3
    finally:
        serving.close()


def test_streaming_ends_with_done_and_a_client_that_hangs_up_frees_its_sequences(chat):
    chunks = list(chat["client"].chat.completions.create(model="default/r/b/6", messages=MESSAGES, max_tokens=8,
                                                         temperature=0, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    with httpx.stream("POST", f"{chat['url']}/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {chat['keys']['read']}"},
                      json={"model": "default/r/b/6", "messages": MESSAGES, "max_tokens": 1500, "n": 16,
                            "temperature": 1.0, "stream": True, "ignore_eos": True}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        # Left alone this request generates for ≈ 6 s more (16 × 1,500 tokens on the tiny model here).
        server = chat["app"].state.serving.server_for("default/r/b/6")
        metrics = server.base_url.removesuffix("/v1") + "/metrics"
        assert _running_requests(httpx.get(metrics).text) >= 1
    deadline = time.monotonic() + 1.5
    while _running_requests(httpx.get(metrics).text) > 0:
        assert time.monotonic() < deadline, "the abandoned request kept generating"
        time.sleep(0.2)
    raw = httpx.post(f"{chat['url']}/v1/chat/completions", headers={"Authorization": f"Bearer {chat['keys']['read']}"},
                     json={"model": "tiny-random", "messages": MESSAGES, "max_tokens": 4, "stream": True}, timeout=60)
    assert raw.text.rstrip().endswith("data: [DONE]")


def _running_requests(metrics: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("vllm:num_requests_running"))


@pytest.mark.parametrize(("model", "status", "code"), [
    ("no-such-model", 404, "model_not_found"),
    ("default/r/missing/6", 404, "model_not_found"),
    ("default/r/b/5", 404, "model_not_found"),  # a step that was never checkpointed
    ("elsewhere/r/b/6", 404, "model_not_found"),  # another workspace's name for it
    ("default/r/unfinished/2", 409, "model_not_ready"),
])
def test_models_that_cannot_be_served_get_openai_errors(chat, model, status, code):
    with pytest.raises(openai.APIStatusError) as refused:
        chat["client"].chat.completions.create(model=model, messages=MESSAGES, max_tokens=4)
    assert refused.value.status_code == status and refused.value.body["code"] == code


def test_bad_sampling_settings_are_400s(chat):
    client = chat["client"]
    with pytest.raises(openai.BadRequestError, match="'n' must be"):
        client.chat.completions.create(model="tiny-random", messages=MESSAGES, n=1000)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-random", messages=MESSAGES, max_tokens=10**6)
    other = openai.OpenAI(base_url=f"{chat['url']}/v1", api_key=chat["keys"]["other"], max_retries=0)
    with pytest.raises(openai.NotFoundError):  # another workspace's checkpoint reads as missing
        other.chat.completions.create(model="default/r/b/6", messages=MESSAGES, max_tokens=4)


def test_a_rollout_with_a_baked_model_through_the_openai_engine(chat, monkeypatch):
    """The OpenAI engine pointed at our own /v1: the checkpoint is served as an adapter, and the rows
    name the baked model."""
    ws = chat["store"].workspace()
    ws.create_target("r", TargetSpec(target_name="with-baked", overrides={
        "teacher_prompt": "teacher", "student_prompt": "student", "model_name": "default/r/b/6",
        "num_traj_per_stimulus": 2, "max_tokens": 6, "generators": [{"type": "hardcoded", "questions": ["Ahoy?", "Where to?"]}]}))
    run_stim(ws, "r", "with-baked")
    monkeypatch.setenv("BAKEHOUSE_OPENAI_BASE_URL", f"{chat['url']}/v1")
    monkeypatch.setenv("BAKEHOUSE_OPENAI_API_KEY", chat["keys"]["read"])
    status = run_rollout(ws, "r", "with-baked")
    assert (status.status, status.lines, status.summary["errors"]) == ("complete", 4, 0), status.error
    rows = ws.read_page("r", "with-baked", "rollout", limit=10, include_tokens=True).rows
    assert {row["model"] for row in rows} == {"default/r/b/6"}
    assert all(row["response_token_ids"] and len(row["teacher_top_ids"][0]) == 20 for row in rows)


def test_the_viewer_asks_the_parent_the_prompted_parent_and_the_checkpoint_side_by_side(chat):
    from browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("needs Debian's chromium (scripts/test.sh installs it)")
    browser = Browser()
    try:
        browser.open(f"{chat['url']}/ui/#key={chat['keys']['read']}&repo=r&bake=b")
        browser.wait_for("document.querySelector('#ask') !== null")
        browser.type_into("#question", "Where is the treasure?")
        browser.click("#ask button")
        browser.wait_for("document.querySelectorAll('#answers .answer [data-done]').length === 3", timeout=120)
        titles = browser.evaluate("[...document.querySelectorAll('#answers strong')].map(s => s.textContent)")
        assert titles == ["before: tiny-random", "tiny-random + teacher prompt", "after: default/r/b/6"]
        assert browser.evaluate("document.querySelectorAll('#answers .error').length") == 0
        shown = browser.evaluate("document.querySelectorAll('#answers .text')[2].textContent")
        expected = chat["client"].chat.completions.create(model="default/r/b/6", messages=MESSAGES, max_tokens=128,
                                                          temperature=0).choices[0].message.content
        assert shown == expected  # the checkpoint's own greedy answer, as text
    finally:
        browser.close()

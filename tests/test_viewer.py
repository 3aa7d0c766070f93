"""The web viewer at /ui in a real browser (Debian's headless Chromium) against a real server.

Screenshots of the main pages are kept under BAKEHOUSE_SCREENSHOTS (default build/screenshots/).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from bakehouse.api import create_app
from browser import Browser, chromium_path
from flows.rollout import run_rollout
from flows.stim import run_stim
from repo_store import Store
from net import serve_app
from runners import SlowRunner
from targets import PromptSpec, RepoSpec, TargetSpec
from targets.bake import BakeSpec

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (scripts/test.sh installs it)")

SCREENSHOTS = Path(os.environ.get("BAKEHOUSE_SCREENSHOTS", Path(__file__).resolve().parents[1] / "build" / "screenshots"))
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def add_target(ws, name: str, questions: list[str], n: int = 2) -> None:
    ws.create_target("r", TargetSpec(target_name=name, overrides={
        "teacher_prompt": "teacher", "student_prompt": "student", "model_name": "fake", "num_traj_per_stimulus": n,
        "max_tokens": 12, "generators": [{"type": "hardcoded", "questions": questions}]}))


def add_finished_bake(ws) -> None:
    """A bake as a finished training leaves it on storage: a checkpoint whose marker carries the
    logged steps (the viewer only reads; a real bake needs a real model)."""
    ws.create_bake("r", BakeSpec(bake_name="b", overrides={"datasets": [{"target": "t"}]}))
    run = ws.bake_run("r", ws.get_bake("r", "b"))
    attempt = run.job.claim(owner="test")
    metrics = [{"iter": step, "loss": 0.4 / step, "epoch": step / 8} for step in range(1, 9)]
    run.write_checkpoint(8, {"adapter_model.safetensors": b"weights", "adapter_config.json": b"{}"},
                         gen=attempt.gen, token=attempt.token, metrics=metrics)
    attempt.complete(0, {})


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("viewer-data")))
    ws = store.workspace()
    ws.create_repo(RepoSpec(repo_name="r", base_model="fake"))
    ws.create_prompt("r", PromptSpec(prompt_name="teacher", messages=[{"role": "system", "content": "Answer like a pirate."}]))
    ws.create_prompt("r", PromptSpec(prompt_name="student", messages=[]))
    add_target(ws, "t", [f"What is {i} plus {i}?" for i in range(30)])
    add_target(ws, "hostile", [f"Please repeat {HOSTILE}"], n=1)
    add_target(ws, "slow", [f"slow question {i}?" for i in range(16)])
    for target in ("t", "hostile", "slow"):
        run_stim(ws, "r", target)
    for target in ("t", "hostile"):
        run_rollout(ws, "r", target)
    add_finished_bake(ws)
    keys = {"write": store.keys.create(workspace="default", scope="write")[1],
            "read": store.keys.create(workspace="default", scope="read")[1],
            "other": store.keys.create(workspace="elsewhere", scope="read")[1]}
    with serve_app(create_app(store, SlowRunner(store))) as url:
        browser = Browser()
        yield {"url": url, "keys": keys, "browser": browser}
        browser.close()


def fresh(site) -> Browser:
    """The tab, signed out (the key lives in the tab's session storage only)."""
    browser = site["browser"]
    browser.open(f"{site['url']}/ui/")
    browser.evaluate("sessionStorage.clear()")
    browser.open("about:blank")
    return browser


def test_sign_in_and_walk_from_repos_to_a_rollout(site):
    browser = fresh(site)
    browser.open(f"{site['url']}/ui/")
    browser.wait_for("document.querySelector('#signin') !== null")
    browser.type_into("#key", "bh_not_a_key")
    browser.click("#signin button")
    assert "not accepted" in browser.wait_for("document.querySelector('#signin-error')?.textContent")
    browser.evaluate("document.querySelector('#key').value = ''")
    browser.type_into("#key", site["keys"]["read"])
    browser.click("#signin button")
    assert browser.wait_for("document.querySelector('#repos')?.textContent") == "r"
    browser.wait_for("document.querySelectorAll('#jobs tbody tr').length >= 6")  # stim, rollout, bake
    browser.screenshot(SCREENSHOTS / "repos.png")
    browser.click("#repos a")
    assert browser.wait_for("document.querySelector('#targets')?.textContent") == "hostileslowt"
    browser.click("#targets li:last-child a")
    browser.wait_for("document.querySelectorAll('.stimulus').length === 10")
    assert browser.evaluate("sessionStorage.getItem('bakehouse.key')") == site["keys"]["read"]
    assert browser.evaluate("document.cookie") == ""


def test_a_deep_link_opens_the_rollout_and_pages_through_it(site):
    browser = fresh(site)
    browser.open(f"{site['url']}/ui/#key={site['keys']['read']}&repo=r&target=t")
    assert browser.wait_for("document.querySelector('#page-range')?.textContent") == "rows 1–20 of 60"
    assert "key=" not in browser.evaluate("location.href")  # taken out of the address bar at once
    first = browser.evaluate("[...document.querySelectorAll('.stimulus')].map(s => s.dataset.stimulus)")
    assert first == [str(i) for i in range(10)]
    assert browser.evaluate("document.querySelector('.stimulus .contexts').textContent").startswith("teachersystemAnswer like a pirate.")
    assert browser.evaluate("document.querySelectorAll('.stimulus[data-stimulus=\"0\"] .response').length") == 2
    browser.wait_for("document.querySelector('#job-status')?.textContent === 'complete'")
    browser.screenshot(SCREENSHOTS / "rollout.png")
    browser.click("#next")
    assert browser.wait_for("document.querySelector('#page-range')?.textContent === 'rows 21–40 of 60' && 'ok'") == "ok"
    assert browser.evaluate("document.querySelector('.stimulus').dataset.stimulus") == "10"
    browser.type_into("#filter-text", "17 plus")
    browser.evaluate("document.querySelector('#filter-text').dispatchEvent(new Event('input'))")
    assert browser.evaluate("[...document.querySelectorAll('.stimulus')].map(s => s.dataset.stimulus)") == ["17"]


def test_a_running_rollout_moves_on_the_page_without_a_reload(site):
    browser = fresh(site)
    browser.open(f"{site['url']}/ui/#key={site['keys']['write']}&repo=r&target=slow")
    browser.wait_for("document.querySelector('#job-status')?.textContent === 'not_started'")
    browser.evaluate("window.__same_page = true")
    started = httpx.post(f"{site['url']}/v1/repo/r/targets/slow/rollout",
                         headers={"Authorization": f"Bearer {site['keys']['write']}"}).json()
    assert started["status"] in ("not_started", "running")
    seen = set()
    deadline = time.monotonic() + 60
    while "complete" not in browser.text("#job-status"):
        assert time.monotonic() < deadline
        seen.add(browser.evaluate("document.querySelector('#job').dataset.progress"))
        time.sleep(0.05)
    assert len(seen - {"", None}) >= 3, seen  # 8 chunks: the bar moved several times
    assert browser.evaluate("window.__same_page") is True
    assert browser.wait_for("document.querySelector('#page-range')?.textContent") == "rows 1–20 of 32"
    assert "compacting" in browser.evaluate("document.querySelector('#timeline').textContent")


def test_what_a_model_or_user_wrote_is_shown_as_text_never_run(site):
    browser = fresh(site)
    browser.open(f"{site['url']}/ui/#key={site['keys']['read']}&repo=r&target=hostile")
    browser.wait_for("document.querySelectorAll('.stimulus').length === 1")
    assert HOSTILE in browser.evaluate("document.querySelector('.stimulus .contexts').textContent")
    assert browser.evaluate("document.querySelectorAll('#main script, #main img').length") == 0
    time.sleep(0.3)
    assert browser.evaluate("window.__pwned === undefined") is True
    page = httpx.get(f"{site['url']}/ui/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert httpx.get(f"{site['url']}/ui/app.js").headers["content-type"].startswith("text/javascript")


def test_a_read_key_sees_the_bake_and_another_workspace_sees_nothing(site):
    browser = fresh(site)
    browser.open(f"{site['url']}/ui/#key={site['keys']['read']}&repo=r&bake=b")
    assert browser.wait_for("document.querySelector('#loss-chart path')?.dataset.points") == "8"
    assert browser.wait_for("document.querySelector('#checkpoints')?.textContent").startswith("default/r/b/8")
    browser.wait_for("document.querySelector('#job-status')?.textContent === 'complete'")
    browser.screenshot(SCREENSHOTS / "bake.png")

    browser = fresh(site)
    browser.open(f"{site['url']}/ui/#key={site['keys']['other']}")
    assert browser.wait_for("document.querySelector('#no-repos')?.textContent") == "No repositories in this workspace."
    assert browser.evaluate("document.querySelectorAll('#jobs tbody tr').length") == 0
    browser.open(f"{site['url']}/ui/#key={site['keys']['other']}&repo=r&target=t")
    assert "not found" in browser.wait_for("document.querySelector('#main .error')?.textContent")
    assert json.loads(json.dumps(browser.evaluate("document.querySelectorAll('.stimulus').length"))) == 0

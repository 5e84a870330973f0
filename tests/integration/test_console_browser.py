"""The console in a real headless Chromium (Debian's `chromium`, driven by Playwright), against the
real stack through Envoy: the playground streams an answer and fills the call panel, the dashboard
charts the data the test made, and a tenant key sees nothing of another tenant.

No `playwright install`: Playwright drives the system browser (`executable_path`). A machine
without it fails here with the command that installs it, rather than skipping.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support.polling import eventually_sync
from tests.support.text import unique_words
from tollway.cli import _create_key
from tollway.launcher.stack import Stack

pytestmark = pytest.mark.timeout(120)

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SLOW_MODEL = "fake-gap-40-words-40"  # 40 words, 40 ms apart: longer than the output guard holds back


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/install_system.sh (apt-get install chromium)")
    with sync_playwright() as p:
        # Root needs --no-sandbox; Playwright adds --headless itself.
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def key_for(stack: Stack, tenant: str) -> str:
    # Playwright's sync API runs an event loop in this thread: the key is made in another one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _create_key(stack.redis_url, tenant)).result()[0]


def signed_in(browser: Browser, stack: Stack, key: str, view: str) -> tuple[Page, list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{stack.edge_url}/ui/#{view}")
    page.fill("#api-key", key)
    page.click("#signin button[type=submit]")
    page.wait_for_selector(f"#{view}:not([hidden])")
    return page, errors


def make_calls(stack: Stack, key: str, count: int, **extra: Any) -> list[str]:
    ids = []
    with httpx.Client(base_url=stack.edge_url, headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        for _ in range(count):
            body = {
                "model": "fake-priced",
                "messages": [{"role": "user", "content": f"chart me {unique_words()}"}],
                "max_tokens": 16,
                "cache_policy": {"mode": "CACHE_MODE_BYPASS"},
                **extra,
            }
            res = client.post("/v1/complete", json=body)
            assert res.status_code == 200, res.text
            ids.append(res.json()["request_id"])

        def listed() -> bool:
            calls = client.get("/v1/calls", params={"page_size": 500}).json()["calls"]
            return set(ids) <= {c["fields"]["request_id"] for c in calls}

        eventually_sync(listed, timeout_s=10, what="the calls recorded")
    return ids


def chart(page: Page, canvas_id: str) -> dict[str, Any]:
    """The chart's labels and data as Chart.js holds them, and how many canvas pixels are painted."""
    return page.evaluate(
        """(id) => {
            const c = document.getElementById(id);
            const ch = Chart.getChart(c);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let painted = 0; for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) painted++;
            const axes = ch.data.datasets.map((_, i) => (ch.getDatasetMeta(i).yScale || {}).id);
            return {labels: ch.data.labels, data: ch.data.datasets.map(s => s.data), painted, axes};
        }""",
        canvas_id,
    )


def wait_until(page: Page, function: str, arg: Any = None, timeout_s: float = 15) -> Any:
    """Polls a JS function in the page until it returns something truthy.

    Not ``page.wait_for_function``: that compiles its predicate with eval, which the console's
    Content-Security-Policy forbids, as it should; ``evaluate`` is not subject to it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = page.evaluate(function, arg)
        if value:
            return value
        assert time.monotonic() < deadline, f"{function} stayed falsy for {timeout_s} s"
        page.wait_for_timeout(25)


def refreshed(page: Page) -> None:
    page.click("#dash-controls button[type=submit]")
    wait_until(page, "() => document.getElementById('dash-state').textContent.startsWith('updated')")


def test_the_playground_streams_the_answer_and_fills_the_call_panel(browser: Browser, stack: Stack) -> None:
    page, errors = signed_in(browser, stack, key_for(stack, f"play-{uuid.uuid4().hex[:6]}"), "playground")
    wait_until(page, "(m) => [...document.getElementById('model').options].some(o => o.value === m)", SLOW_MODEL)
    page.select_option("#model", SLOW_MODEL)
    page.check("#bypass-cache")
    # Every text the answer box shows, recorded by the page itself as it changes (polling from
    # here could miss states on a loaded machine).
    page.evaluate(
        """() => {
            window.answerStates = [];
            const box = document.getElementById('answer');
            new MutationObserver(() => window.answerStates.push(box.textContent))
                .observe(box, {childList: true, characterData: true, subtree: true});
        }"""
    )
    page.click("#send")
    wait_until(page, "() => ['done', 'failed', 'ended'].includes(document.getElementById('stream-state').textContent)")
    assert page.inner_text("#stream-state") == "done"
    states = [s for s in page.evaluate("() => window.answerStates") if s]
    final = page.inner_text("#answer")
    assert final.split() == [f"tick{i}" for i in range(40)]
    intermediate = [s for s in states if s and s != final]
    assert len(set(intermediate)) >= 2, f"the answer did not arrive incrementally: {states}"
    assert all(b.startswith(a) for a, b in itertools.pairwise(states)), states

    assert page.inner_text("#p-model") == SLOW_MODEL
    assert page.inner_text("#p-provider") == "fakeai"
    assert page.inner_text("#p-tier") == "not consulted"
    assert page.inner_text("#p-tokens").replace(" ", "").split("/")[1].isdigit()
    assert page.inner_text("#p-cost").startswith("$")
    assert page.inner_text("#p-latency").endswith(" ms") and page.inner_text("#p-ttft").endswith(" ms")
    request_id = page.inner_text("#p-request")
    assert len(request_id) >= 8

    page.click("#thumbs-up")
    wait_until(page, "() => document.getElementById('feedback-state').textContent.includes('thanks')")
    assert not errors, errors
    page.close()


def test_the_dashboard_charts_the_calls_the_test_made(browser: Browser, stack: Stack) -> None:
    tenant = f"dash-{uuid.uuid4().hex[:6]}"
    key = key_for(stack, tenant)
    feature = f"feat-{uuid.uuid4().hex[:6]}"
    ids = make_calls(stack, key, 3, feature=feature)
    page, errors = signed_in(browser, stack, key, "dashboard")
    refreshed(page)

    model = chart(page, "chart-model")
    assert model["labels"] == ["fake-priced"] and model["data"][1] == [3]
    assert model["data"][0][0] > 0  # cost in dollars
    assert model["painted"] > 1000
    assert model["axes"] == ["y", "calls"]  # cost and calls each on their own scale, not cost crushed to 0
    assert chart(page, "chart-feature")["labels"] == [feature]
    assert chart(page, "chart-tenant")["labels"] == [tenant]
    day = chart(page, "chart-day")
    assert sum(day["data"][1]) == 3 and day["painted"] > 1000
    assert chart(page, "chart-tier")["labels"] == ["none"]
    listed = page.eval_on_selector_all("#calls tbody tr", "rows => rows.map(r => r.dataset.requestId)")
    assert set(ids) <= set(listed)
    compare = page.inner_text("#compare tbody")
    assert "fake-priced" in compare
    # Beside usage: the tenant's budget from the budget service, the router's breakers.
    assert tenant in page.inner_text("#budgets tbody")
    assert "fakeai/" in page.inner_text("#breakers tbody")
    assert chart(page, "chart-budget")["painted"] > 100
    assert page.inner_text("#overview-state") == ""
    assert not errors, errors
    page.close()


def test_a_tenant_key_cannot_see_another_tenants_data(browser: Browser, stack: Stack) -> None:
    a, b = f"vis-a-{uuid.uuid4().hex[:6]}", f"vis-b-{uuid.uuid4().hex[:6]}"
    key_a, key_b = key_for(stack, a), key_for(stack, b)
    ids_a = make_calls(stack, key_a, 2, feature="only-a")
    ids_b = make_calls(stack, key_b, 1, feature="only-b")

    page, errors = signed_in(browser, stack, key_b, "dashboard")
    refreshed(page)
    assert chart(page, "chart-tenant")["labels"] == [b]
    assert chart(page, "chart-feature")["labels"] == ["only-b"]
    listed = set(page.eval_on_selector_all("#calls tbody tr", "rows => rows.map(r => r.dataset.requestId)"))
    assert set(ids_b) <= listed and not set(ids_a) & listed
    # Asking for tenant A by name is refused by the server, and the page says why.
    page.fill("#tenant-filter", a)
    page.click("#dash-controls button[type=submit]")
    page.wait_for_selector("#notice:not([hidden])")
    assert "403" in page.inner_text("#notice") and f"cannot read tenant '{a}'" in page.inner_text("#notice")
    assert not errors, errors
    page.close()

    admin, errors = signed_in(browser, stack, key_for(stack, "admin"), "dashboard")
    refreshed(admin)
    assert {a, b} <= set(chart(admin, "chart-tenant")["labels"])
    admin.close()

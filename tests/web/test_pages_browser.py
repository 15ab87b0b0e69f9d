"""The pages in a real headless browser (Debian's chromium, driven by Playwright).

One execution goes the whole way a paged engineer sees it: it waits for an approval, the approve
button is clicked in the browser, then its PromQL verification (against a small fake Prometheus whose
consumer backlog shrinks too slowly) fails and it escalates. The detail page must show the step
outputs and the measured values; screenshots land in test-artifacts/.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, async_playwright, expect
from support.app_client import AppClient, Client
from support.flow import alert_body, poll, write_config

from service.settings import Secrets, Settings

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
TOKEN = "browser-operator-token"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

RULES = """
rules:
  - name: drain-consumer
    match: ['alertname="NatsJetStreamUnhealthy"']
    status: firing
    playbook: drain
    limits: {cooldown: 0, max_runs: 10, window: 1h, concurrency: parallel}
"""

PLAYBOOK = """
name: drain
description: restart the consumer after an approval, then watch the backlog drain
runbook: "T-OPS-04 §3B consumer backlog: drain, then purge only with the stream owner"
steps:
  - name: inspect
    type: exec
    argv: ["{python}", "-c", "print('consumer router-in: pending 1500'); print('redeliveries 12'); print('ack floor 88213')"]
  - {{name: confirm, type: approval, prompt: "restart consumer router-in?", timeout: 120}}
  - name: restart-consumer
    type: exec
    argv: ["{python}", "-c", "print('consumer router-in restarted')"]
verify:
  interval: 0.15
  within: 0.9
  checks:
    - name: backlog
      type: promql
      query: nats_consumer_num_pending
      expect: {{op: "<", value: 100}}
      prometheus_url: "{prometheus}"
"""


@pytest.fixture
async def fake_prometheus() -> AsyncIterator[str]:
    """Answers every instant query with two consumers' backlogs, shrinking each poll but never enough."""
    polls = 0

    async def query(request: web.Request) -> web.Response:
        nonlocal polls
        polls += 1
        result = [
            {"metric": {"consumer": "router-in"}, "value": [1.0 + polls, str(1500 - 110 * polls)]},
            {"metric": {"consumer": "router-retry"}, "value": [1.0 + polls, str(400 - 20 * polls)]},
        ]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})

    app = web.Application()
    app.router.add_post("/api/v1/query", query)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
async def service(tmp_path: Path, fake_prometheus: str, app_client: AppClient) -> Client:
    playbook = PLAYBOOK.format(python=sys.executable, prometheus=fake_prometheus)
    settings = Settings.model_validate(write_config(tmp_path, RULES, {"drain": playbook}))
    secrets = Secrets(webhook_bearer_token=None, webhook_basic_password=None, operator_token=TOKEN)
    return await app_client(settings, secrets)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail("chromium is missing: apt-get install chromium (Debian package `chromium`)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        await launched.close()


async def _state(client: Client, execution_id: str, states: set[str]) -> dict[str, Any] | None:
    report = await (await client.get(f"/api/v1/executions/{execution_id}")).json()
    return report if report["execution"]["state"] in states else None


async def _screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000, f"{path}: {len(data)} bytes"
    return path


async def test_a_paged_engineer_approves_then_reads_the_escalation(service: Client, browser: Browser) -> None:
    client = service
    assert (await client.post("/hooks/alertmanager", json=alert_body(marker="b1"))).status == 200

    async def waiting() -> dict[str, Any] | None:
        rows = (await (await client.get("/api/v1/executions")).json())["executions"]
        return rows[0] if rows and rows[0]["state"] == "awaiting_approval" else None

    run = await poll(waiting)
    base = str(client.make_url("")).rstrip("/")
    page = await browser.new_page(viewport={"width": 1100, "height": 900})

    # the approval, as clicked by a person
    await page.goto(f"{base}/executions/{run['id']}")
    await expect(page.locator("#actions")).to_contain_text("restart consumer router-in?")
    await page.fill("#token", TOKEN)
    await page.fill("#by", "oncall-alice")
    await page.click("#approve")
    await expect(page.locator(".notice")).to_have_text("Approved: the execution continues.")
    assert TOKEN not in page.url
    report = await poll(lambda: _state(client, run["id"], {"escalated", "failed", "succeeded"}))
    assert report["execution"]["state"] == "escalated"

    # the failed-and-escalated detail page
    await page.goto(f"{base}/executions/{run['id']}")
    outcome = page.locator("#outcome")
    await expect(outcome).to_contain_text("escalated")
    await expect(outcome).to_contain_text("verification did not hold within 0.9s")
    await expect(outcome).to_contain_text("T-OPS-04 §3B")
    steps = page.locator("#steps > ol > li")
    await expect(steps).to_have_count(3)
    await expect(steps.nth(1)).to_contain_text("approved by oncall-alice")
    # step outputs are collapsed when the step went well: open one as a reader would
    inspect_output = steps.nth(0).locator("pre.output")
    await expect(inspect_output).to_be_hidden()
    await steps.nth(0).locator("summary").click()
    await expect(inspect_output).to_be_visible()
    await expect(inspect_output).to_contain_text("consumer router-in: pending 1500")
    # what verification measured: a line per consumer, with its values, and every poll in the table
    chart = page.locator("#verification svg.chart")
    await expect(chart).to_be_visible()
    await expect(chart.locator("polyline")).to_have_count(2)
    legend = page.locator("#verification .legend")
    await expect(legend).to_contain_text('backlog{consumer="router-in"}: 1390, 1280, 1170')
    polls = page.locator("#polls tbody tr")
    assert await polls.count() >= 3
    await expect(polls.first).to_contain_text("backlog: FAILED")
    await expect(page.locator("#people")).to_contain_text("approval: approved by oncall-alice")
    await expect(page.locator("#people")).to_contain_text("escalation (critical)")
    await _screenshot(page, "pages-detail-escalated.png")

    # the same page on a phone: nothing wider than the screen
    phone = await browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    await phone.goto(f"{base}/executions/{run['id']}")
    assert await phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await _screenshot(phone, "pages-detail-phone.png")

    # the index lists it, and the rule's figures count the escalation
    await page.goto(f"{base}/?state=escalated")
    await expect(page.locator("#executions tbody tr")).to_have_count(1)
    await expect(page.locator("#executions")).to_contain_text("drain-consumer")
    await expect(page.locator("#figures")).to_contain_text("drain-consumer")
    await page.click(f"#executions a[href='/executions/{run['id']}']")
    await expect(page.locator("h1")).to_contain_text("NatsJetStreamUnhealthy")
    await page.goto(f"{base}/")
    await _screenshot(page, "pages-index.png")

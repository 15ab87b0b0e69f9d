"""The HTML pages in process: index (order, pagination, filters, figures), detail, actions, escaping."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from support.app_client import AppClient, Client
from support.flow import alert_body, poll, write_config

from service.settings import Secrets, Settings
from service.store import NewExecution
from service.web.runtime import RUNTIME

TOKEN = "op-secret-token"
PAYLOAD = '<script>alert(1)</script>" onmouseover="x'

RULES = """
rules:
  - name: page-test
    match: ['alertname="NatsJetStreamUnhealthy"']
    status: firing
    playbook: {playbook}
    limits: {{cooldown: 0, max_runs: 100, window: 1h, concurrency: parallel}}
"""

# An exec step that prints `text` (argv, never a shell) and a verification that never holds.
FAILING = """
name: failing
runbook: "T-OPS-04 §1A restart the node"
steps:
  - name: print
    type: exec
    argv: ["{python}", "-c", "import sys; print('before'); print(sys.argv[1])", {text}]
verify:
  interval: 0.1
  within: 0.3
  checks:
    - name: never
      type: exec
      argv: ["{python}", "-c", "import sys; sys.exit(1)"]
"""

APPROVAL = """
name: gated
runbook: "T-OPS-04 §2 purge"
steps:
  - {{type: approval, prompt: "purge the stream?", timeout: 60}}
  - name: after
    type: exec
    argv: ["{python}", "-c", "print('approved and ran')"]
"""

ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def service(tmp_path: Path, app_client: AppClient) -> ClientFactory:
    async def make(playbook: str = FAILING, text: str = "after", token: str | None = TOKEN) -> Client:
        source = playbook.format(python=sys.executable, text=_yaml_string(text))
        name = re.search(r"^name: (\S+)", source, re.M)
        assert name is not None
        config = write_config(tmp_path, RULES.format(playbook=name[1]), {name[1]: source})
        config["alertmanager_url"] = "http://127.0.0.1:9093"
        settings = Settings.model_validate(config)
        secrets = Secrets(webhook_bearer_token=None, webhook_basic_password=None, operator_token=token)
        return await app_client(settings, secrets)

    return make


def _yaml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _page(client: Client, path: str, status: int = 200) -> str:
    response = await client.get(path)
    assert response.status == status, await response.text()
    assert response.content_type == "text/html"
    return await response.text()


async def _run(client: Client, body: dict[str, Any], states: set[str]) -> dict[str, Any]:
    assert (await client.post("/hooks/alertmanager", json=body)).status == 200

    async def done() -> dict[str, Any] | None:
        rows = (await (await client.get("/api/v1/executions")).json())["executions"]
        return rows[0] if rows and rows[0]["state"] in states else None

    return await poll(done)


def _text(html: str) -> str:
    """The page as a reader sees it: tags gone, entities decoded, spaces collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


# --- index ----------------------------------------------------------------------------------------

T0 = datetime(2026, 11, 27, 19, 0, tzinfo=UTC)


async def _seed(client: Client) -> None:
    """Seven executions a minute apart over two rules and two targets; the later ones end in states."""
    store = client.server.app[RUNTIME].store
    for n in range(7):
        rule, target = ("alpha", "node-a") if n % 2 else ("beta", "node-b")
        at = T0 + timedelta(minutes=n)
        await store.create_execution(
            NewExecution(
                id=f"ex-{n}",
                rule=rule,
                rule_version="v",
                playbook="pb",
                playbook_version="v",
                target=target,
                occurrence_id=None,
                fingerprint=f"fp{n}",
                alertname=f"Alert{n % 3}",
                mode="enforce",
                params={},
                state="queued",
            ),
            at,
        )
        state = ("succeeded", "escalated", "refused")[n % 3]
        await store.set_state(f"ex-{n}", "running", at)
        await store.set_state(f"ex-{n}", state, at + timedelta(seconds=10 * (n + 1)), f"reason {n}")


def _ids(html: str) -> list[str]:
    return re.findall(r'href="/executions/(ex-\d)"', html)


async def test_index_is_newest_first_and_paginates_with_links(service: ClientFactory) -> None:
    client = await service()
    await _seed(client)
    first = await _page(client, "/?limit=3")
    assert _ids(first) == ["ex-6", "ex-5", "ex-4"]
    assert 'rel="prev"' not in first
    older = unescape(re.search(r'href="([^"]+)" rel="next"', first)[1])  # type: ignore[index]
    second = await _page(client, older)
    assert _ids(second) == ["ex-3", "ex-2", "ex-1"]
    last = await _page(client, unescape(re.search(r'href="([^"]+)" rel="next"', second)[1]))  # type: ignore[index]
    assert _ids(last) == ["ex-0"]
    assert 'rel="next"' not in last
    newer = unescape(re.search(r'href="([^"]+)" rel="prev"', last)[1])  # type: ignore[index]
    assert _ids(await _page(client, newer)) == ["ex-3", "ex-2", "ex-1"]


async def test_index_filters_by_state_rule_alertname_target_and_time(service: ClientFactory) -> None:
    client = await service()
    await _seed(client)
    assert _ids(await _page(client, "/?state=escalated")) == ["ex-4", "ex-1"]
    assert _ids(await _page(client, "/?rule=alpha")) == ["ex-5", "ex-3", "ex-1"]
    assert _ids(await _page(client, "/?alertname=Alert0")) == ["ex-6", "ex-3", "ex-0"]
    assert _ids(await _page(client, "/?target=node-b&state=succeeded")) == ["ex-6", "ex-0"]
    assert _ids(await _page(client, "/?since=2026-11-27T19:02&until=2026-11-27T19:05")) == ["ex-4", "ex-3", "ex-2"]
    # filters survive pagination, and the form shows them back
    page = await _page(client, "/?rule=beta&limit=1")
    assert _ids(page) == ["ex-6"]
    assert "rule=beta" in unescape(re.search(r'href="([^"]+)" rel="next"', page)[1])  # type: ignore[index]
    assert 'name="rule" value="beta"' in page
    assert (await client.get("/?since=yesterday")).status == 400
    # a time whose UTC form a datetime cannot hold is a bad filter too, not an overflow (a 500)
    assert (await client.get("/", params={"since": "0001-01-01T00:00+01:00"})).status == 400
    assert (await client.get("/", params={"until": "9999-12-31T23:59-01:00"})).status == 400


async def test_index_shows_per_rule_figures(service: ClientFactory) -> None:
    client = await service()
    await _seed(client)
    figures = _text((await _page(client, "/")).split('id="figures"')[1])
    # alpha: ex-1 escalated, ex-3 succeeded (40 s), ex-5 refused -> 2 runs, 1 fix, 1 escalation, 1 refusal
    assert "alpha 2 1 1 1 40.0 s" in figures
    # beta: ex-0 (10 s) and ex-6 (70 s) succeeded, ex-2 refused, ex-4 escalated; median of 10 and 70
    assert "beta 3 2 1 1 40.0 s" in figures


async def test_an_alert_no_rule_matches_is_logged_counted_and_listed(
    service: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await service()
    with caplog.at_level(logging.INFO, logger="remediator.intake"):
        for _ in range(2):  # Alertmanager re-sends it: one occurrence, said once
            body = alert_body(fingerprint="d15cf011", alertname="DiskFull", marker="u1")
            assert (await client.post("/hooks/alertmanager", json=body)).status == 200
    said = [r for r in caplog.records if r.getMessage() == "no rule matches the alert"]
    assert [(r.alertname, r.fingerprint, r.status) for r in said] == [("DiskFull", "d15cf011", "firing")]  # type: ignore[attr-defined]
    metrics = await (await client.get("/metrics")).text()
    assert 'remediator_alerts_unmatched_total{alertname="DiskFull"} 1.0' in metrics
    await _run(client, alert_body(marker="m1"), {"escalated"})  # one a rule matches is not listed

    async def listed_twice() -> str | None:  # a re-send acknowledged from memory is counted within a second
        listed = _text((await _page(client, "/")).split('id="unmatched"')[1].split("</table>")[0])
        return listed if "2 time(s) since" in listed else None

    listed = await poll(listed_twice, what="the re-send counted on the index")
    assert "DiskFull firing" in listed and 'marker="u1"' in listed
    assert "NatsJetStreamUnhealthy" not in listed


# --- detail ---------------------------------------------------------------------------------------


async def test_detail_of_a_failed_and_escalated_execution(service: ClientFactory) -> None:
    client = await service(text="restarted node 3")
    run = await _run(client, alert_body(marker="d1"), {"escalated"})
    html = await _page(client, f"/executions/{run['id']}")
    text = _text(html)
    assert "NatsJetStreamUnhealthy on 127.0.0.1:19101" in text
    assert "escalated" in text and "verification did not hold within 0.3s" in text
    assert "JetStream unhealthy on 127.0.0.1:19101" in text  # the summary annotation
    assert "2026-11-27 19:53:15Z" in text  # since when
    assert 'href="http://127.0.0.1:19090/graph?g0.expr=nats_lab_jetstream_healthy+%3D%3D+0&amp;g0.tab=1"' in html
    silence = "http://127.0.0.1:9093/#/silences/new?filter=%7Balertname%3D%22NatsJetStreamUnhealthy%22%2C%20cluster%3D%22lab%22"
    assert silence in html
    assert "restarted node 3" in text and "exit code 0" in text
    assert "never: FAILED" in text  # the verification table
    assert "T-OPS-04 §1A restart the node" in text  # what to do next
    assert re.search(r"escalation</strong> \(critical\)", html)
    assert 'id="approve"' not in html and 'id="ack"' in html  # nothing to approve; an open escalation
    response = await client.post(
        f"/executions/{run['id']}/ack", data={"token": TOKEN, "by": "bob"}, allow_redirects=False
    )
    assert response.headers["Location"] == f"/executions/{run['id']}?result=ack"
    html = await _page(client, response.headers["Location"])
    assert "Acknowledged." in html and 'id="ack"' not in html
    assert "acknowledged" in _text(html.split('id="escalations"')[1]) and "<strong>bob</strong>" in html


STOP_THEN_FAIL = """
name: stop-then-fail
steps:
  - name: router_stop
    type: exec
    argv: ["{python}", "-c", "print('stopped')"]
  - name: router_start
    type: exec
    argv: ["{python}", "-c", "import sys; print('starting'); sys.exit('ERROR: port 9000 in use ' + sys.argv[1])", {text}]
"""


async def test_a_failed_step_says_why_from_its_stderr_and_what_ran_before(service: ClientFactory) -> None:
    client = await service(playbook=STOP_THEN_FAIL, text="(by pid 42)")
    run = await _run(client, alert_body(marker="s1"), {"escalated"})
    html = await _page(client, f"/executions/{run['id']}")
    why = _text(html.split('id="why"')[1].split("</p>")[0])
    assert why.startswith('> Why: step "router_start" failed:')
    assert why.endswith("(stderr: ERROR: port 9000 in use (by pid 42))")
    assert _text(html.split('id="progress"')[1].split("</p>")[0]) == (
        "> What it did: router_stop succeeded, router_start failed"
    )
    report = await (await client.get(f"/api/v1/executions/{run['id']}")).json()
    start = report["steps"][-1]
    assert (start["stdout"], start["stderr"]) == ("starting\n", "ERROR: port 9000 in use (by pid 42)\n")
    assert "stderr" not in start["data"]
    schema = (await (await client.get("/api/v1/openapi.json")).json())["components"]["schemas"]["Step"]
    assert {"output", "stdout", "stderr"} <= set(schema["properties"])


async def test_a_missing_execution_is_a_404_page(service: ClientFactory) -> None:
    client = await service()
    assert "No execution" in await _page(client, "/executions/nope", status=404)


async def test_approve_and_deny_forms_take_the_token_from_the_form(service: ClientFactory) -> None:
    client = await service(playbook=APPROVAL)
    run = await _run(client, alert_body(marker="a1"), {"awaiting_approval"})
    page = await _page(client, f"/executions/{run['id']}")
    assert 'id="approve"' in page and 'type="password"' in page and TOKEN not in page
    # when it times out (UTC, and how long is left) and what approving runs
    assert re.search(r"Decide before \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \((59|60)\.\d s left\)", _text(page))
    assert _text(page.split('id="next-steps"')[1].split("</ol>")[0]) == "> after (exec)"

    async def act(action: str, token: str) -> str:
        response = await client.post(
            f"/executions/{run['id']}/{action}", data={"token": token, "by": "alice"}, allow_redirects=False
        )
        assert response.status == 303
        assert TOKEN not in response.headers["Location"]
        return response.headers["Location"]

    assert await act("approve", "wrong") == f"/executions/{run['id']}?result=unauthorized"
    assert "The operator token was not accepted." in await _page(client, f"/executions/{run['id']}?result=unauthorized")
    assert 'id="ack"' in page  # the approval request is an open escalation too
    assert await act("approve", TOKEN) == f"/executions/{run['id']}?result=approve"

    async def succeeded() -> dict[str, Any] | None:
        report = await (await client.get(f"/api/v1/executions/{run['id']}")).json()
        return report if report["execution"]["state"] == "succeeded" else None

    report = await poll(succeeded)
    assert any(s["name"] == "after" and "approved and ran" in s["output"] for s in report["steps"])
    text = _text(await _page(client, f"/executions/{run['id']}"))
    assert "approval : approved by alice" in text
    assert await act("deny", TOKEN) == f"/executions/{run['id']}?result=conflict"  # nothing pending now


async def test_without_an_operator_token_the_forms_say_approvals_are_disabled(service: ClientFactory) -> None:
    client = await service(playbook=APPROVAL, token=None)
    run = await _run(client, alert_body(marker="a2"), {"awaiting_approval"})
    response = await client.post(f"/executions/{run['id']}/deny", data={"token": "x"}, allow_redirects=False)
    assert response.headers["Location"].endswith("?result=forbidden")


# --- escaping -------------------------------------------------------------------------------------


async def test_alert_labels_annotations_and_output_are_shown_as_text(service: ClientFactory) -> None:
    client = await service(text=PAYLOAD)
    body = alert_body(marker="x1", evil=PAYLOAD)
    alert = body["alerts"][0]
    alert["annotations"].update(summary=PAYLOAD, description=PAYLOAD, note=PAYLOAD, runbook_url="javascript:alert(1)")
    alert["generatorURL"] = "javascript:alert(1)"
    run = await _run(client, body, {"escalated"})
    for html in (await _page(client, f"/executions/{run['id']}"), await _page(client, "/")):
        assert "<script>" not in html
        assert '" onmouseover="' not in html
        assert 'href="javascript:' not in html
    detail = await _page(client, f"/executions/{run['id']}")
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&#34; onmouseover=&#34;x"
    assert detail.count(escaped) >= 4  # the label, summary, description, other annotation, output
    assert re.search(r'<pre class="output">before\n' + re.escape(escaped), detail)
    assert _text(detail).count(PAYLOAD) >= 4
    # the silence link carries the label URL-encoded, inside a quoted attribute
    assert "evil%3D%22%3Cscript%3Ealert%281%29%3C%2Fscript%3E%5C%22%20onmouseover%3D%5C%22x%22" in detail
    response = await client.get(f"/executions/{run['id']}")
    assert "script-src" not in response.headers["Content-Security-Policy"]  # default-src 'none' forbids scripts
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


async def test_the_figures_and_filtered_lists_are_read_off_indexes(service: ClientFactory) -> None:
    """The 100,000-execution bench depends on these plans; an edited expression or index shows here."""
    client = await service()
    store = client.server.app[RUNTIME].store
    fix = "(julianday(finished_at) - julianday(created_at)) * 86400.0"

    async def plan(sql: str, *args: Any) -> str:
        rows = await store.read(lambda conn: conn.execute(f"EXPLAIN QUERY PLAN {sql}", args).fetchall())
        return " ".join(str(tuple(row)[-1]) for row in rows)

    median = await plan(f"SELECT {fix} FROM executions WHERE rule = ? AND state = 'succeeded' ORDER BY {fix}", "r")
    assert "executions_rule_state_fix" in median and "TEMP B-TREE" not in median
    for column in ("rule", "target", "alertname", "state"):
        listed = await plan(
            f"SELECT * FROM executions WHERE {column} = ? ORDER BY created_at DESC, id DESC LIMIT 5", "x"
        )
        assert f"executions_{column}_created" in listed and "TEMP B-TREE" not in listed

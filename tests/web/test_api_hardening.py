"""Issue 15's web items, in process: bad bytes are 4xx (never 500), filters are checked, reads can be
guarded by a read token, and bodies are bounded and read only after the credentials check out."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.app_client import AppClient, Client
from support.service_proc import ServiceProcess

from service.settings import Secrets, Settings
from service.store import NewExecution
from service.web.runtime import RUNTIME

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FIRING = (FIXTURES / "alertmanager" / "firing-nats-jetstream-unhealthy.json").read_bytes()
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
OPERATOR, READER, WEBHOOK = "op-secret-1", "rd-secret-2", "wh-secret-3"

ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(tmp_path: Path, app_client: AppClient) -> ClientFactory:
    made = 0

    async def make(secrets: Secrets | None = None, **settings: Any) -> Client:
        nonlocal made
        config = Settings.model_validate(
            {
                "store": {"path": str(tmp_path / f"store{made}.db")},
                "rules": [str(FIXTURES / "rules" / "*.yaml")],
                "playbooks": [str(FIXTURES / "playbooks" / "*.yaml")],
                **settings,
            }
        )
        made += 1
        return await app_client(config, secrets or Secrets(None, None, OPERATOR))

    return make


def stored(client: Client) -> tuple[int, ...]:
    with sqlite3.connect(client.app[RUNTIME].store.path) as conn:
        return tuple(
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("notifications", "executions", "pauses", "limit_resets")
        )


async def raw_request(client: Client, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Bytes no HTTP client library would send (header values that are not UTF-8)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head + b"\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# --- 500s that become 4xx --------------------------------------------------------------------------


async def test_authorization_bytes_that_are_not_utf8_are_401(make_client: ClientFactory) -> None:
    client = await make_client(Secrets(WEBHOOK, None, OPERATOR))
    for head in (
        b"POST /hooks/alertmanager HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: Bearer \xff\xfe",
        b"POST /hooks/alertmanager HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: Basic \xff\xfe",
        b"POST /api/v1/executions/x/approve HTTP/1.1\r\nAuthorization: Bearer \xff" + OPERATOR.encode(),
        b"POST /-/reload HTTP/1.1\r\nAuthorization: Bearer \xc3\x28",
    ):
        status, _ = await raw_request(client, head, FIRING if b"hooks" in head else b"")
        assert status == 401, head
    assert stored(client) == (0, 0, 0, 0)


async def test_a_person_named_in_bytes_that_are_not_utf8_is_still_recorded(make_client: ClientFactory) -> None:
    client = await make_client()
    status, body = await raw_request(
        client,
        b"POST /api/v1/limits/reset HTTP/1.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + OPERATOR.encode() + b"\r\nX-Remediator-User: j\xf6rg",
        b'{"rule": "nats-down", "target": "n1"}',
    )
    assert status == 200, body
    assert json.loads(body)["by"] == "j\ufffdrg"


@pytest.mark.parametrize("path", ["/hooks/alertmanager", "/api/v1/simulate"])
async def test_garbage_declared_gzip_is_400(make_client: ClientFactory, path: str) -> None:
    client = await make_client()
    response = await client.post(path, data=b"\x00 not gzip", headers={**JSON, "Content-Encoding": "gzip"})
    assert response.status == 400
    assert "cannot be read" in (await response.json())["error"]
    assert stored(client) == (0, 0, 0, 0)


async def test_json_in_another_charset_is_415(make_client: ClientFactory) -> None:
    client = await make_client()
    for charset in ("utf-16", "latin-1"):
        response = await client.post(
            "/hooks/alertmanager",
            data=FIRING.decode().encode(charset),
            headers={"Content-Type": f"application/json; charset={charset}"},
        )
        assert response.status == 415
        assert charset in (await response.json())["error"]
    accepted = await client.post(
        "/hooks/alertmanager", data=FIRING, headers={"Content-Type": "application/json; charset=UTF-8"}
    )
    assert accepted.status == 200
    assert stored(client)[0] == 1


@pytest.mark.parametrize("path", ["/api/v1/executions", "/"])
async def test_offsets_beyond_64_bits_are_400(make_client: ClientFactory, path: str) -> None:
    client = await make_client()
    for offset in ("99999999999999999999", "-1", "1e3", "١٢"):
        response = await client.get(path, params={"offset": offset})
        assert response.status == 400, offset
        assert "offset" in await response.text()


async def test_forms_without_a_boundary_or_utf8_are_4xx(make_client: ClientFactory) -> None:
    client = await make_client()
    no_boundary = await client.post(
        "/maintenance/pause", data=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}, allow_redirects=False
    )
    assert no_boundary.status == 415
    for body in (b"token=\xff&rule=a", b"token=%FF&rule=a"):
        bad_bytes = await client.post("/maintenance/reset", data=body, headers=FORM, allow_redirects=False)
        assert bad_bytes.status == 400, body
    assert stored(client) == (0, 0, 0, 0)


async def test_pause_ids_beyond_64_bits_are_not_found(make_client: ClientFactory) -> None:
    client = await make_client()
    huge = "9" * 30
    response = await client.delete(f"/api/v1/pauses/{huge}", headers={"Authorization": f"Bearer {OPERATOR}"})
    assert response.status == 404
    form = await client.post(f"/maintenance/pauses/{huge}/resume", data={"token": OPERATOR}, allow_redirects=False)
    assert form.status == 404
    gone = await client.post("/maintenance/pauses/12/resume", data={"token": OPERATOR}, allow_redirects=False)
    assert (gone.status, gone.headers["Location"]) == (303, "/maintenance?result=missing")


async def test_form_bodies_are_capped_before_they_are_read(make_client: ClientFactory) -> None:
    client = await make_client()
    # Headers promising a megabyte that never comes: the answer must not wait for it.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /maintenance/pause HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 1000000\r\n\r\ntoken="
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 413")
    too_long = await client.post(
        "/maintenance/pause", data={"token": OPERATOR, "reason": "x" * 20_000}, allow_redirects=False
    )
    assert too_long.status == 413
    assert stored(client) == (0, 0, 0, 0)


async def test_operator_json_bodies_are_read_only_after_the_token(make_client: ClientFactory) -> None:
    client = await make_client()
    for path in ("/api/v1/pauses", "/api/v1/limits/reset"):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000000\r\n\r\n{".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 401"), path
    big = await client.post(
        "/api/v1/pauses", data=b'{"reason": "' + b"x" * 20_000 + b'"}', headers={"Authorization": f"Bearer {OPERATOR}"}
    )
    assert big.status == 413
    assert (await big.json())["status"] == "error"
    assert stored(client) == (0, 0, 0, 0)


# --- filters ---------------------------------------------------------------------------------------


async def seed(client: Client) -> None:
    store = client.app[RUNTIME].store
    for n, (state, at) in enumerate(
        [("succeeded", datetime(2026, 11, 27, 19, 0, tzinfo=UTC)), ("queued", datetime(2026, 11, 28, 8, 0, tzinfo=UTC))]
    ):
        await store.create_execution(
            NewExecution(
                id=f"ex-{n}",
                rule="nats-down",
                rule_version="v",
                playbook="pb",
                playbook_version="v",
                target="n1",
                occurrence_id=None,
                fingerprint=f"fp{n}",
                alertname="NatsDown",
                mode="enforce",
                params={},
                state="queued",
            ),
            at,
        )
        if state != "queued":
            await store.set_state(f"ex-{n}", state, at)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "zzzz"}, "until"),
        ({"since": "2026-11-27T19:00:00"}, "since"),  # no zone: RFC 3339 needs one
        ({"until": "2026-02-30T00:00:00Z"}, "until"),
        ({"since": "9999-12-31T23:00:00-05:00"}, "since"),  # beyond what a time can hold, once in UTC
        ({"state": "done"}, "state"),
        ({"stat": "queued"}, "stat"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
    ],
)
async def test_bad_filters_are_400_naming_them(make_client: ClientFactory, query: dict[str, str], named: str) -> None:
    client = await make_client()
    response = await client.get("/api/v1/executions", params=query)
    assert response.status == 400
    assert (await response.json())["error"].startswith(named) or named in (await response.json())["error"]


async def test_time_filters_compare_times_not_text(make_client: ClientFactory) -> None:
    client = await make_client()
    await seed(client)

    async def ids(**query: str) -> list[str]:
        response = await client.get("/api/v1/executions", params=query)
        assert response.status == 200, await response.text()
        return [row["id"] for row in (await response.json())["executions"]]

    assert await ids() == ["ex-1", "ex-0"]
    # 20:30 at +01:00 is 19:30Z: after ex-0, before ex-1. Compared as text, "2026-11-27T20:30" > both.
    assert await ids(since="2026-11-27T20:30:00+01:00") == ["ex-1"]
    assert await ids(until="2026-11-27T20:30:00+01:00") == ["ex-0"]
    assert await ids(since="2026-11-27t19:00:00z", state="succeeded") == ["ex-0"]
    assert await ids(state="queued", rule="nats-down", alertname="NatsDown", target="n1") == ["ex-1"]


async def test_the_index_checks_its_filters_as_the_api_does(make_client: ClientFactory) -> None:
    client = await make_client()
    await seed(client)
    for query, named in (({"since": "yesterday"}, "since"), ({"state": "done"}, "state"), ({"color": "red"}, "color")):
        response = await client.get("/", params=query)
        assert response.status == 400
        assert named in await response.text()
    # The form's own shape: empty fields mean "any", times without a zone mean UTC.
    page = await client.get("/", params={"state": "", "rule": "", "since": "2026-11-27T19:30", "until": ""})
    assert page.status == 200
    html = await page.text()
    assert "ex-1" in html and "ex-0" not in html


# --- read access -----------------------------------------------------------------------------------

READS = ["/api/v1/executions", "/api/v1/executions/ex-0", "/api/v1/pauses", "/", "/executions/ex-0", "/maintenance"]
OPEN = ["/-/healthy", "/-/ready", "/metrics", "/api/v1/openapi.json"]


def basic(password: str, user: str = "me") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_reads_are_open_by_default(make_client: ClientFactory) -> None:
    client = await make_client()
    await seed(client)
    for path in READS + OPEN:
        assert (await client.get(path)).status == 200, path


async def test_a_read_token_guards_every_read_but_not_health_or_metrics(make_client: ClientFactory) -> None:
    client = await make_client(Secrets(None, None, OPERATOR, read_token=READER))
    await seed(client)
    for path in READS:
        refused = await client.get(path)
        assert refused.status == 401, path
        assert "Basic" in refused.headers["WWW-Authenticate"]
        for wrong in ("Bearer nope", basic("nope"), "Bearer " + READER + "x", f"Basic {READER}", "Digest x"):
            assert (await client.get(path, headers={"Authorization": wrong})).status == 401, (path, wrong)
        for accepted in (f"Bearer {READER}", f"Bearer {OPERATOR}", basic(READER), basic(OPERATOR, user="")):
            assert (await client.get(path, headers={"Authorization": accepted})).status == 200, (path, accepted)
    simulate = await client.post("/api/v1/simulate", data=FIRING, headers=JSON)
    assert simulate.status == 401
    for path in OPEN:
        assert (await client.get(path)).status == 200, path


async def test_page_forms_need_the_read_token_before_the_operator_token(make_client: ClientFactory) -> None:
    client = await make_client(Secrets(None, None, OPERATOR, read_token=READER))
    form = {"token": OPERATOR, "rule": "*", "target": "*", "reason": "maintenance"}
    refused = await client.post("/maintenance/pause", data=form, allow_redirects=False)
    assert refused.status == 401
    assert stored(client) == (0, 0, 0, 0)
    done = await client.post(
        "/maintenance/pause", data=form, headers={"Authorization": basic(READER)}, allow_redirects=False
    )
    assert (done.status, done.headers["Location"]) == (303, "/maintenance?result=paused")
    assert stored(client) == (0, 0, 1, 0)


# --- errors are the API's JSON ---------------------------------------------------------------------


async def test_api_refusals_are_json(make_client: ClientFactory) -> None:
    client = await make_client(Secrets(None, None, None))
    for method, path, status in (
        ("POST", "/api/v1/executions/x/approve", 403),
        ("DELETE", "/api/v1/pauses/1", 403),
        ("GET", "/api/v1/executions?offset=x", 400),
        ("POST", "/-/reload", 403),
    ):
        response = await client.request(method, path)
        assert response.status == status, path
        assert response.content_type == "application/json"
        assert (await response.json())["status"] == "error"


async def test_every_operator_action_on_an_unknown_execution_is_404(make_client: ClientFactory) -> None:
    client = await make_client()
    await seed(client)
    bearer = {"Authorization": f"Bearer {OPERATOR}"}
    for action in ("approve", "deny", "ack"):
        response = await client.post(f"/api/v1/executions/nope/{action}", headers=bearer)
        assert response.status == 404, action
        assert (await response.json())["error"] == "no such execution"
    # a known execution with nothing pending is still a conflict, not "missing"
    assert (await client.post("/api/v1/executions/ex-0/deny", headers=bearer)).status == 409


async def test_the_api_refuses_the_filters_the_index_refuses_naming_them(make_client: ClientFactory) -> None:
    client = await make_client()
    for query, named in (({"state": "bogus"}, "state"), ({"since": "yesterday"}, "since")):
        for path in ("/", "/api/v1/executions"):
            response = await client.get(path, params=query)
            assert response.status == 400, (path, query)
            text = await response.text()
            assert (json.loads(text)["error"] if path != "/" else text).startswith(named), text


# --- aiohttp's own answer to a request it cannot parse (the real server, as `remediator serve` runs) ---


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer %s\x01",
        b"Authorization: Bearer %s\x7f",
        b"Authorization: Bearer %s\rX",
        b"X-Bad\x01: Bearer %s",
    ],
)
async def test_a_malformed_header_line_is_not_echoed_or_logged(tmp_path: Path, header: bytes) -> None:
    token = "s3cret-webhook-token-that-must-not-leak"
    proc = ServiceProcess(workdir=tmp_path, config={}, env={"REMEDIATOR_WEBHOOK_BEARER_TOKEN": token})
    proc.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
        writer.write(b"POST /hooks/alertmanager HTTP/1.1\r\nHost: x\r\n" + header % token.encode() + b"\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer
        assert token.encode() not in answer
        assert b"not shown" in answer
        # The log line is written before the answer goes out.
        assert "unparseable request" in proc.logs()
        assert token not in proc.logs()
    finally:
        proc.stop()

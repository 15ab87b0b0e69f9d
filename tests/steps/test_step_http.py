"""``http`` step against a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support.realprocs import free_port

from service.steps import StepContext
from service.steps.http import JsonExpectation, Spec, parse_json_path, run

CTX = StepContext(execution_id="ex-http", output_limit=4096)
STATUS_DOC = {
    "status": "ok",
    "breaker": {"state": "closed", "open_count": 0, "providers": [{"id": "openai", "latency": 120.5}]},
}


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "headers": dict(request.headers),
            "body": body.decode(),
            "query": request.query_string,
        }
    )


async def status_doc(request: web.Request) -> web.Response:
    return web.json_response(STATUS_DOC)


async def fail(request: web.Request) -> web.Response:
    return web.Response(status=503, text="circuit open")


async def big(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    for i in range(1000):
        await resp.write(b"%06d" % i + b"." * 1018 + b"\n")
    await resp.write(b"END\n")
    return resp


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/status")


async def slow(request: web.Request) -> web.Response:
    await asyncio.Event().wait()  # never answers; the client's timeout must end the step
    raise AssertionError("unreachable")


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/status", status_doc)
    app.router.add_get("/fail", fail)
    app.router.add_get("/big", big)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/slow", slow)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    try:
        yield srv
    finally:
        await srv.close()


def url(srv: TestServer, path: str) -> str:
    return str(srv.make_url(path))


async def test_get_ok_with_json_in_data(server: TestServer) -> None:
    out = await run(Spec(type="http", url=url(server, "/status")), CTX)
    assert (out.ok, out.status) == (True, "ok")
    assert out.data["status"] == 200
    assert out.data["json"] == STATUS_DOC
    assert json.loads(out.output) == STATUS_DOC


async def test_post_body_headers_and_json(server: TestServer) -> None:
    spec = Spec(
        type="http",
        method="POST",
        url=url(server, "/echo?x=1"),
        headers={"X-Remediator": "ex-http", "Authorization": "Bearer t"},
        body="raw; $(not a shell)",
    )
    out = await run(spec, CTX)
    assert out.ok, out.summary
    assert out.data["json"]["method"] == "POST"
    assert out.data["json"]["body"] == "raw; $(not a shell)"
    assert out.data["json"]["headers"]["X-Remediator"] == "ex-http"
    assert out.data["json"]["query"] == "x=1"

    # "json" as written in a playbook (the model field is json_body: "json" shadows a BaseModel method)
    spec = Spec.model_validate({"type": "http", "method": "PUT", "url": url(server, "/echo"), "json": {"tenant": "t1"}})
    as_json = await run(spec, CTX)
    assert json.loads(as_json.data["json"]["body"]) == {"tenant": "t1"}
    assert as_json.data["json"]["headers"]["Content-Type"] == "application/json"


async def test_unexpected_status_fails(server: TestServer) -> None:
    out = await run(Spec(type="http", url=url(server, "/fail")), CTX)
    assert (out.ok, out.status) == (False, "failed")
    assert "status 503, expected 200" in out.summary
    assert out.output == "circuit open"
    assert (await run(Spec(type="http", url=url(server, "/fail"), expect_status=[503]), CTX)).ok


async def test_redirects_are_reported_not_followed(server: TestServer) -> None:
    out = await run(Spec(type="http", url=url(server, "/redirect")), CTX)
    assert (out.ok, out.data["status"]) == (False, 302)


@pytest.mark.parametrize(
    ("expectation", "ok"),
    [
        ({"path": "status", "equals": "ok"}, True),
        ({"path": "status", "equals": "down"}, False),
        ({"path": "breaker.state", "in": ["closed", "half_open"]}, True),
        ({"path": "breaker.state", "not_equals": "open"}, True),
        ({"path": "breaker.open_count", "equals": 0}, True),
        ({"path": "breaker.open_count", "equals": False}, False),  # JSON 0 is not false
        ({"path": "breaker.providers[0].latency", "lt": 200}, True),
        ({"path": "breaker.providers[0].latency", "gt": 200}, False),
        ({"path": "breaker.providers[0].latency", "ge": 120.5}, True),
        ({"path": "breaker.providers[0].id", "le": 5}, False),  # not a number
        ({"path": "breaker.providers[1].id", "exists": False}, True),
        ({"path": "breaker.providers[1].id", "equals": "x"}, False),  # missing
        ({"path": "breaker.providers", "exists": True}, True),
    ],
)
async def test_json_expectations(server: TestServer, expectation: dict[str, Any], ok: bool) -> None:
    out = await run(Spec(type="http", url=url(server, "/status"), expect_json=expectation), CTX)
    assert out.ok is ok, out.summary
    assert out.data["checks"][0]["ok"] is ok
    if not ok:
        assert "JSON expectation failed" in out.summary and expectation["path"] in out.summary


async def test_expectation_on_a_non_json_body_fails(server: TestServer) -> None:
    spec = Spec(type="http", url=url(server, "/fail"), expect_status=[503], expect_json={"path": "a", "exists": True})
    out = await run(spec, CTX)
    assert (out.ok, out.status) == (False, "failed")
    assert "not JSON" in out.summary


async def test_large_body_keeps_only_the_tail(server: TestServer) -> None:
    out = await run(Spec(type="http", url=url(server, "/big")), CTX)
    assert out.ok
    head, kept = out.output.split("\n", 1)
    assert head == f"[... {1000 * 1025 + 4 - 4096} bytes cut ...]"
    assert len(kept.encode()) == 4096 and kept.endswith("000999" + "." * 1018 + "\nEND\n")


async def test_timeout(server: TestServer) -> None:
    out = await run(Spec(type="http", url=url(server, "/slow"), timeout=0.3), CTX)
    assert (out.ok, out.status) == (False, "timeout")
    assert out.duration_s < 2


async def test_connection_refused_and_bad_requests() -> None:
    refused = await run(Spec(type="http", url=f"http://127.0.0.1:{free_port()}/"), CTX)
    assert (refused.ok, refused.status) == (False, "failed")
    assert "Connection refused" in refused.summary
    bad_url = await run(Spec(type="http", url="not a url"), CTX)
    assert (bad_url.ok, bad_url.status) == (False, "error")


async def test_header_injection_is_refused(server: TestServer) -> None:
    out = await run(Spec(type="http", url=url(server, "/echo"), headers={"X-A": "v\r\nX-Injected: 1"}), CTX)
    assert (out.ok, out.status) == (False, "error"), out.summary


def test_spec_validation() -> None:
    assert parse_json_path("a.b[0].c") == ("a", "b", 0, "c")
    assert parse_json_path("[2][0]") == (2, 0)
    for bad in ("", "a..b", "a.[0]", "a[x]", "a[0"):
        with pytest.raises(ValueError):
            parse_json_path(bad)
    with pytest.raises(ValueError, match="exactly one"):
        JsonExpectation(path="a", equals=1, lt=2)
    with pytest.raises(ValueError, match="exactly one"):
        JsonExpectation(path="a")
    with pytest.raises(ValueError, match="either body or json"):
        Spec.model_validate({"type": "http", "url": "http://127.0.0.1/", "body": "x", "json": {"a": 1}})

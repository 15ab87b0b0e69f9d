"""``GET /api/v1/openapi.json``: the HTTP interface as an OpenAPI 3.1 document.

Bodies and answers are the pydantic models the handlers validate and serialise with
(``service.web.api_models``, ``service.alerts.webhook``), turned into JSON Schema by pydantic, so the document
cannot drift from them; tests check that every route is described and that the live service answers
as described for any input (a property-based run with schemathesis).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from service import __version__
from service.alerts.webhook import WebhookNotification
from service.web.api_models import (
    Acknowledged,
    Decided,
    ErrorAnswer,
    ExecutionList,
    ExecutionReport,
    LimitsReset,
    OperatorForm,
    Paused,
    PauseForm,
    PauseList,
    PauseRequest,
    ReloadDone,
    ReloadFailed,
    ResetForm,
    ResetRequest,
    Resumed,
    SimulateResult,
    WebhookAccepted,
)
from service.web.listing import EXECUTION_STATES, FORM_TIME_PATTERN, MAX_OFFSET

Access = Literal["open", "read", "operator", "webhook", "reload"]
Answer = type[BaseModel] | Literal["text/plain", "text/html", "metrics", "redirect", "application/json"]

API_PAGE_SIZE = 500  # the API's largest page
INDEX_PAGE_SIZE = 200  # the index page's
FORM = "application/x-www-form-urlencoded"
MAX_PAUSE_ID = 2**63 - 1  # SQLite's largest integer


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    access: Access
    answers: Mapping[int, Answer]
    body: type[BaseModel] | None = None
    body_type: str = "application/json"
    query: Sequence[dict[str, Any]] = ()
    path_types: Mapping[str, dict[str, Any]] = field(default_factory=dict)


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _list_query(max_limit: int, form: bool) -> list[dict[str, Any]]:
    """The list's filters; `form`: the index page's, where an empty field means "any" and a time may be
    the zone-less (UTC) value of a datetime-local input."""
    time: dict[str, Any] = {"type": "string", "format": "date-time"}
    state: dict[str, Any] = {"type": "string", "enum": list(EXECUTION_STATES)}
    if form:
        time = {"anyOf": [time, {"type": "string", "pattern": FORM_TIME_PATTERN}]}
        state = {"type": "string", "enum": ["", *EXECUTION_STATES]}
    return [
        _query("state", state),
        _query("rule", {"type": "string"}, "exact rule name"),
        _query("alertname", {"type": "string"}),
        _query("target", {"type": "string"}),
        _query("since", time, "created at or after (RFC 3339)"),
        _query("until", time, "created before (RFC 3339)"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": max_limit, "default": 50}),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}),
    ]


_BY = _query("by", {"type": "string"}, "who decided (else X-Remediator-User, else 'operator')")
_ID = {"id": {"type": "string"}}
_PAUSE_ID = {"id": {"type": "integer", "minimum": 1, "maximum": MAX_PAUSE_ID}}
_RESULT = _query("result", {"type": "string"}, "the outcome of the action that redirected here")
_ERR = ErrorAnswer
_READ_ERRORS: dict[int, Answer] = {401: _ERR}
_OPERATOR_ERRORS: dict[int, Answer] = {401: _ERR, 403: _ERR}
_BODY_ERRORS: dict[int, Answer] = {400: _ERR, 413: _ERR, 415: _ERR}
_RESUME_ANSWERS: dict[int, Answer] = {404: "text/plain"}
_FORM_ANSWERS: dict[int, Answer] = {
    303: "redirect",
    400: "text/plain",
    401: "text/plain",
    413: "text/plain",
    415: "text/plain",
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        "/hooks/alertmanager",
        "Receive an Alertmanager webhook (v4): 200 once committed",
        "webhook",
        {200: WebhookAccepted, **_BODY_ERRORS, 401: _ERR, 503: _ERR},
        body=WebhookNotification,
    ),
    Operation("get", "/-/healthy", "Liveness", "open", {200: "text/plain"}),
    Operation(
        "get",
        "/-/ready",
        "Readiness: the store is open and the rules are loaded",
        "open",
        {200: "text/plain", 503: "text/plain"},
    ),
    Operation(
        "post",
        "/-/reload",
        "Reload rules and playbooks (operator token; open only with web.enable_reload and no token)",
        "reload",
        {200: ReloadDone, 400: ReloadFailed, **_OPERATOR_ERRORS},
    ),
    Operation("get", "/metrics", "Prometheus metrics", "open", {200: "metrics"}),
    Operation("get", "/api/v1/openapi.json", "This document", "open", {200: "application/json"}),
    Operation(
        "get",
        "/api/v1/executions",
        "Executions, newest first",
        "read",
        {200: ExecutionList, 400: _ERR, **_READ_ERRORS},
        query=_list_query(API_PAGE_SIZE, form=False),
    ),
    Operation(
        "get",
        "/api/v1/executions/{id}",
        "One execution's report",
        "read",
        {200: ExecutionReport, 404: _ERR, **_READ_ERRORS},
        path_types=_ID,
    ),
    *(
        Operation(
            "post",
            f"/api/v1/executions/{{id}}/{action}",
            summary,
            "operator",
            {200: answer, 404: _ERR, 409: _ERR, **_OPERATOR_ERRORS},
            query=[_BY],
            path_types=_ID,
        )
        for action, summary, answer in (
            ("approve", "Approve the pending approval step", Decided),
            ("deny", "Deny the pending approval step", Decided),
            ("ack", "Acknowledge: stop further escalation levels", Acknowledged),
        )
    ),
    Operation(
        "post",
        "/api/v1/simulate",
        "What the rules would decide for a webhook body; nothing is stored or run",
        "read",
        {200: SimulateResult, **_BODY_ERRORS, **_READ_ERRORS},
        body=WebhookNotification,
    ),
    Operation("get", "/api/v1/pauses", "Active pauses", "read", {200: PauseList, **_READ_ERRORS}),
    Operation(
        "post",
        "/api/v1/pauses",
        "Pause automation for a rule and/or target",
        "operator",
        {201: Paused, **_BODY_ERRORS, **_OPERATOR_ERRORS},
        body=PauseRequest,
        query=[_BY],
    ),
    Operation(
        "delete",
        "/api/v1/pauses/{id}",
        "Resume: end a pause",
        "operator",
        {200: Resumed, 404: _ERR, **_OPERATOR_ERRORS},
        query=[_BY],
        path_types=_PAUSE_ID,
    ),
    Operation(
        "post",
        "/api/v1/limits/reset",
        "Reset a target's budget and cooldown",
        "operator",
        {200: LimitsReset, **_BODY_ERRORS, **_OPERATOR_ERRORS},
        body=ResetRequest,
        query=[_BY],
    ),
    Operation(
        "get",
        "/",
        "The index page",
        "read",
        {200: "text/html", 400: "text/plain", 401: "text/plain"},
        query=_list_query(INDEX_PAGE_SIZE, form=True),
    ),
    Operation(
        "get",
        "/executions/{id}",
        "One execution's page",
        "read",
        {200: "text/html", 401: "text/plain", 404: "text/html"},
        query=[_RESULT],
        path_types=_ID,
    ),
    *(
        Operation(
            "post",
            f"/executions/{{id}}/{action}",
            f"The page's {action} button",
            "read",
            _FORM_ANSWERS,
            body=OperatorForm,
            body_type=FORM,
            path_types=_ID,
        )
        for action in ("approve", "deny", "ack")
    ),
    Operation(
        "get",
        "/maintenance",
        "Pauses and budget resets",
        "read",
        {200: "text/html", 401: "text/plain"},
        query=[_RESULT],
    ),
    Operation("post", "/maintenance/pause", "The pause form", "read", _FORM_ANSWERS, body=PauseForm, body_type=FORM),
    Operation(
        "post",
        "/maintenance/pauses/{id}/resume",
        "The resume button",
        "read",
        {**_FORM_ANSWERS, **_RESUME_ANSWERS},
        body=OperatorForm,
        body_type=FORM,
        path_types=_PAUSE_ID,
    ),
    Operation("post", "/maintenance/reset", "The reset form", "read", _FORM_ANSWERS, body=ResetForm, body_type=FORM),
)

_Refs = Mapping[tuple[Any, JsonSchemaMode], dict[str, Any]]  # pydantic: (model, mode) -> its $ref
_SECURITY: Mapping[Access, list[dict[str, list[str]]]] = {
    "open": [],
    "read": [{}, {"bearer": []}, {"basic": []}],  # open unless a read token is configured
    "operator": [{"bearer": []}],
    "webhook": [{}, {"bearer": []}, {"basic": []}],  # as webhook_auth configures
    "reload": [{"bearer": []}],
}
_MEDIA: Mapping[str, str] = {"metrics": "text/plain; version=0.0.4; charset=utf-8"}


def _content(answer: Answer, refs: _Refs) -> dict[str, Any]:
    if answer == "redirect":
        return {}
    if isinstance(answer, str):
        schema = {"type": "object"} if answer == "application/json" else {"type": "string"}
        return {"content": {_MEDIA.get(answer, answer): {"schema": schema}}}
    return {"content": {"application/json": {"schema": refs[(answer, "serialization")]}}}


def _describe(operation: Operation, refs: _Refs) -> dict[str, Any]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in operation.path_types.items()
    ]
    described: dict[str, Any] = {
        "summary": operation.summary,
        "operationId": f"{operation.method}{operation.path}".replace("/", "_").replace("{", "").replace("}", ""),
        "parameters": [*parameters, *operation.query],
        "security": _SECURITY[operation.access],
        "responses": {
            str(status): {"description": _STATUS_TEXT.get(status, "answer"), **_content(answer, refs)}
            for status, answer in sorted(operation.answers.items())
        },
    }
    if operation.body is not None:
        described["requestBody"] = {
            "required": True,
            "content": {operation.body_type: {"schema": refs[(operation.body, "validation")]}},
        }
    return described


_STATUS_TEXT = {
    200: "OK",
    201: "created",
    303: "done; see the page it redirects to",
    400: "a bad request: the error names the field or parameter",
    401: "missing or wrong credentials",
    403: "not enabled on this service",
    404: "not found",
    409: "nothing to decide",
    413: "the body or the number of alerts is over the limit",
    415: "not application/json in UTF-8 (or, for forms, not a urlencoded form)",
    503: "not ready, or the store cannot commit: retry",
}


def openapi_document() -> dict[str, Any]:
    """The document, built once per app."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for operation in OPERATIONS:
        if operation.body is not None:
            wanted.append((operation.body, "validation"))
        wanted += [(a, "serialization") for a in operation.answers.values() if not isinstance(a, str)]
    refs, definitions = models_json_schema(list(dict.fromkeys(wanted)), ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method] = _describe(operation, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Beamline Remediator",
            "version": __version__,
            "description": (
                "Alert-driven remediation. Reads need a read token only when one is configured "
                "(web.read_token_file or REMEDIATOR_READ_TOKEN): as a Bearer token or as the basic-auth password; "
                "the operator token is accepted too. /-/healthy, /-/ready, /metrics and this document stay open."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
    }

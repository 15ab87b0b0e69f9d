"""What an operator does, the same whether the JSON API or a page's form asks: one check of the
credentials and one call each for approve/deny, acknowledge, pause, resume and reset.

The callers differ only in how they read the credentials (a Bearer header or a form's password field)
and how they answer (JSON with a status, or a redirect to a page that says the result): an operation
that cannot be done raises :class:`Refused` with the status the API answers with.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from aiohttp import web

from service.errors import RequestError
from service.web.access import as_bytes, may_read, same_secret
from service.web.api_models import Acknowledged, Decided
from service.web.openapi import MAX_PAUSE_ID
from service.web.runtime import RUNTIME, Runtime

log = logging.getLogger("remediator.app")


class Refused(RequestError):
    """An operator action refused: `status` is the API's answer (401, 403, 404, 409), `message` its text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- who may do what (the credentials themselves: service/web/access.py) ------------------------------


def check_operator(runtime: Runtime, given: str | None) -> None:
    """Refused 403 when no operator token is configured, 401 when `given` is not it (constant-time)."""
    token = runtime.secrets.operator_token
    if token is None:
        raise Refused(403, "no operator token is configured: operator actions are disabled")
    if given is None or not same_secret(given.strip(), token):
        raise Refused(401, "the operator token is required")


def reader_accepted(request: web.Request) -> bool:
    """Whether the request may read (always, unless a read token is configured)."""
    secrets = request.app[RUNTIME].secrets
    return may_read(request, secrets.read_token, secrets.operator_token)


def person_name(*given: str | None) -> str:
    """Who acts: the first of `given` that names someone, on one line and at most 100 characters;
    "operator" when none does."""
    for text in given:
        name = " ".join(as_bytes(text).decode("utf-8", "replace").split())[:100] if text else ""
        if name:
            return name
    return "operator"


# --- executions --------------------------------------------------------------------------------------


async def decide(runtime: Runtime, execution_id: str, approved: bool, who: str) -> Decided:
    """Approve or deny the execution's pending approval; Refused 404 when there is no such execution,
    409 when none of its approvals is pending."""
    if not runtime.executor.approvals.decide(execution_id, approved, who):
        if await runtime.store.get_execution(execution_id) is None:
            raise Refused(404, "no such execution")
        decided = [a for a in await runtime.store.approvals_for(execution_id) if a.decision is not None]
        error = "no approval is pending for this execution"
        if decided:
            error += f": the last one was {decided[-1].decision} by {decided[-1].approver}"
        raise Refused(409, error)
    return Decided(status="approved" if approved else "denied", by=who)


async def acknowledge(runtime: Runtime, execution_id: str, who: str) -> Acknowledged:
    """A person has it: stop further escalation levels and resolve the alert in Alertmanager."""
    if await runtime.store.get_execution(execution_id) is None:
        raise Refused(404, "no such execution")
    closed = await runtime.escalator.acknowledge(execution_id, who)
    if not closed:
        raise Refused(409, "no open escalation for this execution")
    return Acknowledged(by=who, escalations=closed)


# --- maintenance: pauses and budget resets ---------------------------------------------------------


def pause_id(text: str) -> int | None:
    """A pause id from a path, or None when it cannot be one (which is a 404, not an overflow)."""
    return int(text) if text.isascii() and text.isdigit() and 0 < int(text) <= MAX_PAUSE_ID else None


async def add_pause(runtime: Runtime, rule: str, target: str, reason: str, by: str, seconds: float | None) -> int:
    """Pause automation for a rule and/or target ('*' is every one)."""
    now = runtime.clock.now()
    until = None if seconds is None else now + timedelta(seconds=seconds)
    pause = await runtime.store.add_pause(rule, target, reason, by, now, until)
    log.warning("automation paused", extra={"rule": rule, "target": target, "by": by, "pause": pause})
    return pause


async def clear_pause(runtime: Runtime, pause: int, by: str) -> bool:
    cleared = await runtime.store.clear_pause(pause, runtime.clock.now())
    if cleared:
        log.warning("automation resumed", extra={"pause": pause, "by": by})
    return cleared


async def reset_limits(runtime: Runtime, rule: str, target: str, by: str) -> None:
    await runtime.store.reset_limits(rule, target, by, runtime.clock.now())
    log.warning("limits reset", extra={"rule": rule, "target": target, "by": by})

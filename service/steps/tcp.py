"""``tcp`` step: a port accepts connections (the runbook's ``nc -zv localhost 9000``)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from service.steps import StepContext, StepOutcome, StepSpecBase
from service.steps.errors import reason
from service.times import Duration


def _port(value: object) -> object:
    """A port number, or a template (``"{{ params.port }}"``) kept as text until the executor renders
    it: the rendered text must then be a port number like any other."""
    if isinstance(value, str) and "{{" in value:
        return value
    number = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535 or a template, got {value!r}")
    return number


Port = Annotated[int | str, BeforeValidator(_port)]


class Spec(StepSpecBase):
    """Succeed when a TCP connection to ``host:port`` is accepted within ``timeout``."""

    type: Literal["tcp"]
    host: str = "127.0.0.1"
    port: Port
    timeout: Duration = Field(default=5.0, gt=0, le=3600)


async def run(spec: Spec, ctx: StepContext) -> StepOutcome:
    started = time.monotonic()
    port = int(spec.port)  # the executor has rendered a templated port by now
    target = f"{spec.host}:{port}"
    try:
        async with asyncio.timeout(spec.timeout):
            _, writer = await asyncio.open_connection(spec.host, port)
            writer.close()
            await writer.wait_closed()
    except TimeoutError:
        ok, status, summary = False, "timeout", f"{target}: no answer within {spec.timeout:g}s"
    except OSError as exc:  # refused, unreachable, unknown host
        ok, status, summary = False, "failed", f"{target}: {reason(exc)}"
    else:
        ok, status, summary = True, "ok", f"{target}: connection accepted"
    elapsed = time.monotonic() - started
    return StepOutcome(
        ok=ok,
        status=status,
        summary=summary,
        data={"host": spec.host, "port": port, "open": ok, "connect_s": round(elapsed, 6)},
        duration_s=elapsed,
    )

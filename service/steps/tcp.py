"""``tcp`` step: a port accepts connections (the runbook's ``nc -zv localhost 9000``)."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from pydantic import Field

from service.steps import StepContext, StepOutcome, StepSpecBase
from service.steps.errors import reason


class Spec(StepSpecBase):
    """Succeed when a TCP connection to ``host:port`` is accepted within ``timeout``."""

    type: Literal["tcp"]
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    timeout: float = Field(default=5.0, gt=0, le=3600)


async def run(spec: Spec, ctx: StepContext) -> StepOutcome:
    started = time.monotonic()
    target = f"{spec.host}:{spec.port}"
    try:
        async with asyncio.timeout(spec.timeout):
            _, writer = await asyncio.open_connection(spec.host, spec.port)
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
        data={"host": spec.host, "port": spec.port, "open": ok, "connect_s": round(elapsed, 6)},
        duration_s=elapsed,
    )

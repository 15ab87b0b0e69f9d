"""The control steps: they act on the run itself (wait, escalate, ask for approval, roll over items)
or read the alert (the verification checks alert_resolved and alert_expr), through the run's
:class:`~service.steps.StepControl`. Their models are part of the playbook format
(``service.playbooks.playbook``: a rolling step nests steps and a verify block); each runner reads
the fields it needs through a small Protocol.

They run under the playbook's timeout only, without the I/O steps' backstop: a rolling step spans
many steps, an approval waits for its own deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from service.errors import StepError
from service.steps import StepContext, StepControl, StepOutcome
from service.steps import promql as promql_step


class WaitSpec(Protocol):
    @property
    def seconds(self) -> float: ...


class EscalateSpec(Protocol):
    @property
    def reason(self) -> str: ...
    @property
    def severity(self) -> str: ...


class ApprovalSpec(Protocol):
    @property
    def prompt(self) -> str: ...
    @property
    def timeout(self) -> float: ...


class RollingSpec(Protocol):
    @property
    def var(self) -> str: ...
    @property
    def steps(self) -> Sequence[Any]: ...
    @property
    def check(self) -> Any: ...  # the playbook's Verify block, or None
    @property
    def pause(self) -> float: ...


class AlertExprSpec(Protocol):
    @property
    def expr(self) -> str | None: ...
    @property
    def timeout(self) -> float: ...
    @property
    def prometheus_url(self) -> str | None: ...


def _control(ctx: StepContext) -> StepControl:
    if ctx.control is None:  # a bug: the executor gives every step its run
        raise StepError(f"execution {ctx.execution_id}: a control step needs the run that executes it")
    return ctx.control


async def wait(spec: WaitSpec, ctx: StepContext) -> StepOutcome:
    await asyncio.sleep(spec.seconds)
    return StepOutcome(ok=True, status="ok", summary=f"waited {spec.seconds:g}s", duration_s=spec.seconds)


async def escalate(spec: EscalateSpec, ctx: StepContext) -> StepOutcome:
    reason = await _control(ctx).escalate(spec.reason, spec.severity)
    return StepOutcome(ok=True, status="ok", summary=f"escalated: {reason}")


async def approval(spec: ApprovalSpec, ctx: StepContext) -> StepOutcome:
    return await _control(ctx).approval(spec.prompt, spec.timeout)


async def rolling(spec: RollingSpec, ctx: StepContext) -> StepOutcome:
    """For each item (or inventory host of its group), one at a time: the nested steps, then the check;
    stop at the first failure. Over a group, the nested steps and checks act on that host."""
    control = _control(ctx)
    try:
        items, on_hosts = control.rolling_items(spec)
    except StepError as exc:
        return StepOutcome.error(str(exc))
    done: list[str] = []
    for item in items:
        phase = f"{control.phase}/{control.name}[{item}]"
        variables = {spec.var: item}
        host = item if on_hosts else None
        failure = await control.run_steps(phase, spec.steps, variables, host)
        if failure is None and spec.check is not None:
            failure = await control.verify(f"{phase}/check", spec.check, variables, host)
        if failure is not None:
            return StepOutcome(
                ok=False, status="failed", summary=f"{item}: {failure}", data={"done": done, "failed": item}
            )
        done.append(item)
        if spec.pause:
            await asyncio.sleep(spec.pause)
    return StepOutcome(ok=True, status="ok", summary=f"{len(done)} of {len(items)} done", data={"done": done})


async def alert_resolved(spec: object, ctx: StepContext) -> StepOutcome:
    status = await _control(ctx).alert_status()
    return StepOutcome(
        ok=status == "resolved",
        status="ok" if status == "resolved" else "failed",
        summary=f"alert is {status}",
        data={"alert_status": status},
    )


async def alert_expr(spec: AlertExprSpec, ctx: StepContext) -> StepOutcome:
    """Holds once the alert's expression (its own, or the one in its generatorURL) returns nothing."""
    expr = spec.expr or promql_step.expr_from_generator_url(ctx.generator_url)
    query = promql_step.Spec(
        type="promql", query=expr, expect_empty=True, timeout=spec.timeout, prometheus_url=spec.prometheus_url
    )
    return await promql_step.run(query, ctx)

"""The executor: runs a playbook's steps in order, then its verification, persisting each transition.

Every state change is written to the store before the work it announces, and every step attempt is
recorded with its bounded output, so a report can always say exactly how far a run got, and a crash
leaves an execution that start-up recovery finds `running` and marks `interrupted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from service.clock import Clock
from service.errors import StepError
from service.logs import bind
from service.playbooks.playbook import (
    AlertExprCheck,
    AlertResolvedCheck,
    ApprovalStep,
    EscalateStep,
    LoadedPlaybook,
    RollingStep,
    Verify,
    WaitStep,
    rolling_items,
)
from service.playbooks.templating import TemplateEngine, TemplateError
from service.redaction import Redactor
from service.steps import StepContext, StepOutcome, StepSpecBase
from service.steps.promql import Spec as PromqlSpec
from service.steps.promql import expr_from_generator_url
from service.steps.registry import STEP_TYPES
from service.store import ExecutionStore, StepRecord

log = logging.getLogger("remediator.executor")

# Keys of a step that are not templates (see playbooks._NOT_TEMPLATED); nested step lists and the
# rolling check are rendered per item, when they run.
_NOT_RENDERED = frozenset({"type", "name", "var", "when", "steps", "check"})

Escalate = Callable[[str, str, str], Awaitable[None]]  # (execution_id, reason, severity)


class ApprovalHooks(Protocol):
    """Told when an approval is requested and decided (the escalator: approve/deny links, closing)."""

    async def approval_requested(self, execution_id: str, prompt: str, deadline: datetime) -> None: ...
    async def approval_decided(self, execution_id: str, decision: str, by: str) -> None: ...


class StepFailed(StepError):
    def __init__(self, name: str, outcome: StepOutcome) -> None:
        super().__init__(f'step "{name}" {outcome.status}: {outcome.summary}')
        self.outcome = outcome


@dataclass(frozen=True)
class Endpoints:
    prometheus_url: str
    alertmanager_url: str
    nats_url: str
    nats_monitor_url: str
    output_limit: int


@dataclass
class RunRequest:
    """Everything one run needs; built by the dispatcher from the rule match and the alert."""

    execution_id: str
    rule: str
    playbook: LoadedPlaybook
    params: Mapping[str, Any]
    target: str
    occurrence_id: int
    fingerprint: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    generator_url: str
    severity: str
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)


class Approvals:
    """Pending approval decisions, by execution id (the API resolves them)."""

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[tuple[bool, str]]] = {}

    def wait_for(self, execution_id: str) -> asyncio.Future[tuple[bool, str]]:
        future = asyncio.get_running_loop().create_future()
        self._pending[execution_id] = future
        return future

    def decide(self, execution_id: str, approved: bool, who: str) -> bool:
        future = self._pending.pop(execution_id, None)
        if future is None or future.done():
            return False
        future.set_result((approved, who))
        return True

    def pending(self, execution_id: str) -> bool:
        return execution_id in self._pending

    def forget(self, execution_id: str) -> None:
        self._pending.pop(execution_id, None)


@dataclass
class _SharedLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding it or waiting for it


class TargetLocks:
    """One lock per (rule, target) for queued runs, kept only while someone holds or waits for it,
    so the map does not grow with every target ever seen."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], _SharedLock] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, rule: str, target: str) -> AsyncIterator[None]:
        key = (rule, target)
        shared = self._locks.setdefault(key, _SharedLock())
        shared.users += 1
        try:
            async with shared.lock:
                yield
        finally:  # also when cancelled while waiting
            shared.users -= 1
            if shared.users == 0:
                del self._locks[key]


class Executor:
    def __init__(
        self,
        store: ExecutionStore,
        clock: Clock,
        endpoints: Endpoints,
        engine: TemplateEngine,
        escalate: Escalate,
        max_concurrent: int,
        on_finished: Callable[[str, str, str, float], None],
        approval_hooks: ApprovalHooks | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._endpoints = endpoints
        self._engine = engine
        self._escalate = escalate
        self._slots = asyncio.Semaphore(max_concurrent)
        self._target_locks = TargetLocks()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._requests: dict[str, RunRequest] = {}
        self._stopping = False
        self._on_finished = on_finished
        self._approval_hooks = approval_hooks
        self._redactor = redactor or Redactor(())
        self.approvals = Approvals()

    def start(self, request: RunRequest, queued: bool = False) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run(request, queued), name=f"execution {request.execution_id}")
        self._tasks[request.execution_id] = task
        self._requests[request.execution_id] = request

        def forget(_task: asyncio.Task[None]) -> None:
            self._tasks.pop(request.execution_id, None)
            self._requests.pop(request.execution_id, None)

        task.add_done_callback(forget)
        return task

    def cancel(self, execution_id: str) -> bool:
        task = self._tasks.get(execution_id)
        if task is None:
            return False
        task.cancel()
        return True

    def on_resolved(self, execution_id: str) -> str | None:
        """What the run's own playbook version says to do when its alert resolves (None: not here)."""
        request = self._requests.get(execution_id)
        return None if request is None else request.playbook.playbook.on_resolved

    async def shutdown(self) -> None:
        """Stop running executions, leaving them in their active state: the next start-up finds them
        and marks them `interrupted` (or resumes them), exactly as after a crash."""
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, request: RunRequest, queued: bool) -> None:
        logger = bind(
            log,
            {
                "execution_id": request.execution_id,
                "rule": request.rule,
                "playbook": request.playbook.name,
                "fingerprint": request.fingerprint,
            },
        )
        started = self._clock.monotonic()
        outcome = "failed"
        try:
            # queued mode waits for the target's active run; the global cap bounds everything
            gate: contextlib.AbstractAsyncContextManager[Any] = (
                self._target_locks.hold(request.rule, request.target) if queued else contextlib.nullcontext()
            )
            async with gate, self._slots:
                outcome = await self._run_admitted(request, logger)
        except asyncio.CancelledError:
            outcome = "cancelled"
            if not self._stopping:
                await self._store.set_state(request.execution_id, "cancelled", self._clock.now(), "cancelled")
            raise
        except Exception as exc:  # a bug or a failing store: the run must not sit `running` unnoticed
            outcome = "escalated"
            logger.exception("execution crashed")
            reason = f"internal error: {type(exc).__name__}: {exc}"
            try:
                await self._escalate(request.execution_id, reason, request.severity)
                await self._store.set_state(request.execution_id, "escalated", self._clock.now(), reason)
            except Exception:  # the store itself is failing: start-up recovery will find the run
                logger.exception("could not record the crash")
        finally:
            self.approvals.forget(request.execution_id)
            self._on_finished(request.rule, request.playbook.name, outcome, self._clock.monotonic() - started)

    async def _run_admitted(self, request: RunRequest, logger: logging.LoggerAdapter[logging.Logger]) -> str:
        store, now = self._store, self._clock.now
        playbook = request.playbook.playbook
        await store.set_state(request.execution_id, "running", now())
        logger.info("execution started")
        failure: str | None = None
        try:
            async with asyncio.timeout(playbook.timeout):
                try:
                    for index, step in enumerate(playbook.steps):
                        await self._step(request, "steps", index, step, self._context(request))
                    if playbook.verify is not None:
                        await store.set_state(request.execution_id, "verifying", now())
                        failure = await self._verify(request, "verify", playbook.verify, self._context(request))
                except StepFailed as exc:
                    failure = str(exc)
        except TimeoutError:
            failure = f"playbook timeout of {playbook.timeout:g}s reached"
        if failure is None:
            await store.set_state(request.execution_id, "succeeded", now(), "verified" if playbook.verify else "")
            logger.info("execution succeeded")
            return "succeeded"
        # the reason quotes a step's summary: the timeline, the state and the escalation are published
        failure = self._redactor.text(failure)
        # The final state is written once cleanup and escalation are done, so nobody reads a
        # `failed` that is about to become `escalated`; the failure itself is on the timeline now.
        await store.add_event(request.execution_id, now(), "failure", failure)
        logger.warning("execution failed", extra={"reason": failure})
        for index, step in enumerate(playbook.on_failure.steps):
            try:
                await self._step(request, "on_failure", index, step, self._context(request))
            except StepFailed as exc:
                cleanup = self._redactor.text(str(exc))
                await store.add_event(request.execution_id, now(), "cleanup", f"cleanup step failed: {cleanup}")
        outcome = "failed"
        if playbook.on_failure.escalate:
            await self._escalate(request.execution_id, failure, request.severity)
            outcome = "escalated"
        await store.set_state(request.execution_id, outcome, now(), failure)
        return outcome

    def _context(self, request: RunRequest, **extra: Any) -> dict[str, Any]:
        return {
            "params": dict(request.params),
            "labels": dict(request.labels),
            "annotations": dict(request.annotations),
            "steps": request.steps,
            "execution": {
                "id": request.execution_id,
                "rule": request.rule,
                "playbook": request.playbook.name,
                "target": request.target,
                "fingerprint": request.fingerprint,
            },
            **extra,
        }

    def _render(self, step: StepSpecBase, context: Mapping[str, Any]) -> StepSpecBase:
        def render(value: Any) -> Any:
            if isinstance(value, str):
                return self._engine.render(value, context)
            if isinstance(value, list):
                return [render(v) for v in value]
            if isinstance(value, dict):
                return {k: render(v) for k, v in value.items()}
            return value

        raw = step.model_dump(by_alias=True, exclude_unset=True)  # re-validated: only what the file said
        rendered = {k: (v if k in _NOT_RENDERED else render(v)) for k, v in raw.items()}
        return type(step).model_validate(rendered)

    def _step_context(self, request: RunRequest) -> StepContext:
        e = self._endpoints
        return StepContext(
            execution_id=request.execution_id,
            labels=request.labels,
            annotations=request.annotations,
            prometheus_url=e.prometheus_url,
            alertmanager_url=e.alertmanager_url,
            nats_url=e.nats_url,
            nats_monitor_url=e.nats_monitor_url,
            output_limit=e.output_limit,
        )

    async def _step(
        self, request: RunRequest, phase: str, index: int, step: StepSpecBase, context: Mapping[str, Any]
    ) -> StepOutcome:
        """Run one step with its `when`, retries and `allow_failure`; raise StepFailed if it fails."""
        step_type = str(getattr(step, "type", "step"))
        name = step.name or f"{phase}-{index + 1}-{step_type}"
        if step.when is not None:
            try:
                wanted = self._engine.evaluate_condition(step.when, context)
            except TemplateError as exc:
                raise StepFailed(name, _error_outcome(f"when: {exc}")) from None
            if not wanted:
                await self._store.add_event(request.execution_id, self._clock.now(), "skip", f"{name}: when is false")
                return StepOutcome(ok=True, status="skipped", summary="when is false")
        delay = step.backoff
        outcome = _error_outcome("not run")
        for attempt in range(1, step.retries + 2):
            started_at, started = self._clock.now(), time.monotonic()
            try:
                rendered = self._render(step, context)
                outcome = await self._dispatch(request, phase, name, rendered, context)
            except TemplateError as exc:
                outcome = _error_outcome(f"template: {exc}")
            except Exception as exc:  # a bug in a step must fail the step, not the service
                log.exception("step crashed", extra={"execution_id": request.execution_id, "step": name})
                outcome = _error_outcome(f"{type(exc).__name__}: {exc}")
            except asyncio.CancelledError:
                # the playbook timeout, a cancel or a shutdown stopped it: the report must say which step
                stopped = StepOutcome(ok=False, status="cancelled", summary="stopped while running")
                await self._record(request, phase, name, step_type, attempt, started_at, started, stopped)
                raise
            await self._record(request, phase, name, step_type, attempt, started_at, started, outcome)
            if outcome.ok or attempt > step.retries:
                break
            await asyncio.sleep(delay)
            delay *= 2
        request.steps[name] = {
            "ok": outcome.ok,
            "status": outcome.status,
            "summary": outcome.summary,
            "output": outcome.output,
            "exit_code": outcome.exit_code,
            "data": dict(outcome.data),
        }
        if not outcome.ok and not step.allow_failure:
            raise StepFailed(name, outcome)
        return outcome

    async def _record(
        self,
        request: RunRequest,
        phase: str,
        name: str,
        step_type: str,
        attempt: int,
        started_at: datetime,
        started: float,
        outcome: StepOutcome,
    ) -> None:
        duration = outcome.duration_s or time.monotonic() - started
        redact = self._redactor
        record = StepRecord(
            phase, name, step_type, attempt, started_at, duration, outcome.ok, outcome.status,
            redact.text(outcome.summary), redact.text(outcome.output), outcome.exit_code, redact.data(outcome.data),
        )  # fmt: skip
        await self._store.record_step(request.execution_id, record)

    async def _dispatch(
        self, request: RunRequest, phase: str, name: str, step: StepSpecBase, context: Mapping[str, Any]
    ) -> StepOutcome:
        if isinstance(step, WaitStep):
            await asyncio.sleep(step.seconds)
            return StepOutcome(ok=True, status="ok", summary=f"waited {step.seconds:g}s", duration_s=step.seconds)
        if isinstance(step, EscalateStep):
            reason = self._redactor.text(step.reason)
            await self._escalate(request.execution_id, reason, step.severity)
            return StepOutcome(ok=True, status="ok", summary=f"escalated: {reason}")
        if isinstance(step, ApprovalStep):
            return await self._approval(request, name, step)
        if isinstance(step, RollingStep):
            return await self._rolling(request, phase, name, step, context)
        if isinstance(step, AlertResolvedCheck):
            status = await self._store.occurrence_status(request.occurrence_id)
            return StepOutcome(
                ok=status == "resolved",
                status="ok" if status == "resolved" else "failed",
                summary=f"alert is {status}",
                data={"alert_status": status},
            )
        if isinstance(step, AlertExprCheck):
            expr = step.expr or expr_from_generator_url(request.generator_url)
            spec = PromqlSpec(
                type="promql", query=expr, expect_empty=True, timeout=step.timeout, prometheus_url=step.prometheus_url
            )
            return await STEP_TYPES["promql"].run(spec, self._step_context(request))
        step_type = STEP_TYPES.get(str(getattr(step, "type", "")))
        if step_type is None:
            return _error_outcome(f"unknown step type {getattr(step, 'type', '?')!r}")
        async with asyncio.timeout(step.timeout + 5):  # the step enforces its own; this is the backstop
            return await step_type.run(step, self._step_context(request))

    async def _approval(self, request: RunRequest, name: str, step: ApprovalStep) -> StepOutcome:
        """Persist the request, escalate it, wait for a decision or the deadline, persist the decision.

        A run resumed after a restart finds its still-pending request and keeps its first deadline.
        """
        decision = self.approvals.wait_for(request.execution_id)  # before the state says it waits
        now = self._clock.now()
        pending = await self._store.open_approval(
            request.execution_id, name, step.prompt, now, now + timedelta(seconds=step.timeout)
        )
        await self._store.set_state(request.execution_id, "awaiting_approval", now, step.prompt)
        if self._approval_hooks is None:
            await self._escalate(request.execution_id, f"approval needed: {step.prompt}", "warning")
        else:
            await self._approval_hooks.approval_requested(request.execution_id, step.prompt, pending.deadline)
        try:
            remaining = (pending.deadline - self._clock.now()).total_seconds()
            approved, who = await asyncio.wait_for(decision, max(0.0, remaining))
        except TimeoutError:
            approved, who = False, f"timeout after {step.timeout:g}s"
        finally:
            # Cancelled (shutdown, resolved alert): the request stays pending in the store. A resumed
            # run picks it up again; the escalator settles it once the execution has ended.
            self.approvals.forget(request.execution_id)
        verdict = "approved" if approved else "denied"
        await self._approval_closed(request.execution_id, pending.id, verdict, who)
        await self._store.add_event(
            request.execution_id,
            self._clock.now(),
            "approval",
            f"{verdict} by {who}",
            {"approved": approved, "by": who},
        )
        await self._store.set_state(request.execution_id, "running", self._clock.now(), f"{verdict} by {who}")
        return StepOutcome(
            ok=approved,
            status="ok" if approved else "failed",
            summary=f"{verdict} by {who}",
            data={"approved": approved, "by": who},
        )

    async def _approval_closed(self, execution_id: str, approval_id: int, decision: str, who: str) -> None:
        if await self._store.decide_approval(approval_id, decision, who, self._clock.now()):
            if self._approval_hooks is not None:
                await self._approval_hooks.approval_decided(execution_id, decision, who)

    async def _rolling(
        self, request: RunRequest, phase: str, name: str, step: RollingStep, context: Mapping[str, Any]
    ) -> StepOutcome:
        items = rolling_items(step, self._engine, context)
        done: list[str] = []
        for item in items:
            item_context = {**context, step.var: item}
            try:
                for index, sub in enumerate(step.steps):
                    await self._step(request, f"{phase}/{name}[{item}]", index, sub, item_context)
                if step.check is not None:
                    failure = await self._verify(request, f"{phase}/{name}[{item}]/check", step.check, item_context)
                    if failure is not None:
                        return StepOutcome(
                            ok=False, status="failed", summary=f"{item}: {failure}", data={"done": done, "failed": item}
                        )
            except StepFailed as exc:
                return StepOutcome(
                    ok=False, status="failed", summary=f"{item}: {exc}", data={"done": done, "failed": item}
                )
            done.append(item)
            if step.pause:
                await asyncio.sleep(step.pause)
        return StepOutcome(ok=True, status="ok", summary=f"{len(done)} of {len(items)} done", data={"done": done})

    async def _verify(self, request: RunRequest, phase: str, verify: Verify, context: Mapping[str, Any]) -> str | None:
        """Poll every check each interval until all hold (None) or `within` passes (the reason)."""
        deadline = time.monotonic() + verify.within
        polls = 0
        while True:
            polls += 1
            # polls start on a fixed cadence: recording a poll does not stretch the interval
            next_poll = time.monotonic() + verify.interval
            results: list[dict[str, Any]] = []
            for index, check in enumerate(verify.checks):
                name = check.name or f"{phase}-{index + 1}-{check.type}"
                started = time.monotonic()
                try:
                    outcome = await self._dispatch(request, phase, name, self._render(check, context), context)
                except TemplateError as exc:
                    outcome = _error_outcome(f"template: {exc}")
                except Exception as exc:  # a bad check must fail the poll, not leave the run hanging
                    log.exception("check crashed", extra={"execution_id": request.execution_id, "check": name})
                    outcome = _error_outcome(f"{type(exc).__name__}: {exc}")
                results.append(
                    {
                        "check": name,
                        "ok": outcome.ok,
                        "summary": outcome.summary,
                        "data": dict(outcome.data),
                        "duration_s": round(time.monotonic() - started, 4),
                    }
                )
            held = all(r["ok"] for r in results)
            await self._store.add_event(
                request.execution_id,
                self._clock.now(),
                "verify",
                f"{phase} poll {polls}: "
                + (
                    "all checks hold"
                    if held
                    else "; ".join(f"{r['check']}: {r['summary']}" for r in results if not r["ok"])
                ),
                {"poll": polls, "phase": phase, "held": held, "checks": results},
            )
            if held:
                return None
            if next_poll > deadline:
                failing = "; ".join(f"{r['check']}: {r['summary']}" for r in results if not r["ok"])
                return f"verification did not hold within {verify.within:g}s ({polls} polls): {failing}"
            await asyncio.sleep(max(0.0, next_poll - time.monotonic()))


def _error_outcome(summary: str) -> StepOutcome:
    return StepOutcome(ok=False, status="error", summary=summary)

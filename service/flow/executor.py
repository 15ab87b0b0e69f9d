"""The executor: runs a playbook's steps in order, then its verification, persisting each transition.

Every state change is written to the store before the work it announces, and every step attempt is
recorded with its bounded output, so a report can always say exactly how far a run got, and a crash
leaves an execution that start-up recovery finds `running` and marks `interrupted`.

Each step type is found in the one registry (service.steps.registry); the control steps act on the
run through a `RunControl` (below), the verification polls in service.flow.verification, approvals
wait in service.flow.approvals, and a queued run waits its turn as service.flow.modes says.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.clock import Clock
from service.errors import StepError
from service.flow import verification
from service.flow.approvals import Approvals
from service.flow.modes import TargetLocks
from service.flow.ports import Escalation, RunObserver
from service.flow.processes import StepProcesses
from service.inventory import Host, Inventory, UnknownHosts
from service.logs import bind
from service.playbooks.context import ExecutionFacts, run_context
from service.playbooks.playbook import LoadedPlaybook, RollingStep, Verify, rolling_items
from service.playbooks.templating import TemplateEngine, TemplateError
from service.redaction import Redactor
from service.steps import StepContext, StepOutcome, StepSpecBase
from service.steps.registry import STEP_TYPES
from service.steps.ssh_connections import SshConnections
from service.store import ExecutionState, ExecutionStore, StepRecord

log = logging.getLogger("remediator.executor")

# Keys of a step that are not templates (see playbooks._NOT_TEMPLATED); nested step lists and the
# rolling check are rendered per item, when they run.
_NOT_RENDERED = frozenset({"type", "name", "var", "when", "steps", "check"})


def step_name(phase: str, index: int, step: StepSpecBase) -> str:
    """A step's name in the record: its own, or one made from where it is."""
    return step.name or f"{phase}-{index + 1}-{getattr(step, 'type', 'step')}"


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


@dataclass(frozen=True)
class ResumePoint:
    """Where a run interrupted by a restart continues (service.flow.recovery): the main steps that
    had completed are not run again (their results are in the request's `steps`), and a run that
    was verifying only verifies."""

    done: frozenset[str]
    verifying: bool

    def skips(self, name: str) -> bool:
        return self.verifying or name in self.done


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
    hosts: tuple[Host, ...] = ()  # what the rule resolved the alert to
    inventory: Inventory | None = None  # as loaded when the run was admitted: a reload does not change it
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    resume: ResumePoint | None = None
    started_at: datetime | None = None  # set when the run starts (execution.started_at in templates)


class Executor:
    def __init__(
        self,
        *,
        store: ExecutionStore,
        clock: Clock,
        endpoints: Endpoints,
        engine: TemplateEngine,
        escalation: Escalation,
        max_concurrent: int,
        observer: RunObserver | None = None,
        redactor: Redactor | None = None,
        ssh: SshConnections | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._endpoints = endpoints
        self._engine = engine
        self._escalation = escalation
        self._slots = asyncio.Semaphore(max_concurrent)
        self._target_locks = TargetLocks()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._requests: dict[str, RunRequest] = {}
        self._stopping = False
        self._observer = observer
        self._redactor = redactor or Redactor(())
        self._ssh = ssh
        self.approvals = Approvals(store, clock, escalation)

    def start(self, request: RunRequest, queued: bool = False) -> asyncio.Task[None]:
        """Run it in a task; `queued`: the target's runs take turns (service.flow.modes)."""
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
        if self._ssh is not None:  # after the runs: a cancelled ssh step kills its remote group through it
            await self._ssh.close()

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
            # a queued run waits for its turn at the target; the global cap bounds everything
            async with self._target_locks.turn(request.rule, request.target, queued), self._slots:
                outcome = await self._run_admitted(request, logger)
        except asyncio.CancelledError:
            outcome = ExecutionState.CANCELLED
            if not self._stopping:
                await self._store.set_state(
                    request.execution_id, ExecutionState.CANCELLED, self._clock.now(), "cancelled"
                )
            raise
        except Exception as exc:  # a bug or a failing store: the run must not sit `running` unnoticed
            outcome = ExecutionState.ESCALATED
            logger.exception("execution crashed")
            reason = f"internal error: {type(exc).__name__}: {exc}"
            try:
                await self._escalation.escalate(request.execution_id, reason, request.severity)
                await self._store.set_state(request.execution_id, ExecutionState.ESCALATED, self._clock.now(), reason)
            except Exception:  # the store itself is failing: start-up recovery will find the run
                logger.exception("could not record the crash")
        finally:
            self.approvals.forget(request.execution_id)
            if self._observer is not None:
                seconds = self._clock.monotonic() - started
                self._observer.execution_finished(request.rule, request.playbook.name, outcome, seconds)

    async def _run_admitted(self, request: RunRequest, logger: logging.LoggerAdapter[logging.Logger]) -> str:
        store, now = self._store, self._clock.now
        playbook = request.playbook.playbook
        request.started_at = now()
        await store.set_state(request.execution_id, ExecutionState.RUNNING, request.started_at)
        logger.info("execution started")
        failure: str | None = None
        try:
            async with asyncio.timeout(playbook.timeout):
                try:
                    for index, step in enumerate(playbook.steps):
                        if request.resume is None or not request.resume.skips(step_name("steps", index, step)):
                            await self._step(request, "steps", index, step, self._context(request))
                    if playbook.verify is not None:
                        await store.set_state(request.execution_id, ExecutionState.VERIFYING, now())
                        failure = await self._verify(request, "verify", playbook.verify, self._context(request))
                except StepFailed as exc:
                    failure = str(exc)
        except TimeoutError:
            failure = f"playbook timeout of {playbook.timeout:g}s reached"
        if failure is None:
            verified = "verified" if playbook.verify else ""
            await store.set_state(request.execution_id, ExecutionState.SUCCEEDED, now(), verified)
            logger.info("execution succeeded")
            return ExecutionState.SUCCEEDED
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
        outcome = ExecutionState.FAILED
        if playbook.on_failure.escalate:
            await self._escalation.escalate(request.execution_id, failure, request.severity)
            outcome = ExecutionState.ESCALATED
        await store.set_state(request.execution_id, outcome, now(), failure)
        return outcome

    def _context(self, request: RunRequest) -> dict[str, Any]:
        now = self._clock.now()
        hosts = tuple(host.name for host in request.hosts)
        execution = ExecutionFacts(
            request.execution_id, request.rule, request.playbook.name, request.target, request.fingerprint,
            request.started_at or now, hosts, hosts[0] if len(hosts) == 1 else "",
        )  # fmt: skip
        return run_context(
            params=request.params,
            labels=request.labels,
            annotations=request.annotations,
            steps=request.steps,
            execution=execution,
            now=now,
        )

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

    async def _step(
        self, request: RunRequest, phase: str, index: int, step: StepSpecBase, context: Mapping[str, Any]
    ) -> StepOutcome:
        """Run one step with its `when`, retries and `allow_failure`; raise StepFailed if it fails."""
        step_type = str(getattr(step, "type", "step"))
        name = step_name(phase, index, step)
        if step.when is not None:
            try:
                wanted = self._engine.evaluate_condition(step.when, context)
            except TemplateError as exc:
                raise StepFailed(name, StepOutcome.error(f"when: {exc}")) from None
            if not wanted:
                await self._store.add_event(request.execution_id, self._clock.now(), "skip", f"{name}: when is false")
                return StepOutcome(ok=True, status="skipped", summary="when is false")
        delay = step.backoff
        outcome = StepOutcome.error("not run")
        for attempt in range(1, step.retries + 2):
            started_at, started = self._clock.now(), time.monotonic()
            try:
                rendered = self._render(step, context)
                outcome = await self._dispatch(request, phase, name, rendered, context)
            except TemplateError as exc:
                outcome = StepOutcome.error(f"template: {exc}")
            except Exception as exc:  # a bug in a step must fail the step, not the service
                log.exception("step crashed", extra={"execution_id": request.execution_id, "step": name})
                outcome = StepOutcome.error(f"{type(exc).__name__}: {exc}")
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
        """Run one attempt of a step (or check) with the runner its type has in the registry."""
        step_type = STEP_TYPES.get(str(getattr(step, "type", "")))
        if step_type is None:
            return StepOutcome.error(f"unknown step type {getattr(step, 'type', '?')!r}")
        e = self._endpoints
        ctx = StepContext(
            execution_id=request.execution_id,
            labels=request.labels,
            annotations=request.annotations,
            prometheus_url=e.prometheus_url,
            alertmanager_url=e.alertmanager_url,
            nats_url=e.nats_url,
            nats_monitor_url=e.nats_monitor_url,
            output_limit=e.output_limit,
            generator_url=request.generator_url,
            control=RunControl(self, request, phase, name, context),
            processes=StepProcesses(self._store, self._clock, request.execution_id, name),
            inventory=request.inventory,
            hosts=_step_hosts(request, context),
            ssh=self._ssh,
        )
        if step_type.kind == "control":
            return await step_type.run(step, ctx)
        async with asyncio.timeout(step.timeout + 5):  # the step enforces its own; this is the backstop
            return await step_type.run(step, ctx)

    async def _verify(self, request: RunRequest, phase: str, verify: Verify, context: Mapping[str, Any]) -> str | None:
        async def run_check(name: str, check: StepSpecBase) -> StepOutcome:
            return await self._dispatch(request, phase, name, self._render(check, context), context)

        return await verification.poll(self._store, self._clock, request.execution_id, phase, verify, run_check)


def _step_hosts(request: RunRequest, context: Mapping[str, Any]) -> tuple[Host, ...]:
    """The hosts a step acts on: those its context names (a rolling step over a group rebinds them)."""
    names = context["execution"]["hosts"]
    if request.inventory is None or not names:
        return ()
    return request.inventory.resolve(names)


class RunControl:
    """What a control step may do to the run executing it (service.steps.StepControl): one per step
    attempt, bound to the step's phase, name and template context."""

    def __init__(
        self, executor: Executor, request: RunRequest, phase: str, name: str, context: Mapping[str, Any]
    ) -> None:
        self._executor = executor
        self._request = request
        self._context = context
        self.phase = phase
        self.name = name

    def rolling_items(self, rolling: RollingStep) -> tuple[list[str], bool]:
        engine, inventory = self._executor._engine, self._request.inventory
        if rolling.group is None or inventory is None:
            if rolling.items is None:
                raise StepError(
                    f'group "{rolling.group}" needs an inventory (settings: inventory), and no items are given'
                )
            return rolling_items(rolling, engine, self._context), False
        try:
            hosts = inventory.resolve(engine.render(rolling.group, self._context))
        except UnknownHosts as exc:
            raise StepError(str(exc)) from None
        return [host.name for host in hosts], True

    def _on(self, variables: Mapping[str, Any], host: str | None) -> dict[str, Any]:
        """The step's context with `variables`, and `host` as the host its steps act on."""
        context = {**self._context, **variables}
        if host is not None:
            context["execution"] = {**context["execution"], "hosts": [host], "host": host}
        return context

    async def run_steps(
        self, phase: str, steps: Sequence[StepSpecBase], variables: Mapping[str, Any], host: str | None = None
    ) -> str | None:
        context = self._on(variables, host)
        try:
            for index, step in enumerate(steps):
                await self._executor._step(self._request, phase, index, step, context)
        except StepFailed as exc:
            return str(exc)
        return None

    async def verify(
        self, phase: str, verify: Verify, variables: Mapping[str, Any], host: str | None = None
    ) -> str | None:
        return await self._executor._verify(self._request, phase, verify, self._on(variables, host))

    async def escalate(self, reason: str, severity: str) -> str:
        published = self._executor._redactor.text(reason)
        await self._executor._escalation.escalate(self._request.execution_id, published, severity)
        return published

    async def approval(self, prompt: str, timeout_s: float) -> StepOutcome:
        return await self._executor.approvals.wait(self._request.execution_id, self.name, prompt, timeout_s)

    async def alert_status(self) -> str:
        return await self._executor._store.occurrence_status(self._request.occurrence_id)

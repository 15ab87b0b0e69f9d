"""What every handler may use: the runtime built once per app, the live rules, and the app's typed keys.

The app factory (app.py) fills these; the API (api.py), the pages (pages.py) and the operations they
share (operations.py) read them. Nothing here imports a handler, so the handlers never import the factory.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from service.clock import Clock
from service.escalation.escalator import Escalator
from service.flow.dispatcher import Dispatcher
from service.flow.executor import Executor
from service.flow.silences import SilenceWatcher
from service.metrics import Metrics
from service.rules.loading import load_ruleset
from service.rules.ruleset import RuleSet
from service.settings import Secrets, Settings
from service.store import ServiceStore
from service.web.intake import Intake
from service.yamlload import ConfigErrors

log = logging.getLogger("remediator.app")


@dataclass
class RulesHolder:
    """The live rules, playbooks and inventory, swapped whole on a good reload; a bad one keeps the old set.

    Executions hold their own reference to the rule match and playbook they started with, so a
    reload never changes a run in flight.
    """

    settings: Settings
    metrics: Metrics
    clock: Clock
    current: RuleSet | None = None
    last_errors: list[str] = field(default_factory=list)

    def load(self) -> bool:
        """Load now (at start-up, before the loop runs)."""
        return self._apply(self._parse())

    async def reload(self) -> bool:
        """Parse in a worker thread, so thousands of rules never stall the webhook; swap on the loop."""
        return self._apply(await asyncio.to_thread(self._parse))

    def _parse(self) -> RuleSet | ConfigErrors:
        s = self.settings
        try:
            return load_ruleset(
                [g for g in s.rules if g], [g for g in s.playbooks if g], s.base_dir, s.inventory_path()
            )
        except ConfigErrors as exc:
            return exc

    def _apply(self, loaded: RuleSet | ConfigErrors) -> bool:
        if isinstance(loaded, ConfigErrors):
            self.last_errors = [str(e) for e in loaded.errors]
            self.metrics.config_last_reload_successful.set(0)
            log.error("reload refused: the old rules stay", extra={"errors": self.last_errors})
            return False
        self.current, self.last_errors = loaded, []
        self.metrics.config_last_reload_successful.set(1)
        self.metrics.config_last_reload_success_timestamp.set(self.clock.now().timestamp())
        log.info("rules loaded", extra={"rules": len(loaded.rules), "playbooks": len(loaded.playbooks)})
        return True

    def rules(self) -> RuleSet:
        assert self.current is not None, "rules are loaded before the app serves"
        return self.current


@dataclass(frozen=True)
class Runtime:
    """What every handler may use; built once per app."""

    settings: Settings
    secrets: Secrets
    clock: Clock
    metrics: Metrics
    store: ServiceStore
    rules: RulesHolder
    escalator: Escalator
    executor: Executor
    dispatcher: Dispatcher
    silences: SilenceWatcher | None


RUNTIME = web.AppKey("runtime", Runtime)
INTAKE = web.AppKey("intake", Intake)
SCHEDULER = web.AppKey("scheduler", AsyncIOScheduler)
OPENAPI = web.AppKey("openapi", bytes)
SIMULATIONS = web.AppKey("simulations", asyncio.Semaphore)

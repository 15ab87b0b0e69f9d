"""Retention: executions older than the configured age are pruned on a schedule, so the store stays
bounded. Alerts and notifications go with them once nothing refers to them any more."""

from __future__ import annotations

import logging
from datetime import timedelta

from service.clock import Clock
from service.store import PruneResult, RetentionStore

log = logging.getLogger("remediator.retention")


async def prune(store: RetentionStore, clock: Clock, retention_days: float) -> PruneResult:
    cutoff = clock.now() - timedelta(days=retention_days)
    result = await store.prune(cutoff)
    log.info("store pruned", extra={"before": cutoff.isoformat(), **result.__dict__})
    return result

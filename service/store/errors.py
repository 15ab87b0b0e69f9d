"""What the store raises: callers answer 503 to a StoreError (Alertmanager retries)."""

from __future__ import annotations

from service.errors import RemediatorError


class StoreError(RemediatorError):
    """The store could not do what was asked (disk full, I/O error, closed): callers answer 503."""


class DuplicateExecution(StoreError):
    """The rule already has this run of the alert occurrence: another decision made it first."""

    def __init__(self, existing_id: str) -> None:
        super().__init__(f"the occurrence already has this run: execution {existing_id}")
        self.existing_id = existing_id

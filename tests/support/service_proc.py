"""The real `remediator serve` for tests: the demo's RemediatorProcess (one process helper for both),
with the tests' defaults: a free loopback port, the store in the test's directory, no rules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from demo.processes import free_port
from demo.stack import RemediatorProcess


@dataclass
class ServiceProcess(RemediatorProcess):
    @property
    def db_path(self) -> Path:
        return self.workdir / "remediator.db"

    def start(self) -> None:
        if not self.port:
            self.port = free_port()
        self.config = {
            "listen_host": "127.0.0.1",
            "listen_port": self.port,
            "external_url": self.url,
            "store": {"path": str(self.db_path)},
            "rules": [],
            "playbooks": [],
            **self.config,
        }
        super().start()

"""The hosts the remediator may act on, as an inventory file names them (types only; reading the file
is :mod:`service.inventory.loading`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import ConfigurationError


@dataclass(frozen=True)
class Host:
    """One inventory host with its connection settings resolved (group vars merged, paths absolute)."""

    name: str  # its name in the inventory, what rules and steps refer to
    address: str  # ansible_host, else the name
    port: int  # ansible_port, else 22
    user: str  # ansible_user, else the user the service runs as
    key_file: Path | None  # ansible_ssh_private_key_file
    passphrase_file: Path | None  # remediator_ssh_key_passphrase_file: the key's passphrase, from a file

    def describe(self) -> dict[str, Any]:
        """What explain and simulate show: where a step runs and as whom."""
        return {"name": self.name, "address": self.address, "port": self.port, "user": self.user}

    def __str__(self) -> str:
        return f"{self.name} ({self.user}@{self.address}:{self.port})"


class UnknownHosts(ConfigurationError):
    """Names that are neither a host nor a group of the inventory: nothing may connect to them."""

    def __init__(self, names: Iterable[str], known: Inventory | None) -> None:
        self.names = tuple(names)
        listed = ", ".join(f'"{n}"' for n in self.names)
        plural = "s" if len(self.names) > 1 else ""
        where = f"the inventory ({known.file})" if known is not None else "any inventory (none is configured)"
        super().__init__(
            f"host{plural} {listed} not in {where}: the remediator never connects to a host it was not given"
        )


_SPLIT = re.compile(r"[,\s]+")


@dataclass(frozen=True)
class Inventory:
    """Hosts by name (in file order) and each group's hosts, children's included (in file order)."""

    file: str
    hosts: Mapping[str, Host]
    groups: Mapping[str, tuple[str, ...]]

    def resolve(self, names: str | Iterable[str]) -> tuple[Host, ...]:
        """The hosts ``names`` refer to: host names or group names (a group gives its hosts), given as a
        list or as one string split on commas and whitespace; each host once, in the order named.
        Raises :class:`UnknownHosts` naming every name the inventory does not know."""
        wanted = [n for n in _SPLIT.split(names) if n] if isinstance(names, str) else list(names)
        unknown = [n for n in wanted if n not in self.hosts and n not in self.groups]
        if unknown:
            raise UnknownHosts(unknown, self)
        out: dict[str, Host] = {}
        for name in wanted:
            for host in (name,) if name in self.hosts else self.groups[name]:
                out.setdefault(host, self.hosts[host])
        return tuple(out.values())

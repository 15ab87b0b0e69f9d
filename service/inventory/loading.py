"""Reading an inventory in Ansible's YAML format, so a team's existing one can be reused.

```yaml
all:
  vars: {ansible_user: remediator, ansible_ssh_private_key_file: keys/remediator}
  hosts:
    nats1: {ansible_host: 10.0.0.5}
  children:
    routers:
      hosts:
        router1: {ansible_host: 10.0.1.1, ansible_port: 2222}
        router2:
```

Top-level keys are groups (``all`` and any other, which are children of ``all``); a group has
``hosts``, ``children`` and ``vars``. A host's variables are merged as Ansible merges them: ``all``,
then its groups from the shallowest to the deepest (same depth: by name), then its own. Of those
variables the connection ones are read (``ansible_host``, ``ansible_port``, ``ansible_user``,
``ansible_ssh_private_key_file`` or ``ansible_private_key_file``, and
``remediator_ssh_key_passphrase_file``); others are kept out of the way, as Ansible keeps vars no
plugin reads. Secrets are never read from the inventory itself: a password var is an error (keys and
passphrases come from files). Paths are relative to the inventory file's directory. Every problem is
reported with file and line.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.inventory.model import Host, Inventory
from service.yamlload import ConfigError, ConfigErrors, PathPart, YamlDocument, load_yaml

_GROUP_KEYS = frozenset({"hosts", "children", "vars"})
# Ansible's inline secrets: refused, so a password never sits in a file teams pass around and commit.
_SECRET_VARS = frozenset(
    {
        "ansible_password",
        "ansible_ssh_pass",
        "ansible_ssh_password",
        "ansible_become_pass",
        "ansible_become_password",
        "ansible_ssh_private_key",
        "ansible_private_key_passphrase",
        "ansible_ssh_private_key_passphrase",
    }
)
_KEY_FILE_VARS = ("ansible_ssh_private_key_file", "ansible_private_key_file")
_KEY_UNLOCK_FILE_VAR = "remediator_ssh_key_passphrase_file"
_CONNECTIONS = frozenset({"ssh", "smart", "paramiko"})  # what ansible_connection may say: all of them SSH
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")  # no Ansible range patterns (web[01:50]), no spaces
_Path = tuple[PathPart, ...]


@dataclass
class _Group:
    vars: dict[str, tuple[Any, _Path]] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)


@dataclass
class _Reader:
    doc: YamlDocument
    groups: dict[str, _Group] = field(default_factory=dict)
    host_vars: dict[str, dict[str, tuple[Any, _Path]]] = field(default_factory=dict)  # in file order
    errors: list[ConfigError] = field(default_factory=list)

    def error(self, path: _Path, message: str) -> None:
        self.errors.append(self.doc.error(path, message))

    def group(self, name: str, body: Any, path: _Path) -> None:
        group = self.groups.setdefault(name, _Group())
        if body is None:
            return
        if not isinstance(body, dict):
            self.error(path, f'group "{name}" must be a mapping of hosts, children and vars')
            return
        for key in body:
            if key not in _GROUP_KEYS:
                self.error((*path, key), f"unknown key {key!r} (a group has hosts, children and vars)")
        group.vars.update(self.vars(body.get("vars"), (*path, "vars")))
        hosts = body.get("hosts")
        if hosts is not None and not isinstance(hosts, dict):
            self.error((*path, "hosts"), "hosts must be a mapping of host names to their vars (or nothing)")
        for host, host_body in (hosts or {}).items() if isinstance(hosts, dict) else ():
            where = (*path, "hosts", host)
            if not self.name_ok(host, where, "host"):
                continue
            if host not in group.hosts:
                group.hosts.append(host)
            self.host_vars.setdefault(host, {}).update(self.vars(host_body, where))
        children = body.get("children")
        if children is not None and not isinstance(children, dict):
            self.error((*path, "children"), "children must be a mapping of group names to groups")
        for child, child_body in (children or {}).items() if isinstance(children, dict) else ():
            where = (*path, "children", child)
            if not self.name_ok(child, where, "group"):
                continue
            if child not in group.children:
                group.children.append(child)
            self.group(child, child_body, where)

    def name_ok(self, name: Any, path: _Path, kind: str) -> bool:
        if not isinstance(name, str) or not _NAME.match(name):
            self.error(path, f"{kind} name {name!r} is not supported (letters, digits, _ . : -; no [a:b] ranges)")
            return False
        return True

    def vars(self, body: Any, path: _Path) -> dict[str, tuple[Any, _Path]]:
        if body is None:
            return {}
        if not isinstance(body, dict):
            self.error(path, "vars must be a mapping")
            return {}
        out: dict[str, tuple[Any, _Path]] = {}
        for name, value in body.items():
            where = (*path, name)
            if name in _SECRET_VARS:
                self.error(
                    where,
                    f"{name}: secrets are not read from the inventory; use a key file (ansible_ssh_private_key_file)",
                )
                continue
            out[str(name)] = (value, where)
        return out


def inventory_from_source(source: bytes, file: str, base_dir: Path) -> Inventory:
    """Parse and check one inventory; raises ConfigErrors with every problem (file, line, field)."""
    doc = load_yaml(source, file)
    if not isinstance(doc.data, dict) or not doc.data:
        raise ConfigErrors([ConfigError(file, 1, "", "an inventory must be a mapping of groups (all: ...)")])
    reader = _Reader(doc)
    top = list(doc.data.items())
    reader.group("all", doc.data.get("all"), ("all",))
    for name, body in top:
        if name != "all" and reader.name_ok(name, (name,), "group"):
            reader.groups["all"].children.append(str(name))
            reader.group(str(name), body, (name,))
    depths = _depths(reader)
    members = {name: _members(reader, name, set()) for name in reader.groups}
    hosts: dict[str, Host] = {}
    for host in reader.host_vars:
        in_groups = sorted((g for g, m in members.items() if host in m), key=lambda g: (depths.get(g, 0), g))
        merged: dict[str, tuple[Any, _Path]] = {}
        for group in in_groups:
            merged.update(reader.groups[group].vars)
        merged.update(reader.host_vars[host])
        built = _host(reader, host, merged, base_dir)
        if built is not None:
            hosts[host] = built
    if reader.errors:
        # a bad group var is found once for each host it applies to: reported once
        raise ConfigErrors(dict.fromkeys(reader.errors))
    groups = {name: tuple(h for h in reader.host_vars if h in members[name]) for name in reader.groups}
    return Inventory(file, hosts, groups)


def load_inventory(path: Path, display: str) -> Inventory:
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise ConfigErrors([ConfigError(display, None, "", f"cannot read: {exc.strerror}")]) from None
    return inventory_from_source(source, display, path.parent)


def _depths(reader: _Reader) -> dict[str, int]:
    """Each group's depth below ``all`` (the deepest path to it), for the order vars merge in; a group
    that is its own descendant is an error."""
    depths: dict[str, int] = {}

    def visit(name: str, depth: int, trail: tuple[str, ...]) -> None:
        if name in trail:
            reader.error((), f"group {name!r} is its own descendant: {' -> '.join((*trail, name))}")
            return
        if depths.get(name, -1) >= depth:
            return
        depths[name] = depth
        for child in reader.groups.get(name, _Group()).children:
            visit(child, depth + 1, (*trail, name))

    visit("all", 0, ())
    return depths


def _members(reader: _Reader, name: str, seen: set[str]) -> set[str]:
    if name in seen:  # a cycle, reported by _depths
        return set()
    seen.add(name)
    group = reader.groups.get(name, _Group())
    out = set(group.hosts)
    for child in group.children:
        out |= _members(reader, child, seen)
    if name == "all":
        out |= set(reader.host_vars)
    return out


def _host(reader: _Reader, name: str, merged: Mapping[str, tuple[Any, _Path]], base_dir: Path) -> Host | None:
    errors_before = len(reader.errors)

    def text(var: str) -> str | None:
        if var not in merged:
            return None
        value, where = merged[var]
        if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
            reader.error(where, f"{var} must be a non-empty string")
            return None
        return str(value)

    def file(var: str) -> Path | None:
        value = text(var)
        if value is None:
            return None
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            reader.error(merged[var][1], f"{var}: no such file: {path}")
            return None
        return path

    connection = text("ansible_connection")
    if connection is not None and connection not in _CONNECTIONS:
        reader.error(merged["ansible_connection"][1], f"ansible_connection {connection!r}: only ssh is supported")
    port = 22
    port_text = text("ansible_port")
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            reader.error(merged["ansible_port"][1], f"ansible_port must be a port number (1-65535), got {port_text!r}")
        else:
            port = int(port_text)
    key_var = next((v for v in _KEY_FILE_VARS if v in merged), _KEY_FILE_VARS[0])
    host = Host(
        name=name,
        address=text("ansible_host") or name,
        port=port,
        user=text("ansible_user") or getpass.getuser(),
        key_file=file(key_var),
        passphrase_file=file(_KEY_UNLOCK_FILE_VAR),
    )
    return host if len(reader.errors) == errors_before else None

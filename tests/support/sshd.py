"""Real OpenSSH servers for tests: ``/usr/sbin/sshd -D -e -f CONFIG`` on free loopback ports, each
with its own temporary host key, one generated client key pair in a temporary authorized_keys, key
login only (as the user the tests run as; root may log in with a key, never a password), no PAM.
Each server stands for one host of an inventory; started by a fixture, stopped by PID.

``SshHosts`` writes the known_hosts file (every server's host key) and the inventory that names
them, so a test's settings point the remediator at real hosts.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import asyncssh
import pytest
import yaml

from demo.processes import LOOPBACK, ChildProcess, free_port, poll

SSHD = "/usr/sbin/sshd"
START_TIMEOUT_S = 15.0
_PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without its privilege separation directory


def write_key(path: Path) -> asyncssh.SSHKey:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    path.chmod(0o600)
    key.write_public_key(str(path) + ".pub")
    return key


class SshServer(ChildProcess):
    """One sshd; ``host_key`` is its public key line as known_hosts takes it."""

    def __init__(self, workdir: Path, name: str, authorized_keys: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        host_key_file = workdir / "ssh_host_ed25519_key"
        self.host_key = write_key(host_key_file).export_public_key().decode().strip()
        self.config_path = workdir / "sshd_config"
        self.write_config(host_key_file, authorized_keys)
        super().__init__(f"sshd {name}", [SSHD, "-D", "-e", "-f", str(self.config_path)], workdir / "sshd.log")

    def write_config(self, host_key_file: Path, authorized_keys: Path) -> None:
        self.config_path.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {LOOPBACK}",
                    f"HostKey {host_key_file}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized_keys}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",  # the temp dirs are not the user's ~/.ssh
                    "LogLevel VERBOSE",  # logs each connection: tests count them
                    "MaxSessions 20",
                    "MaxStartups 50",
                    "PrintMotd no",
                    "",
                ]
            )
        )

    def replace_host_key(self) -> None:
        """A new host key (the host was reinstalled, or someone is in the middle): restart with it."""
        self.stop()
        self.host_key = write_key(self.workdir / "ssh_host_ed25519_key").export_public_key().decode().strip()
        self.start()

    def start(self, cwd: Path | None = None) -> None:
        _PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        super().start(cwd)
        try:
            poll(self._ready, START_TIMEOUT_S, f"{self.name} to listen on {LOOPBACK}:{self.port}")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        code = self.exited()
        if code is not None:
            pytest.fail(f"{self.name} exited with {code} during start-up:\n{self.log()}", pytrace=False)
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1.0) as sock:
                return sock.recv(64).startswith(b"SSH-2.0-")
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"

    def connections(self) -> int:
        """Connections sshd has accepted so far (its log says each)."""
        return self.log().count("Connection from ")


class SshHosts:
    """A client key pair and sshd servers standing for hosts; the known_hosts and inventory files."""

    def __init__(self, workdir: Path) -> None:
        if not Path(SSHD).is_file():
            pytest.fail(f"{SSHD} is not installed: apt-get install openssh-server", pytrace=False)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.client_key = workdir / "client_key"
        self.authorized_keys = workdir / "authorized_keys"
        self.authorized_keys.write_text(write_key(self.client_key).export_public_key().decode())
        self.known_hosts = workdir / "known_hosts"
        self.user = getpass.getuser()
        self.servers: dict[str, SshServer] = {}

    def start(self, *names: str) -> list[SshServer]:
        started = []
        for name in names:
            server = SshServer(self.workdir / name, name, self.authorized_keys)
            self.servers[name] = server
            server.start()
            started.append(server)
        self.write_known_hosts()
        return started

    def write_known_hosts(self, servers: Sequence[SshServer] | None = None) -> None:
        lines = [f"[{LOOPBACK}]:{s.port} {s.host_key}" for s in (servers or self.servers.values())]
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def host_vars(self, name: str, **extra: object) -> dict[str, object]:
        server = self.servers[name]
        return {
            "ansible_host": LOOPBACK,
            "ansible_port": server.port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": str(self.client_key),
            **extra,
        }

    def write_inventory(
        self,
        path: Path,
        groups: Mapping[str, Sequence[str]] | None = None,
        extra_hosts: Mapping[str, Mapping[str, object]] | None = None,
    ) -> Path:
        """An Ansible YAML inventory: every server as a host under ``all``, and ``groups`` of them."""
        hosts: dict[str, object] = {name: self.host_vars(name) for name in self.servers}
        hosts.update(extra_hosts or {})
        children = {group: {"hosts": {name: None for name in members}} for group, members in (groups or {}).items()}
        doc: dict[str, object] = {"all": {"hosts": hosts, **({"children": children} if children else {})}}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def stop_all(self) -> None:
        for server in self.servers.values():
            server.stop()

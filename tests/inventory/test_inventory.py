"""The inventory: Ansible's YAML format read as Ansible reads it (groups, children, vars and their
precedence), every problem with file and line, secrets refused inline; checked by `remediator check`
and shown by `remediator explain`."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.inventory import Inventory, UnknownHosts, inventory_from_source
from service.yamlload import ConfigErrors

ROOT = Path(__file__).resolve().parent.parent.parent

INVENTORY = """\
all:
  vars:
    ansible_user: remediator
    ansible_ssh_private_key_file: keys/id
  hosts:
    nats1:
      ansible_host: 10.0.0.5
  children:
    routers:
      vars:
        ansible_port: 2222
      hosts:
        router1:
          ansible_host: 10.0.1.1
        router2:
      children:
        edge:
          vars:
            ansible_user: edge
          hosts:
            router3:
              ansible_port: "22"
    other_inventory_vars_are_ignored:
      vars:
        ansible_python_interpreter: /usr/bin/python3
        http_port: 80
      hosts:
        router1:
databases:
  hosts:
    db1:
      ansible_user: postgres
      ansible_connection: ssh
"""


def load(text: str, tmp_path: Path) -> Inventory:
    (tmp_path / "keys").mkdir(exist_ok=True)
    (tmp_path / "keys" / "id").write_text("a key file\n")
    return inventory_from_source(text.encode(), "inventory.yaml", tmp_path)


def errors(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load(text, tmp_path)
    return [str(e) for e in caught.value.errors]


def test_hosts_groups_and_vars_merge_as_ansible_merges_them(tmp_path: Path) -> None:
    inventory = load(INVENTORY, tmp_path)
    assert list(inventory.hosts) == ["nats1", "router1", "router2", "router3", "db1"]
    nats1, router1, router2, router3, db1 = inventory.hosts.values()
    assert (nats1.address, nats1.port, nats1.user) == ("10.0.0.5", 22, "remediator")
    assert nats1.key_file == tmp_path / "keys" / "id"
    assert (router1.address, router1.port, router1.user) == ("10.0.1.1", 2222, "remediator")
    assert (router2.address, router2.port) == ("router2", 2222)  # no ansible_host: its name
    assert (router3.port, router3.user) == (22, "edge")  # the deeper group, then the host, win
    assert db1.user == "postgres" and db1.port == 22
    assert inventory.groups["routers"] == ("router1", "router2", "router3")
    assert inventory.groups["edge"] == ("router3",)
    assert inventory.groups["all"] == tuple(inventory.hosts)
    assert [h.name for h in inventory.resolve("routers, nats1 router1")] == ["router1", "router2", "router3", "nats1"]
    with pytest.raises(UnknownHosts, match='host "ghost" not in the inventory'):
        inventory.resolve(["nats1", "ghost"])


def test_a_host_without_user_logs_in_as_the_service_user(tmp_path: Path) -> None:
    inventory = load("all:\n  hosts:\n    h:\n", tmp_path)
    assert inventory.hosts["h"].user == getpass.getuser() and inventory.hosts["h"].key_file is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "all:\n  hosts:\n    h:\n      ansible_password: hunter2\n",
            "inventory.yaml:4: all.hosts.h.ansible_password: ansible_password: secrets are not read",
        ),
        (
            "all:\n  vars:\n    ansible_ssh_pass: x\n",
            "inventory.yaml:3: all.vars.ansible_ssh_pass: ansible_ssh_pass: secrets are not read",
        ),
        (
            "all:\n  hosts:\n    h:\n      ansible_port: 70000\n",
            "inventory.yaml:4: all.hosts.h.ansible_port: ansible_port must be a port number",
        ),
        (
            "all:\n  hosts:\n    h:\n      ansible_ssh_private_key_file: nope\n",
            "inventory.yaml:4: all.hosts.h.ansible_ssh_private_key_file: ansible_ssh_private_key_file: no such file",
        ),
        (
            "all:\n  hosts:\n    web[01:10]:\n",
            "inventory.yaml:3: all.hosts.web[01:10]: host name 'web[01:10]' is not supported",
        ),
        ("all:\n  hostz:\n    h:\n", "inventory.yaml:2: all.hostz: unknown key 'hostz'"),
        (
            "all:\n  hosts:\n    h:\n      ansible_connection: local\n",
            "inventory.yaml:4: all.hosts.h.ansible_connection: ansible_connection 'local': only ssh",
        ),
        ("all:\n  hosts: [a, b]\n", "inventory.yaml:2: all.hosts: hosts must be a mapping"),
        ("- a\n", "inventory.yaml:1: an inventory must be a mapping of groups"),
        ("all:\n  hosts:\n    h:\n  hosts:\n    i:\n", 'inventory.yaml:4: all.hosts: duplicate key "hosts"'),
        ("a:\n  children:\n    b:\n      children:\n        a:\n", "group 'a' is its own descendant"),
    ],
)
def test_problems_name_file_line_and_field(text: str, expected: str, tmp_path: Path) -> None:
    found = errors(text, tmp_path)
    assert any(expected in e for e in found), found


def test_a_bad_group_var_is_reported_once_for_all_its_hosts(tmp_path: Path) -> None:
    found = errors("all:\n  vars:\n    ansible_port: x\n  hosts:\n    a:\n    b:\n", tmp_path)
    assert len(found) == 1 and found[0].startswith("inventory.yaml:3: all.vars.ansible_port:")


# --- the CLI ------------------------------------------------------------------------------------

RULES = """
rules:
  - name: restart-on-host
    match: ['alertname="HostDown"']
    playbook: on-host
    hosts: "{{ labels.instance.split(':')[0] }}"
"""

PLAYBOOK = """
name: on-host
steps:
  - name: status
    type: ssh
    argv: [systemctl, status, nats]
  - name: probe
    type: http
    url: http://127.0.0.1:8222/healthz
  - name: roll
    type: rolling
    group: routers
    items: [a]
    steps:
      - name: restart
        type: ssh
        argv: [systemctl, restart, router]
"""


def remediator(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "playbook.yaml").write_text(PLAYBOOK)
    (tmp_path / "known_hosts").write_text("")
    load(INVENTORY, tmp_path)  # writes the key file
    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    path = tmp_path / "remediator.yaml"
    settings = {
        "rules": ["rules.yaml"],
        "playbooks": ["playbook.yaml"],
        "inventory": "inventory.yaml",
        "ssh": {"known_hosts": "known_hosts"},
        "store": {"path": "r.db"},
    }
    path.write_text(yaml.safe_dump(settings))
    return path


def test_check_validates_the_inventory_with_the_rules(config: Path) -> None:
    ok = remediator("check", "--config", str(config), cwd=config.parent)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "ok: 1 rules, 1 playbooks, 5 inventory hosts\n"
    (config.parent / "inventory.yaml").write_text(INVENTORY.replace("ansible_port: 2222", "ansible_port: 0"))
    bad = remediator("check", "--config", str(config), cwd=config.parent)
    assert bad.returncode == 1
    assert "inventory.yaml:11: all.children.routers.vars.ansible_port: ansible_port must be a port number" in bad.stderr


def test_check_refuses_an_inventory_without_known_hosts(config: Path) -> None:
    settings = yaml.safe_load(config.read_text())
    del settings["ssh"]
    config.write_text(yaml.safe_dump(settings))
    result = remediator("check", "--config", str(config), cwd=config.parent)
    assert result.returncode == 1
    assert "an inventory needs ssh.known_hosts" in result.stderr


def test_explain_shows_each_steps_host_and_user(config: Path) -> None:
    alerts = config.parent / "alerts.json"
    alerts.write_text(json.dumps([{"labels": {"alertname": "HostDown", "instance": "nats1:9100"}}]))
    result = remediator("explain", str(alerts), "--config", str(config), cwd=config.parent)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "hosts: nats1 (remediator@10.0.0.5:22)" in out
    assert "steps/status [ssh]: on nats1 (remediator@10.0.0.5:22)" in out
    assert "steps/probe [http]: here" in out
    assert (
        "steps/roll/restart [ssh]: on router1 (remediator@10.0.1.1:2222), router2 (remediator@router2:2222), router3 (edge@router3:22) (one host at a time)"
        in out
    )

    alerts.write_text(json.dumps([{"labels": {"alertname": "HostDown", "instance": "ghost:9100"}}]))
    refused = remediator("explain", str(alerts), "--config", str(config), cwd=config.parent)
    assert 'refused: host "ghost" not in the inventory (inventory.yaml)' in refused.stdout

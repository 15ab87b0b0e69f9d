"""compose.yaml and the Dockerfile cannot run here (no Docker): check they agree with the demo configs.

Every service shares the host network (network_mode: host), so the ports in compose.yaml must be the
ones alertmanager/prometheus.yml, alertmanager/alertmanager.yml and demo/compose/remediator.yaml use.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"nats", "router", "prometheus", "alertmanager", "remediator"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load(ROOT / "compose.yaml")
    assert isinstance(data, dict)
    return data


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    svc: dict[str, Any] = compose["services"][name]
    return svc


def mounts(svc: dict[str, Any]) -> dict[PurePosixPath, str]:
    """container path -> host source ("./..." bind mounts or a named volume)."""
    found = {}
    for volume in svc.get("volumes", []):
        source, target, *_ = volume.split(":")
        found[PurePosixPath(target)] = source
    return found


def host_file(svc: dict[str, Any], container_path: str) -> Path:
    """The repository file a container sees at container_path, through a file or directory bind mount."""
    wanted = PurePosixPath(container_path)
    for target, source in mounts(svc).items():
        if source.startswith("./") and (wanted == target or target in wanted.parents):
            return ROOT / source / wanted.relative_to(target)
    raise AssertionError(f"{container_path} is not bind-mounted from the repository")


def flag(argv: list[str], name: str) -> str:
    """The value of --name=value or of a flag followed by its value."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return argv[i + 1]
    raise AssertionError(f"{name} not in {argv}")


def port(url: str) -> int:
    parsed = urlsplit(url if "//" in url else f"//{url}")
    assert parsed.hostname == "127.0.0.1", f"{url} is not loopback"
    assert parsed.port is not None
    return parsed.port


def test_services_references_and_mounts_exist(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES
    declared_volumes = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        assert svc["network_mode"] == "host", f"{name}: the demo configs address everything on 127.0.0.1"
        assert ("image" in svc) != ("build" in svc), f"{name}: exactly one of image/build"
        for dependency in svc.get("depends_on", []):
            assert dependency in compose["services"], f"{name} depends on unknown service {dependency}"
        for target, source in mounts(svc).items():
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: mounted {source} does not exist in the repository"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
            assert target.is_absolute()


def test_images_are_the_measured_versions(compose: dict[str, Any]) -> None:
    assert service(compose, "nats")["image"] == "nats:2.9.10"
    assert service(compose, "prometheus")["image"] == "prom/prometheus:v2.42.0"
    assert service(compose, "alertmanager")["image"] == "prom/alertmanager:v0.25.0"


def test_ports_agree_with_the_demo_configs(compose: dict[str, Any]) -> None:
    nats_argv = service(compose, "nats")["command"]
    nats_port, nats_monitor = int(flag(nats_argv, "-p")), int(flag(nats_argv, "-m"))
    assert flag(nats_argv, "-a") == "127.0.0.1" and "-js" in nats_argv

    router_argv = service(compose, "router")["command"]
    assert router_argv[:3] == ["python3", "-m", "demo.router"]
    assert port(flag(router_argv, "--nats-url")) == nats_port
    assert port(flag(router_argv, "--nats-monitor-url")) == nats_monitor
    router_http = int(flag(router_argv, "--http-port"))
    assert (int(flag(router_argv, "--tcp-port")), router_http) == (9000, 9001)  # the runbook's ports

    prom = service(compose, "prometheus")
    prom_port = port(flag(prom["command"], "--web.listen-address"))
    prom_config = load(host_file(prom, flag(prom["command"], "--config.file")))
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in prom_config["scrape_configs"]}
    assert [port(t) for t in targets["beamline-router"]] == [router_http]
    assert [port(t) for t in targets["prometheus"]] == [prom_port]
    for rule_file in prom_config["rule_files"]:  # relative to the config file, inside the same mount
        config_dir = PurePosixPath(flag(prom["command"], "--config.file")).parent
        assert host_file(prom, str(config_dir / rule_file)).is_file()

    am = service(compose, "alertmanager")
    am_port = port(flag(am["command"], "--web.listen-address"))
    am_targets = prom_config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert [port(t) for t in am_targets] == [am_port]
    am_config_path = PurePosixPath(flag(am["command"], "--config.file"))
    am_config = load(host_file(am, str(am_config_path)))
    hook = am_config["receivers"][0]["webhook_configs"][0]

    rem = service(compose, "remediator")
    settings_path = rem["command"][rem["command"].index("--config") + 1]
    settings = load_settings(host_file(rem, settings_path), env={})  # the service's own settings model
    assert port(hook["url"]) == settings.listen_port
    assert urlsplit(hook["url"]).path == "/hooks/alertmanager"
    assert port(settings.prometheus_url) == prom_port
    assert port(settings.alertmanager_url) == am_port
    assert port(settings.nats_url) == nats_port
    assert port(settings.nats_monitor_url) == nats_monitor
    assert rem["environment"]["BEAMLINE_ROUTER_HTTP_PORT"] == str(router_http)
    assert rem["environment"]["BEAMLINE_NATS_MONITOR_PORT"] == str(nats_monitor)

    # Alertmanager sends the very token file the remediator checks.
    am_token = host_file(am, str(am_config_path.parent / hook["http_config"]["authorization"]["credentials_file"]))
    assert settings.webhook_auth.bearer_token_file is not None
    assert host_file(rem, str(settings.webhook_auth.bearer_token_file)).resolve() == am_token.resolve()
    assert am_token.read_text().strip()
    # The router's admin token is the one the remediator's circuit_breaker.sh sends.
    router_token = host_file(service(compose, "router"), flag(router_argv, "--admin-token-file"))
    rem_token = host_file(rem, rem["environment"]["BEAMLINE_ROUTER_ADMIN_TOKEN_FILE"])
    assert router_token.resolve() == rem_token.resolve()


def test_dockerfile_builds_the_service_image() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    assert re.search(r"^RUN pip install --no-cache-dir \.$", text, re.MULTILINE)
    assert 'CMD ["remediator", "serve", "--config", "/etc/remediator/remediator.yaml"]' in text
    for source in re.findall(r"^COPY (\S+) ", text, re.MULTILINE):
        assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    compose = load(ROOT / "compose.yaml")
    assert compose["services"]["remediator"]["command"] == [
        "remediator",
        "serve",
        "--config",
        "/etc/remediator/remediator.yaml",
    ]

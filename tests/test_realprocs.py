"""The real-process harness itself: servers come up on loopback, restart in place, and go away."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from support import realprocs
from support.realprocs import AlertmanagerServer, NatsServer, PrometheusServer, free_port, http_get


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_free_port_is_bindable_loopback() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_nats_restarts_on_same_ports_and_keeps_store(nats_server: NatsServer) -> None:
    status, body = http_get(nats_server.monitor_url + "/jsz")
    assert status == 200 and b'"disabled"' not in body
    old_pid, client_url = nats_server.pid, nats_server.client_url
    nats_server.stop()
    assert _gone(old_pid)
    with pytest.raises(OSError):
        http_get(nats_server.monitor_url + "/healthz")
    nats_server.start()
    assert nats_server.pid != old_pid
    assert nats_server.client_url == client_url
    assert http_get(nats_server.monitor_url + "/healthz")[0] == 200
    assert str(nats_server.store_dir) in " ".join(nats_server.argv)


def test_prometheus_and_alertmanager_start(
    prometheus_server: Callable[..., PrometheusServer],
    alertmanager_server: Callable[[str], AlertmanagerServer],
) -> None:
    am = alertmanager_server(
        "route: {receiver: none}\nreceivers: [{name: none}]\n",
    )
    prom = prometheus_server(alertmanagers=[f"127.0.0.1:{am.port}"])
    samples = prom.wait_for_samples('up{job="prometheus"} == 1')
    assert samples[0]["metric"]["instance"] == f"127.0.0.1:{prom.port}"
    assert http_get(am.url + "/api/v2/status")[0] == 200


@pytest.mark.parametrize(
    ("binary", "package"),
    [
        ("nats-server", "nats-server"),
        ("promtool", "prometheus"),
        ("prometheus-alertmanager", "prometheus-alertmanager"),
    ],
)
def test_missing_binary_fails_naming_the_package(monkeypatch: pytest.MonkeyPatch, binary: str, package: str) -> None:
    monkeypatch.setattr(realprocs.shutil, "which", lambda *a, **k: None)
    with pytest.raises(pytest.fail.Exception, match=f"{binary} is not installed: apt-get install {package}$"):
        realprocs.require_binary(binary)

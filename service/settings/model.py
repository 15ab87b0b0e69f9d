"""The settings model: every section of `remediator.yaml`, validated by pydantic.

Secrets are never read from the YAML itself: it names files (`*_file`), and the environment may give
the values directly (`REMEDIATOR_WEBHOOK_BEARER_TOKEN`, ...), which is what container platforms do.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, PrivateAttr, field_validator, model_validator

from service.alerts.matchers import MatcherError, parse_matcher
from service.models import StrictModel
from service.times import Duration
from service.yamlload import YamlDocument

ENV_PREFIX = "REMEDIATOR_"
# The variables that give secrets directly (container platforms); they are never settings overrides.
SECRET_ENV = {
    "webhook_bearer_token": "REMEDIATOR_WEBHOOK_BEARER_TOKEN",
    "webhook_basic_password": "REMEDIATOR_WEBHOOK_BASIC_PASSWORD",
    "operator_token": "REMEDIATOR_OPERATOR_TOKEN",
    "read_token": "REMEDIATOR_READ_TOKEN",
}


class StoreSettings(StrictModel):
    path: Path = Path("var/remediator.db")
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description="full: each acknowledged alert survives power loss; normal: a service crash only (faster)",
    )
    retention_days: float = Field(default=30.0, gt=0, le=3650, description="executions older than this are pruned")
    prune_interval_seconds: Duration = Field(default=3600.0, ge=10, le=86400)
    remembered_occurrences: int = Field(
        default=50_000,
        ge=0,
        le=10_000_000,
        description="committed alert occurrences kept in memory, so that a pure re-send is acknowledged without"
        " a commit (its delivery count is written within a second); 0: every delivery is committed first",
    )


class WebhookAuthSettings(StrictModel):
    """Credentials Alertmanager's `http_config` sends (bearer and/or basic). Unset means no auth."""

    bearer_token_file: Path | None = None
    basic_username: str | None = None
    basic_password_file: Path | None = None


class OperatorSettings(StrictModel):
    """The token that approves, denies and acknowledges; separate from the webhook's credentials."""

    token_file: Path | None = None


class WebSettings(StrictModel):
    """Who may read over HTTP, and whether POST /-/reload works without the operator token."""

    read_token_file: Path | None = Field(
        default=None, description="set: the API's reads, simulate and the pages need this token (or the operator's)"
    )
    enable_reload: bool = Field(
        default=False, description="with no operator token configured, let anyone POST /-/reload (SIGHUP always works)"
    )


class ServerSettings(StrictModel):
    """The HTTP server's connections: how long one may idle or dawdle, and how many may be open."""

    keepalive_timeout: Duration = Field(
        default=75.0,
        gt=0,
        le=3600,
        description="a connection with no request since it opened or since its last answer is closed after this",
    )
    request_read_timeout: Duration = Field(
        default=30.0,
        gt=0,
        le=600,
        description="a request's headers and body must arrive within this of its first byte, or it is cut off",
    )
    max_connections: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="open connections at most; unset: min(1000, a share of the open-files limit)",
    )
    log_interval: Duration = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="repeated connection problems (refused, too slow, accept errors) log one line per interval",
    )


class LimitSettings(StrictModel):
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_concurrent_executions: int = Field(default=8, ge=1, le=1000)
    storm_max_admissions: int = Field(default=20, ge=1)
    storm_window_seconds: Duration = Field(default=60.0, gt=0)
    output_limit_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    shutdown_grace_seconds: Duration = Field(default=10.0, ge=0, le=600)


class SshSettings(StrictModel):
    """How the ``ssh`` step reaches inventory hosts (docs/inventory.md)."""

    known_hosts: Path | None = Field(
        default=None, description="the host keys trusted (OpenSSH known_hosts format); required with an inventory"
    )
    connect_timeout: Duration = Field(default=10.0, gt=0, le=300, description="TCP connect and SSH handshake")
    keepalive_interval: Duration = Field(default=15.0, gt=0, le=3600, description="between keepalives on a connection")
    keepalive_count_max: int = Field(default=3, ge=1, le=100, description="unanswered keepalives before it is dropped")
    max_sessions_per_host: int = Field(
        default=4, ge=1, le=64, description="commands run at once on one host (keep under sshd's MaxSessions / 2)"
    )
    failure_backoff: Duration = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="after a failed connection, steps for that host fail at once for this long (doubling, up to "
        "10 times this), so nothing hammers a host that is down or refuses the key",
    )


# --- escalation (service/escalation/escalator.py, docs/escalation.md) ---------------------------------------

_CHANNEL_NAME = r"^[a-z0-9][a-z0-9_-]*$"


class ChannelSettings(StrictModel):
    """One place escalations go. A webhook URL is often itself the secret (Slack's is), so it may
    come from `url_file` or the environment (`REMEDIATOR_CHANNEL_<NAME>_URL`) instead of `url`."""

    name: str = Field(pattern=_CHANNEL_NAME)
    type: Literal["alertmanager", "webhook", "slack", "nats"]
    url: str | None = Field(
        default=None, description="alertmanager: defaults to every Alertmanager (alertmanager_urls); nats: nats_url"
    )
    url_file: Path | None = None
    subject: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    timeout: Duration = Field(default=10.0, gt=0, le=300)
    retries: int = Field(default=100, ge=0, le=100_000)
    backoff: Duration = Field(default=1.0, gt=0, le=3600)
    max_backoff: Duration = Field(default=300.0, gt=0, le=86400)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.url is not None and self.url_file is not None:
            raise ValueError("give url or url_file, not both")
        if self.type == "nats":
            if self.subject is None:
                raise ValueError("a nats channel needs a subject")
            if self.url is not None and not self.url.startswith(("nats://", "tls://")):
                raise ValueError(f"a nats channel's url must be nats:// or tls://, got {self.url!r}")
        elif self.subject is not None:
            raise ValueError(f"subject is for nats channels, not {self.type}")
        elif self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http:// or https:// URL, got {self.url!r}")
        return self


class LevelSettings(StrictModel):
    """Notify `channels` once the escalation has been open `delay` without an acknowledgement."""

    delay: Duration = Field(default=0.0, ge=0, le=30 * 86400)
    channels: list[str] = Field(min_length=1)


class AlertmanagerAlertSettings(StrictModel):
    """How the `RemediationFailed` alert is kept firing in Alertmanager while the escalation is open."""

    resend_interval: Duration = Field(default=60.0, gt=0, le=3600)
    ends_after: Duration = Field(default=300.0, gt=0, le=86400, description="endsAt = post time + this")
    labels: dict[str, str] = Field(default_factory=dict, description="static labels added to every alert")

    @model_validator(mode="after")
    def _outlives_resends(self) -> Self:
        # One lost re-post must not resolve a still-open escalation in Alertmanager.
        if self.ends_after < 2 * self.resend_interval:
            raise ValueError("ends_after must be at least twice resend_interval")
        return self


class SilencePauseSettings(StrictModel):
    """Alertmanager silences carrying `marker` pause automation for what their other matchers select."""

    marker: str = 'remediation="paused"'
    interval_seconds: Duration = Field(default=15.0, ge=1, le=3600)

    @field_validator("marker")
    @classmethod
    def _one_equality_matcher(cls, marker: str) -> str:
        try:
            matcher = parse_matcher(marker)
        except MatcherError as exc:
            raise ValueError(str(exc)) from None
        if matcher.op != "=":
            raise ValueError(f'the marker must be an equality matcher like remediation="paused", got {marker}')
        return marker


class ReconcileSettings(StrictModel):
    """The reconciler: Alertmanager's active alerts read back periodically, so a change no webhook
    brought (a re-fire inside one group interval, alerts sent while the service was down, a
    silenced alert that resolved) is still seen (docs/architecture.md, "Reconciliation")."""

    enabled: bool = True
    interval: Duration = Field(
        default=5.0, gt=0, le=3600, description="between passes while a rule-matched alert is firing"
    )
    idle_interval: Duration = Field(default=30.0, gt=0, le=86400, description="between passes otherwise")
    timeout: Duration = Field(default=5.0, gt=0, le=300, description="each request to an Alertmanager")
    start_timeout: Duration = Field(
        default=10.0, ge=0, le=600, description="the pass made before the service serves gives up after this"
    )

    @model_validator(mode="after")
    def _idle_not_faster(self) -> Self:
        if self.idle_interval < self.interval:
            raise ValueError("idle_interval must be at least interval")
        return self


class EscalationSettings(StrictModel):
    channels: list[ChannelSettings] = Field(default_factory=list)
    levels: list[LevelSettings] = Field(
        default_factory=list, description="empty: every channel at once (one level, no delay)"
    )
    alertmanager: AlertmanagerAlertSettings = Field(default_factory=AlertmanagerAlertSettings)
    refusal_grace: Duration = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="a refusal about a target whose run is running or verified a fix less than this ago pages"
        " only if its alert still fires this long after (docs/escalation.md)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [c.name for c in self.channels]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"channel names must be unique: {', '.join(duplicates)}")
        if self.levels and self.levels[0].delay:
            raise ValueError("levels[0] is notified at once: its delay must be 0")
        for index, level in enumerate(self.levels):
            unknown = [n for n in level.channels if n not in names]
            if unknown:
                raise ValueError(f"levels[{index}] names unknown channels: {', '.join(unknown)}")
            if index and level.delay <= self.levels[index - 1].delay:
                raise ValueError(f"levels[{index}].delay must be longer than the level before it")
        # NATS may be the very thing that is broken: it can never be the only way a person hears.
        kinds = {c.name: c.type for c in self.channels}
        first = self.levels[0].channels if self.levels else names
        if first and all(kinds[n] == "nats" for n in first):
            raise ValueError("the first level must have a channel that is not nats: NATS may be what is broken")
        return self

    def level_channels(self) -> list[tuple[float, list[str]]]:
        """(delay, channel names) per level; no levels means every channel at once."""
        if self.levels:
            return [(level.delay, list(level.channels)) for level in self.levels]
        return [(0.0, [c.name for c in self.channels])] if self.channels else []


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


class Settings(StrictModel):
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=9095, ge=0, le=65535)
    external_url: str = "http://127.0.0.1:9095"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    dry_run: bool = False
    rules: list[str] = Field(default_factory=lambda: ["rules/*.yaml"])
    playbooks: list[str] = Field(default_factory=lambda: ["playbooks/*.yaml"])
    inventory: Path | None = Field(
        default=None, description="hosts the ssh step may reach (Ansible YAML inventory); unset: steps run here"
    )
    ssh: SshSettings = Field(default_factory=SshSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    webhook_auth: WebhookAuthSettings = Field(default_factory=WebhookAuthSettings)
    operator: OperatorSettings = Field(default_factory=OperatorSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    escalation: EscalationSettings = Field(default_factory=EscalationSettings)
    silence_pause: SilencePauseSettings | None = Field(
        default=None, description="pause automation through Alertmanager silences (off unless set)"
    )
    prometheus_url: str = "http://127.0.0.1:9090"
    alertmanager_url: str = "http://127.0.0.1:9093"
    alertmanager_urls: list[str] = Field(
        default_factory=list,
        description="every Alertmanager of an HA pair or cluster (reconciliation reads each, escalations go to"
        " each); empty: [alertmanager_url]",
    )
    reconcile: ReconcileSettings = Field(default_factory=ReconcileSettings)
    nats_url: str = "nats://127.0.0.1:4222"
    nats_monitor_url: str = "http://127.0.0.1:8222"
    redact_patterns: list[str] = Field(
        default_factory=list, description="regexes masked in step output, in addition to secrets and defaults"
    )
    base_dir: Path = Field(default=Path("."), description="relative paths resolve against this")
    # Where the values came from, so a problem found later (an unreadable secret file) names its line.
    _source: YamlDocument | None = PrivateAttr(default=None)

    @field_validator("external_url", "prometheus_url", "alertmanager_url", "nats_monitor_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("alertmanager_urls")
    @classmethod
    def _http_urls(cls, values: list[str]) -> list[str]:
        urls = [_http_url(value) for value in values]
        if len(set(urls)) != len(urls):
            raise ValueError("each Alertmanager must be listed once")
        return urls

    @model_validator(mode="after")
    def _inventory_has_known_hosts(self) -> Self:
        if self.inventory is not None and self.ssh.known_hosts is None:
            raise ValueError("an inventory needs ssh.known_hosts: the host keys the remediator trusts")
        return self

    def inventory_path(self) -> Path | None:
        return None if self.inventory is None else self.resolve(self.inventory)

    def alertmanagers(self) -> list[str]:
        """Every Alertmanager (the reconciler reads each, escalations go to each): `alertmanager_urls`,
        or `alertmanager_url` alone."""
        return list(self.alertmanager_urls) or [self.alertmanager_url]

    @field_validator("redact_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f'invalid regex "{pattern}": {exc.msg}') from None
        return patterns

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else self.base_dir / path

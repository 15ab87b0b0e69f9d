"""Secrets: from files named in the settings, or from the environment; never from the YAML itself."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.settings.loading import SettingsError
from service.settings.model import ENV_PREFIX, SECRET_ENV, Settings
from service.yamlload import (
    YamlPath,
    format_path,
)


@dataclass(frozen=True)
class Secrets:
    """Secret values, kept out of `Settings` so they never end up in a dump or a report."""

    webhook_bearer_token: str | None
    webhook_basic_password: str | None
    operator_token: str | None
    channel_urls: Mapping[str, str] = field(default_factory=dict)  # escalation channel name -> URL
    read_token: str | None = None

    def values(self) -> list[str]:
        fixed = (self.webhook_bearer_token, self.webhook_basic_password, self.operator_token, self.read_token)
        return [v for v in (*fixed, *self.channel_urls.values()) if v]


def _secret_error(settings: Settings, path: YamlPath, message: str) -> SettingsError:
    doc = settings._source
    return SettingsError(str(doc.error(path, message) if doc is not None else f"{format_path(path)}: {message}"))


def _read_secret_file(settings: Settings, path: Path | None, field: YamlPath) -> str | None:
    if path is None:
        return None
    full = settings.resolve(path)
    try:
        value = full.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise _secret_error(settings, field, f"cannot read secret file {full}: {exc.strerror}") from None
    if not value:
        raise _secret_error(settings, field, f"secret file {full} is empty")
    return value


def _env_secret(env: Mapping[str, str], variable: str) -> str | None:
    """The secret in ``variable``; set but empty is an error, not "no secret" (which would turn auth off)."""
    if variable not in env:
        return None
    value = env[variable].strip()
    if not value:
        raise SettingsError(f"environment {variable}: is set but empty; give the secret or unset the variable")
    return value


def load_secrets(settings: Settings, env: Mapping[str, str] | None = None) -> Secrets:
    env = os.environ if env is None else env
    auth = settings.webhook_auth
    secrets = Secrets(
        webhook_bearer_token=_env_secret(env, SECRET_ENV["webhook_bearer_token"])
        or _read_secret_file(settings, auth.bearer_token_file, ("webhook_auth", "bearer_token_file")),
        webhook_basic_password=_env_secret(env, SECRET_ENV["webhook_basic_password"])
        or _read_secret_file(settings, auth.basic_password_file, ("webhook_auth", "basic_password_file")),
        operator_token=_env_secret(env, SECRET_ENV["operator_token"])
        or _read_secret_file(settings, settings.operator.token_file, ("operator", "token_file")),
        read_token=_env_secret(env, SECRET_ENV["read_token"])
        or _read_secret_file(settings, settings.web.read_token_file, ("web", "read_token_file")),
    )
    if (secrets.webhook_basic_password is None) != (auth.basic_username is None):
        raise _secret_error(
            settings, ("webhook_auth",), "basic auth needs both basic_username and a password (file or env)"
        )
    return _with_channel_urls(settings, secrets, env)


def channel_url_env(name: str) -> str:
    return f"{ENV_PREFIX}CHANNEL_{name.upper().replace('-', '_')}_URL"


def _with_channel_urls(settings: Settings, secrets: Secrets, env: Mapping[str, str]) -> Secrets:
    """Escalation channel URLs from the environment or `url_file`; a webhook channel needs one."""
    urls: dict[str, str] = {}
    for index, channel in enumerate(settings.escalation.channels):
        where: YamlPath = ("escalation", "channels", index)
        url = _env_secret(env, channel_url_env(channel.name)) or _read_secret_file(
            settings, channel.url_file, (*where, "url_file")
        )
        if url is not None:
            if not url.startswith(("http://", "https://", "nats://", "tls://")):
                raise _secret_error(settings, where, f"channel {channel.name}: the URL given is not a URL")
            urls[channel.name] = url
        elif channel.url is None and channel.type in ("webhook", "slack"):
            raise _secret_error(
                settings, where, f"channel {channel.name} needs url, url_file or {channel_url_env(channel.name)}"
            )
    return dataclasses.replace(secrets, channel_urls=urls)


def open_access(secrets: Secrets) -> list[str]:
    """What the settings leave open to anyone who can connect, one sentence each, for a start-up warning."""
    found: list[str] = []
    if secrets.webhook_bearer_token is None and secrets.webhook_basic_password is None:
        found.append(
            "the webhook accepts unauthenticated requests: anyone who can connect can post alerts "
            f"(set webhook_auth or {SECRET_ENV['webhook_bearer_token']})"
        )
    if secrets.operator_token is None:
        found.append(
            "no operator token: operator actions (approve, deny, acknowledge, pause, reset limits) are disabled "
            f"(set operator.token_file or {SECRET_ENV['operator_token']})"
        )
    if secrets.read_token is None:
        found.append(
            "no read token: reports, pages and the API's reads are open to anyone who can connect "
            f"(set web.read_token_file or {SECRET_ENV['read_token']})"
        )
    return found

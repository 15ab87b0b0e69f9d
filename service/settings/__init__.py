"""Service settings: `remediator.yaml`, then environment overrides, then secrets from files or env.

Secrets are never read from the YAML itself: it names files (`*_file`), and the environment may give
the values directly (`REMEDIATOR_WEBHOOK_BEARER_TOKEN`, ...), which is what container platforms do.

- model.py: every section, validated by pydantic
- loading.py: the file and the environment overrides, errors naming file and field
- secrets.py: the secret values, and what the settings leave open (the start-up warnings)
"""

from service.settings.loading import SettingsError, load_settings
from service.settings.model import (
    AlertmanagerAlertSettings,
    ChannelSettings,
    EscalationSettings,
    LevelSettings,
    LimitSettings,
    OperatorSettings,
    ServerSettings,
    Settings,
    SilencePauseSettings,
    SshSettings,
    StoreSettings,
    WebhookAuthSettings,
    WebSettings,
)
from service.settings.secrets import Secrets, channel_url_env, load_secrets, open_access

__all__ = [
    "AlertmanagerAlertSettings",
    "ChannelSettings",
    "EscalationSettings",
    "LevelSettings",
    "LimitSettings",
    "OperatorSettings",
    "Secrets",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "SilencePauseSettings",
    "SshSettings",
    "StoreSettings",
    "WebSettings",
    "WebhookAuthSettings",
    "channel_url_env",
    "load_secrets",
    "load_settings",
    "open_access",
]

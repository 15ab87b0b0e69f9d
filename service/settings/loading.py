"""Loading the settings: the file, then environment overrides, with errors that name the file and field."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from service.errors import ConfigurationError
from service.settings.model import ENV_PREFIX, SECRET_ENV, Settings
from service.yamlload import (
    ConfigError,
    ConfigErrors,
    YamlDocument,
    YamlPath,
    did_you_mean,
    format_path,
    load_yaml_file,
    validation_errors,
)


class SettingsError(ConfigurationError):
    """Settings that cannot be used; the message names the file and the field."""


# REMEDIATOR_* variables that are not settings: a channel's URL (a secret, see secrets.py) and the
# execution id the service gives each exec step (so a remediator run from a step still starts).
_NOT_SETTINGS_RE = re.compile(rf"{ENV_PREFIX}CHANNEL_[A-Z0-9_]+_URL|{ENV_PREFIX}EXECUTION_ID")


def _env_overrides(env: Mapping[str, str], model: type[BaseModel]) -> tuple[dict[str, Any], dict[YamlPath, str]]:
    """REMEDIATOR_LISTEN_PORT=1 -> {listen_port: "1"}; REMEDIATOR_STORE__PATH -> {store: {path}}.

    Lists take comma-separated values. Secret values (…_TOKEN, …_PASSWORD) are not settings. A
    variable that names no setting is an error naming it (as an unknown key in the file is): a typo
    such as REMEDIATOR_STORE__BAKEND must not leave the default in force unnoticed.
    Also returns which variable set each path, so an error in an override names the variable.
    """
    overrides: dict[str, Any] = {}
    sources: dict[YamlPath, str] = {}
    unknown: list[ConfigError] = []
    for key, value in sorted(env.items()):
        if not key.startswith(ENV_PREFIX) or key in SECRET_ENV.values() or _NOT_SETTINGS_RE.fullmatch(key):
            continue
        parts = key[len(ENV_PREFIX) :].lower().split("__")
        fields: type[BaseModel] | None = model
        target = overrides
        for index, part in enumerate(parts):
            if fields is None or part not in fields.model_fields:
                known = [] if fields is None else [f for f in fields.model_fields if not f.startswith("_")]
                where = format_path(parts[:index]) or "the settings"
                message = f"{where} has no setting {part!r}{did_you_mean(part, known)}"
                unknown.append(ConfigError(f"environment {key}", None, format_path(parts), message))
                break
            annotation = fields.model_fields[part].annotation
            if index == len(parts) - 1:
                target[part] = value.split(",") if annotation == list[str] else value
                sources[tuple(parts)] = key
            else:
                fields = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
                target = target.setdefault(part, {})
    if unknown:
        raise SettingsError("\n".join(str(problem) for problem in unknown))
    return overrides, sources


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _env_variable(loc: tuple[int | str, ...], sources: Mapping[YamlPath, str]) -> str | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in sources:
            return sources[loc[:end]]
    return None


def _read_document(path: Path | None) -> YamlDocument:
    if path is None:
        return YamlDocument("(defaults)", {}, {})
    try:
        doc = load_yaml_file(path)
    except ConfigErrors as exc:
        raise SettingsError(str(exc)) from None
    if doc.data is None:
        # Empty, only a BOM, blanks or comments: most likely a file that lost its content, and running on
        # the defaults would silently drop every credential it held. (A leading BOM on a real file is fine.)
        raise SettingsError(f"{doc.file}: the file has no settings; write {{}} in it to run on the defaults")
    if not isinstance(doc.data, dict):
        raise SettingsError(str(doc.error((), "the top level must be a mapping of settings")))
    return doc


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``path`` (None: defaults) and ``REMEDIATOR_*`` overrides.

    Raises SettingsError with one ``file:line: field: message`` line per problem (an override's
    problem names its environment variable instead of a line).
    """
    env = os.environ if env is None else env
    doc = _read_document(path)
    raw: dict[str, Any] = dict(doc.data)
    if path is not None:
        raw.setdefault("base_dir", str(path.parent.resolve()))
    overrides, sources = _env_overrides(env, Settings)
    raw = _merge(raw, overrides)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems: list[ConfigError] = []
        # validation_errors keeps pydantic's order, so each located error pairs with its raw error.
        located_errors = validation_errors(exc, doc, model=Settings)
        for err, located in zip(exc.errors(include_url=False), located_errors, strict=True):
            loc = tuple(err["loc"])
            variable = _env_variable(loc, sources)
            if variable is None:
                problems.append(located)
            else:
                problems.append(ConfigError(f"environment {variable}", None, format_path(loc), located.message))
        raise SettingsError("\n".join(str(p) for p in problems)) from None
    if path is not None:
        settings._source = doc
    return settings

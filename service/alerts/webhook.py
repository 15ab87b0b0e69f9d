"""Alertmanager webhook (version 4) payload, validated at the edge.

Unknown fields from newer Alertmanager versions (``notification_reason``, ``routeLabels``, ...) are
accepted and kept: the raw body is stored as received, and the models allow extras.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

# Alertmanager's Go zero time: an alert whose endsAt is this is still firing.
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
# Times whose UTC form a datetime can hold, so converting one to UTC never overflows (an offset is
# under a day). Checked by pydantic-core, not a Python validator: on the hot path a Python callback
# from the validator costs more than parsing the rest of the alert.
AlertTime = Annotated[AwareDatetime, Field(ge=ZERO_TIME, lt=datetime(9999, 12, 31, tzinfo=UTC))]

AlertStatus = Literal["firing", "resolved"]


class WebhookAlert(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    status: AlertStatus
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: AlertTime
    endsAt: AlertTime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, max_length=128)

    @property
    def ends_at(self) -> datetime | None:
        """endsAt, or None while the alert is still firing (absent, or the zero time)."""
        return None if self.endsAt is None or self.endsAt == ZERO_TIME else self.endsAt


class WebhookNotification(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    version: Literal["4"]
    groupKey: str
    truncatedAlerts: int = Field(default=0, ge=0)
    status: AlertStatus
    receiver: str
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[WebhookAlert] = Field(min_length=1)


def field_path(loc: tuple[int | str, ...]) -> str:
    """('alerts', 0, 'startsAt') -> 'alerts[0].startsAt'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(body)"


def describe_errors(error: ValidationError) -> list[dict[str, str]]:
    """Each problem as {field, message}, for a 400 answer a human can act on."""
    problems = []
    for item in error.errors(include_url=False):
        if item["type"] == "json_invalid":
            problems.append({"field": "(body)", "message": f"invalid JSON: {item['ctx'].get('error', item['msg'])}"})
            continue
        message = item["msg"]
        if item["type"] == "literal_error" and item["loc"] == ("version",):
            message = f'unsupported webhook version {item.get("input")!r}: only version "4" is understood'
        problems.append({"field": field_path(tuple(item["loc"])), "message": message})
    return problems


def parse(body: bytes) -> WebhookNotification:
    """Validate raw bytes; raises ValidationError (bad JSON included) for anything else."""
    return WebhookNotification.model_validate_json(body)

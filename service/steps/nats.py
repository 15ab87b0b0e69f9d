"""``nats`` step: NATS server health from the monitoring endpoints, JetStream state and actions."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from service.steps import StepSpecBase

Action = Literal["health", "varz", "jsz", "consumer_info", "publish", "purge_stream"]

# The fields each action needs; the loader's error names the missing one.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "consumer_info": ("stream", "consumer"),
    "publish": ("subject",),
    "purge_stream": ("stream",),
}


class Spec(StepSpecBase):
    """One NATS check or action.

    - ``health``: monitoring ``/healthz`` answers ok; with ``jetstream: true`` (default) ``/jsz`` must
      also show JetStream enabled, because ``/healthz?js-enabled-only=true`` says ok when it is off.
    - ``varz``, ``jsz``: monitoring snapshots into ``data`` (``jsz`` with consumers; narrowed to
      ``stream``/``consumer`` when given).
    - ``consumer_info``: ``num_pending``, ``num_ack_pending``, ``num_redelivered`` through JetStream;
      fails when above ``max_pending`` / ``max_ack_pending``.
    - ``publish``: ``payload`` to ``subject`` (``ack: true`` waits for the JetStream acknowledgement).
    - ``purge_stream``: deletes every message of ``stream`` (the playbook loader requires an approval).
    """

    type: Literal["nats"]
    action: Action
    url: str | None = Field(default=None, description="client URL; default: the service's NATS")
    monitor_url: str | None = Field(default=None, description="monitoring URL; default: the service's")
    jetstream: bool = True
    stream: str | None = None
    consumer: str | None = None
    subject: str | None = None
    payload: str = ""
    ack: bool = False
    max_pending: int | None = Field(default=None, ge=0)
    max_ack_pending: int | None = Field(default=None, ge=0)
    timeout: float = Field(default=10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _fields_for_action(self) -> Self:
        for name in _REQUIRED.get(self.action, ()):
            if not getattr(self, name):
                raise ValueError(f"action {self.action!r} needs {name!r}")
        limits = (self.max_pending, self.max_ack_pending)
        if self.action != "consumer_info" and limits != (None, None):
            raise ValueError("max_pending/max_ack_pending apply to action 'consumer_info' only")
        return self

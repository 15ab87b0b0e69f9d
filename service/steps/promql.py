"""``promql`` step: evaluate an instant query through the Prometheus HTTP API and assert on it."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.steps import StepSpecBase


class SampleExpectation(BaseModel):
    """``<sample value> <op> <value>`` must hold for every sample of the result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: Literal["==", "!=", "<", "<=", ">", ">="]
    value: float


class RangeEvidence(BaseModel):
    """Also fetch the query over the last ``duration`` seconds, kept as evidence (never asserted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    duration: float = Field(gt=0, le=7 * 86400)
    step: float = Field(default=15.0, gt=0, le=86400)


class Spec(StepSpecBase):
    """Run ``query`` as an instant query.

    With ``expect``: ok when there is at least one sample and every sample satisfies it.
    With ``expect_empty: true``: ok when the query returns no sample (an alert expression that has
    stopped firing). With neither: ok when the query runs; the result is evidence.
    """

    type: Literal["promql"]
    query: str = Field(min_length=1)
    expect: SampleExpectation | None = None
    expect_empty: bool = False
    range: RangeEvidence | None = None
    prometheus_url: str | None = Field(default=None, description="default: the service's Prometheus")
    timeout: float = Field(default=10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _one_assertion(self) -> Self:
        if self.expect is not None and self.expect_empty:
            raise ValueError("give either expect or expect_empty, not both")
        return self

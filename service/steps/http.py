"""``http`` step: one HTTP request, with expected status codes and optional JSON expectations."""

from __future__ import annotations

import re
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.steps import StepSpecBase

_OPERATORS = ("equals", "not_equals", "in", "lt", "le", "gt", "ge", "exists")
_SEGMENT = re.compile(r"([^.\[\]]+)?((?:\[\d+\])*)")
_INDEX = re.compile(r"\[(\d+)\]")

JsonPath = tuple[str | int, ...]


def parse_json_path(path: str) -> JsonPath:
    """``"a.b[0].c"`` -> ``("a", "b", 0, "c")``; ``"[1].x"`` indexes a top-level array.

    Keys containing ``.``, ``[`` or ``]`` cannot be addressed; that keeps the syntax unambiguous.
    """
    if not path:
        raise ValueError("empty JSON path")
    parts: list[str | int] = []
    for i, segment in enumerate(path.split(".")):
        match = _SEGMENT.fullmatch(segment)
        if match is None or segment == "" or (match.group(1) is None and i > 0):
            raise ValueError(f"invalid JSON path {path!r} at segment {segment!r}")
        if match.group(1) is not None:
            parts.append(match.group(1))
        parts.extend(int(n) for n in _INDEX.findall(match.group(2)))
    return tuple(parts)


class JsonExpectation(BaseModel):
    """One assertion on the response JSON: ``path`` and exactly one operator.

    Operators: ``equals`` / ``not_equals`` (any JSON value), ``in`` (a list of values), ``lt`` / ``le`` /
    ``gt`` / ``ge`` (numbers), ``exists`` (true: the path resolves; false: it does not).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    path: str
    equals: Any = None
    not_equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    lt: float | None = None
    le: float | None = None
    gt: float | None = None
    ge: float | None = None
    exists: bool | None = None

    @field_validator("path")
    @classmethod
    def _valid_path(cls, path: str) -> str:
        parse_json_path(path)
        return path

    @model_validator(mode="after")
    def _one_operator(self) -> Self:
        given = self.operators()
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(_OPERATORS)} (got {len(given)})")
        return self

    def operators(self) -> list[str]:
        """The operators set in this expectation (by their YAML names)."""
        # model_fields_set tells "equals: null" apart from "equals not given".
        return [("in" if name == "in_" else name) for name in self.model_fields_set if name != "path"]


class Spec(StepSpecBase):
    """Send one request; succeed when the status is in ``expect_status`` and every ``expect_json`` holds.

    Redirects are not followed: a remediation endpoint that redirects is reported, not chased.
    """

    type: Literal["http"]
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    json_body: Any = Field(default=None, alias="json", description="sent as application/json")
    expect_status: list[int] = Field(default_factory=lambda: [200], min_length=1)
    expect_json: list[JsonExpectation] = Field(default_factory=list)
    verify_tls: bool = True
    timeout: float = Field(default=10.0, gt=0, le=3600)

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("expect_json", mode="before")
    @classmethod
    def _single_expectation(cls, value: Any) -> Any:
        # One expectation is usually enough; accept it without a surrounding list.
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _one_body(self) -> Self:
        if self.body is not None and "json_body" in self.model_fields_set:
            raise ValueError("give either body or json, not both")
        return self

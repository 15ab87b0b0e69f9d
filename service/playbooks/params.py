"""Playbook params: what a playbook declares (:class:`ParamSpec`) and how a value is checked against it.

Values arrive from rules as rendered strings (or YAML scalars): each is coerced to the declared type,
then checked against its allowlist, pattern and length before anything runs; a refusal names the
param and why (:class:`ParamError`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Literal, Protocol, Self

from pydantic import Field, field_validator, model_validator

from service.alerts.matchers import AnchoredRegex, MatcherError, compile_regex
from service.errors import ConfigurationError
from service.models import StrictModel

ParamValue = str | int | float | bool
ParamType = Literal["str", "int", "float", "bool"]
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_INT_RE = re.compile(r"[+-]?\d+")


class ParamSpec(StrictModel):
    """A declared param. Values arrive as rendered strings from rules and are coerced to ``type``
    then checked against ``allow`` / ``pattern`` (RE2, fully anchored, as matchers) / ``max_length``."""

    type: ParamType = "str"
    description: str = ""
    required: bool | None = Field(default=None, description="default: true unless a default is given")
    default: ParamValue | None = None
    allow: list[ParamValue] | None = Field(default=None, min_length=1)
    pattern: str | None = None
    max_length: int = Field(default=256, gt=0, le=65536)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                compile_regex(pattern)
            except MatcherError as exc:
                raise ValueError(str(exc)) from None
        return pattern

    @cached_property
    def pattern_regex(self) -> AnchoredRegex | None:
        """``pattern`` compiled (once per spec; the validator has already refused a bad one)."""
        return compile_regex(self.pattern) if self.pattern is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.pattern is not None and self.type != "str":
            raise ValueError("pattern applies to str params only; use allow for other types")
        if self.required and self.default is not None:
            raise ValueError("a param with a default is not required")
        for value in self.allow or ():
            try:
                coerce_param(self.type, value)
            except ValueError as exc:
                raise ValueError(f"allow: {exc}") from None
        if self.default is not None:
            problem = check_param(self, self.default)
            if isinstance(problem, str):
                raise ValueError(f"default: {problem}")
        return self

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None


def coerce_param(kind: ParamType, raw: ParamValue) -> ParamValue:
    """Convert a rendered string (or a YAML scalar) to ``kind``; ValueError says why not."""
    if kind == "str":
        if not isinstance(raw, str):
            raise ValueError(f"expected a string, got {type(raw).__name__}")
        return raw
    if isinstance(raw, bool):
        if kind == "bool":
            return raw
        raise ValueError(f"expected {kind}, got a boolean")
    if kind == "bool":
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"expected a boolean (true/false), got {_show(str(raw))}")
    if kind == "int":
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str) and _INT_RE.fullmatch(raw.strip()):
            return int(raw)
        raise ValueError(f"expected an integer, got {_show(str(raw))}")
    try:
        number = float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {_show(str(raw))}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {_show(str(raw))}")
    return number


def check_param(spec: ParamSpec, raw: ParamValue) -> tuple[ParamValue] | str:
    """``(value,)`` when ``raw`` is acceptable for ``spec``, else the reason it is refused."""
    try:
        value = coerce_param(spec.type, raw)
    except ValueError as exc:
        return str(exc)
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        return "value contains a NUL character"
    if len(text) > spec.max_length:
        return f"value is {len(text)} characters long, over max_length {spec.max_length}"
    if spec.allow is not None and value not in [coerce_param(spec.type, a) for a in spec.allow]:
        return f"value {_show(text)} is not one of the allowed values {spec.allow}"
    if spec.pattern_regex is not None and not spec.pattern_regex.matches(text):
        return f'value {_show(text)} does not match pattern "{spec.pattern}"'
    return (value,)


class ParamError(ConfigurationError, ValueError):
    """Params refused for a playbook; ``problems`` has one line per bad param."""

    def __init__(self, playbook: str, problems: Sequence[str]) -> None:
        self.playbook = playbook
        self.problems = tuple(problems)
        super().__init__(f'params for playbook "{playbook}" refused: ' + "; ".join(self.problems))


class DeclaresParams(Protocol):
    """What :func:`validate_params` reads of a playbook (kept a Protocol so params need not import
    the playbook model, which imports them)."""

    @property
    def name(self) -> str: ...
    @property
    def params(self) -> Mapping[str, ParamSpec]: ...


def validate_params(playbook: DeclaresParams, raw: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
    """Coerce and check rendered param values before anything runs.

    Applies defaults, refuses missing required params and undeclared ones, and checks each value's
    type, allowlist, pattern and length. Raises :class:`ParamError` naming every bad param.
    """
    problems: list[str] = []
    out: dict[str, ParamValue] = {}
    for name in raw:
        if name not in playbook.params:
            problems.append(f'param "{name}" is not declared by the playbook')
    for name, spec in playbook.params.items():
        if name not in raw:
            if spec.default is not None:
                out[name] = coerce_param(spec.type, spec.default)
            elif spec.is_required:
                problems.append(f'param "{name}" is required')
            continue
        checked = check_param(spec, raw[name])
        if isinstance(checked, str):
            problems.append(f'param "{name}": {checked}')
        else:
            out[name] = checked[0]
    if problems:
        raise ParamError(playbook.name, problems)
    return out


def _show(text: str, limit: int = 60) -> str:
    shown = text if len(text) <= limit else text[:limit] + "..."
    return '"' + shown.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'

"""Playbooks: the format, strict loading, and parameter validation.

A playbook is one runbook procedure: typed params, ordered steps, a verification block and what to
do on failure. The I/O step models come from ``service.steps.*``; the control steps (``wait``,
``approval``, ``rolling``, ``escalate``) and the verification-only checks (``alert_resolved``,
``alert_expr``) are defined here. The format is documented in ``docs/playbooks.md``.

Loading checks more than the schema: step names are unique, every template only reads known
variables (``params.<declared>``, ``steps.<earlier step>``...), and a ``nats`` ``purge_stream``
runs only after an ``approval`` in the same (or an enclosing) step list.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.alerts.matchers import AnchoredRegex, MatcherError, compile_regex
from service.errors import ConfigurationError
from service.playbooks.templating import TemplateEngine, TemplateError
from service.steps import StepSpecBase
from service.steps.exec import Spec as ExecSpec
from service.steps.http import Spec as HttpSpec
from service.steps.nats import Spec as NatsSpec
from service.steps.promql import Spec as PromqlSpec
from service.steps.tcp import Spec as TcpSpec
from service.yamlload import ConfigError, ConfigErrors, Duration, PathPart, YamlDocument, load_yaml
from service.yamlload import validation_errors as _validation_errors

# What a playbook template may read. The executor builds exactly this context:
#   params      validated param values            labels / annotations  of the triggering alert
#   steps       results of earlier steps by name: {ok, status, summary, output, exit_code, data}
#   execution   {id, rule, playbook, target, fingerprint, started_at}
PLAYBOOK_VARIABLES = frozenset({"params", "labels", "annotations", "steps", "execution"})
# Keys of a step that are not templates: the discriminator, the step's own name, the rolling
# variable name, and the condition (an expression, checked as one).
_NOT_TEMPLATED = frozenset({"type", "name", "var", "when"})
_NAME_RE = r"^[a-z0-9][a-z0-9_.-]*$"
_IDENT_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_INT_RE = re.compile(r"[+-]?\d+")

ParamValue = str | int | float | bool
ParamType = Literal["str", "int", "float", "bool"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- control steps ---------------------------------------------------------------------------


class WaitStep(StepSpecBase):
    """Sleep ``seconds`` (the executor's clock, so tests do not sleep)."""

    type: Literal["wait"]
    seconds: Duration = Field(gt=0, le=86400)
    timeout: Duration = Field(default=86400, gt=0, le=86400)

    @model_validator(mode="after")
    def _fits(self) -> Self:
        if self.seconds > self.timeout:
            raise ValueError("seconds is longer than the step timeout")
        return self


class ApprovalStep(StepSpecBase):
    """Pause until a human approves through the API/UI; denial or ``timeout`` fails the step."""

    type: Literal["approval"]
    prompt: str = Field(min_length=1)
    timeout: Duration = Field(default=3600, gt=0, le=7 * 86400)


class EscalateStep(StepSpecBase):
    """Escalate to a human with a (templated) reason and continue."""

    type: Literal["escalate"]
    reason: str = Field(min_length=1)
    severity: Literal["info", "warning", "critical", "page"] = "critical"


# --- verification-only checks --------------------------------------------------------------


class AlertResolvedCheck(StepSpecBase):
    """Holds once Alertmanager's resolved notification for the same fingerprint has arrived."""

    type: Literal["alert_resolved"]


class AlertExprCheck(StepSpecBase):
    """Holds once the alert's own expression returns nothing. ``expr`` defaults to the one in the
    alert's ``generatorURL`` (``g0.expr``)."""

    type: Literal["alert_expr"]
    expr: str | None = None
    prometheus_url: str | None = None
    timeout: Duration = Field(default=10.0, gt=0, le=3600)


Check = Annotated[
    ExecSpec | HttpSpec | TcpSpec | PromqlSpec | NatsSpec | AlertResolvedCheck | AlertExprCheck,
    Field(discriminator="type"),
]


class Verify(_Model):
    """Poll every check each ``interval`` until all hold, failing when ``within`` has passed."""

    interval: Duration = Field(default=10, gt=0, le=3600)
    within: Duration = Field(default=300, gt=0, le=86400)
    checks: list[Check] = Field(min_length=1)

    @model_validator(mode="after")
    def _interval_fits(self) -> Self:
        if self.interval > self.within:
            raise ValueError("interval is longer than within")
        return self


class RollingStep(StepSpecBase):
    """For each item, one at a time: run ``steps`` with the item bound to ``var``, then poll
    ``check``; stop at the first item that fails. ``items`` is a list of templates, or one
    template whose output is split on commas and whitespace."""

    type: Literal["rolling"]
    items: list[str] | str
    var: str = Field(default="item", pattern=_IDENT_RE)
    steps: list[Step] = Field(min_length=1)
    check: Verify | None = None
    pause: Duration = Field(default=0, ge=0, le=3600)
    timeout: Duration = Field(default=3600, gt=0, le=86400)

    @field_validator("var")
    @classmethod
    def _not_shadowing(cls, var: str) -> str:
        if var in PLAYBOOK_VARIABLES:
            raise ValueError(f'"{var}" would hide the playbook variable of that name')
        return var


Step = Annotated[
    ExecSpec | HttpSpec | TcpSpec | PromqlSpec | NatsSpec | WaitStep | ApprovalStep | RollingStep | EscalateStep,
    Field(discriminator="type"),
]
RollingStep.model_rebuild()


class OnFailure(_Model):
    """Cleanup ``steps`` run when a step or verification fails; then escalate if ``escalate``."""

    escalate: bool = True
    steps: list[Step] = Field(default_factory=list)


# --- params ------------------------------------------------------------------------------------


class ParamSpec(_Model):
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


def validate_params(playbook: Playbook, raw: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
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


# --- the playbook --------------------------------------------------------------------------


class Playbook(_Model):
    name: str = Field(pattern=_NAME_RE)
    description: str = ""
    runbook: str = Field(default="", description='e.g. "T-OPS-04 §1A"')
    params: dict[Annotated[str, Field(pattern=_IDENT_RE)], ParamSpec] = Field(default_factory=dict)
    timeout: Duration = Field(default=900, gt=0, le=86400, description="the whole run, verification included")
    idempotent: bool = Field(default=False, description="steps are safe to repeat: resume after a crash")
    on_resolved: Literal["continue", "cancel"] = "continue"
    steps: list[Step] = Field(min_length=1)
    verify: Verify | None = None
    on_failure: OnFailure = Field(default_factory=OnFailure)


@dataclass(frozen=True)
class LoadedPlaybook:
    """A validated playbook, where it came from, and its version (sha256 of the file's bytes)."""

    playbook: Playbook
    file: str
    version: str

    @property
    def name(self) -> str:
        return self.playbook.name


def playbook_from_source(source: bytes, file: str, engine: TemplateEngine) -> LoadedPlaybook:
    """Parse, validate and cross-check one playbook file. Raises ConfigErrors with every problem."""
    doc = load_yaml(source, file)
    if not isinstance(doc.data, dict):
        raise ConfigErrors([ConfigError(file, 1, "", "a playbook file must be a mapping")])
    try:
        playbook = Playbook.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigErrors(_validation_errors(exc, doc)) from None
    errors = _cross_check(doc, playbook, engine)
    if errors:
        raise ConfigErrors(errors)
    return LoadedPlaybook(playbook, file, hashlib.sha256(source).hexdigest())


def load_playbooks(files: Iterable[tuple[Path, str]], engine: TemplateEngine) -> dict[str, LoadedPlaybook]:
    """Load ``(path, display_name)`` files; names must be unique. Raises ConfigErrors with all."""
    errors: list[ConfigError] = []
    out: dict[str, LoadedPlaybook] = {}
    for path, display in files:
        try:
            loaded = playbook_from_source(path.read_bytes(), display, engine)
        except OSError as exc:
            errors.append(ConfigError(display, None, "", f"cannot read: {exc.strerror}"))
            continue
        except ConfigErrors as exc:
            errors.extend(exc.errors)
            continue
        if loaded.name in out:
            first = out[loaded.name].file
            errors.append(ConfigError(display, 1, "name", f'duplicate playbook name "{loaded.name}" (also in {first})'))
            continue
        out[loaded.name] = loaded
    if errors:
        raise ConfigErrors(errors)
    return out


# --- cross-checks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StepAt:
    path: tuple[PathPart, ...]
    raw: Mapping[str, Any]
    model: StepSpecBase
    scope: frozenset[str]  # extra template variables (rolling vars)


def _walk_steps(
    steps: Sequence[StepSpecBase], raw: Sequence[Any], path: tuple[PathPart, ...], scope: frozenset[str]
) -> Iterator[_StepAt]:
    """Steps in document order, rolling sub-steps and checks included."""
    for index, (model, raw_step) in enumerate(zip(steps, raw, strict=True)):
        here = (*path, index)
        yield _StepAt(here, raw_step, model, scope)
        if isinstance(model, RollingStep):
            inner = scope | {model.var}
            yield from _walk_steps(model.steps, raw_step["steps"], (*here, "steps"), inner)
            if model.check is not None:
                yield from _walk_steps(
                    model.check.checks, raw_step["check"]["checks"], (*here, "check", "checks"), inner
                )


def _all_steps(doc: YamlDocument, playbook: Playbook) -> list[_StepAt]:
    data = doc.data
    out = list(_walk_steps(playbook.steps, data["steps"], ("steps",), frozenset()))
    if playbook.verify is not None:
        out += _walk_steps(playbook.verify.checks, data["verify"]["checks"], ("verify", "checks"), frozenset())
    if playbook.on_failure.steps:
        out += _walk_steps(playbook.on_failure.steps, data["on_failure"]["steps"], ("on_failure", "steps"), frozenset())
    return out


def _cross_check(doc: YamlDocument, playbook: Playbook, engine: TemplateEngine) -> list[ConfigError]:
    errors: list[ConfigError] = []
    seen: dict[str, tuple[PathPart, ...]] = {}
    for step in _all_steps(doc, playbook):
        # References are checked against the names seen so far: a step can only read results
        # of steps that ran before it (document order: steps, verify checks, on_failure steps).
        errors += _check_templates(doc, playbook, engine, step, frozenset(seen))
        if step.model.name is not None:
            if step.model.name in seen:
                first = doc.line_of(seen[step.model.name])
                errors.append(
                    doc.error((*step.path, "name"), f'duplicate step name "{step.model.name}" (first at line {first})')
                )
            else:
                seen[step.model.name] = step.path
    errors += _check_purges(doc, playbook.steps, ("steps",))
    errors += _check_purges(doc, playbook.on_failure.steps, ("on_failure", "steps"))
    if playbook.verify is not None:
        for index, check in enumerate(playbook.verify.checks):
            if isinstance(check, NatsSpec) and check.action == "purge_stream":
                errors.append(
                    doc.error(("verify", "checks", index, "action"), "a verification check must not purge a stream")
                )
    return errors


def _check_templates(
    doc: YamlDocument,
    playbook: Playbook,
    engine: TemplateEngine,
    step: _StepAt,
    earlier_steps: frozenset[str],
) -> list[ConfigError]:
    errors: list[ConfigError] = []
    known = PLAYBOOK_VARIABLES | step.scope

    def check(path: tuple[PathPart, ...], source: str, expression: bool) -> None:
        try:
            if expression:
                names = engine.condition_variables(source)
            else:
                names = engine.undeclared_variables(source)
            unknown = sorted(names - known)
            if unknown:
                errors.append(
                    doc.error(
                        path, f"unknown template variable {', '.join(unknown)} (known: {', '.join(sorted(known))})"
                    )
                )
                return
            for param in sorted(engine.attributes_of(source, "params", expression=expression) - set(playbook.params)):
                errors.append(doc.error(path, f"params.{param} is not a declared param"))
            for name in sorted(engine.attributes_of(source, "steps", expression=expression) - earlier_steps):
                errors.append(doc.error(path, f"steps.{name} does not name an earlier step"))
        except TemplateError as exc:
            errors.append(doc.error(path, str(exc)))

    for key, value in step.raw.items():
        if key == "when" and isinstance(value, str):
            check((*step.path, key), value, True)
        elif key not in _NOT_TEMPLATED and not (isinstance(step.model, RollingStep) and key in ("steps", "check")):
            for path, text in _strings(value, (*step.path, key)):
                check(path, text, False)
    return errors


def _strings(value: Any, path: tuple[PathPart, ...]) -> Iterator[tuple[tuple[PathPart, ...], str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))


def _is_gate(step: StepSpecBase) -> bool:
    # An approval that may be skipped (when) or whose denial is ignored (allow_failure) gates nothing.
    return isinstance(step, ApprovalStep) and step.when is None and not step.allow_failure


def _check_purges(
    doc: YamlDocument, steps: Sequence[StepSpecBase], path: tuple[PathPart, ...], approved: bool = False
) -> list[ConfigError]:
    """A purge needs an unconditional approval earlier in its own list or an enclosing one. An
    approval inside a rolling step does not count after it (the items may be empty), nor does
    one in the main steps for on_failure steps (they run when it was denied)."""
    errors: list[ConfigError] = []
    for index, step in enumerate(steps):
        here = (*path, index)
        if _is_gate(step):
            approved = True
        elif isinstance(step, NatsSpec) and step.action == "purge_stream" and not approved:
            errors.append(
                doc.error(
                    (*here, "action"),
                    "purge_stream needs an approval step before it in the same playbook "
                    "(unconditional, without allow_failure)",
                )
            )
        elif isinstance(step, RollingStep):
            errors += _check_purges(doc, step.steps, (*here, "steps"), approved)
    return errors


def rolling_items(step: RollingStep, engine: TemplateEngine, context: Mapping[str, Any]) -> list[str]:
    """Render ``items``: each list element is one item; a single template's output is split on
    commas and whitespace (``"{{ labels.nodes }}"`` with ``"r1, r2"`` gives two). Empty items drop."""
    if isinstance(step.items, list):
        rendered = [engine.render(item, context) for item in step.items]
        return [item for item in rendered if item]
    return [item for item in re.split(r"[,\s]+", engine.render(step.items, context)) if item]

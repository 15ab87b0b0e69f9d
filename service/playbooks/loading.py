"""Reading playbook files: the schema, then the checks a schema cannot make.

Loading checks more than the schema: step names are unique, every template only reads known
variables (``params.<declared>``, ``steps.<earlier step>``...), and a ``nats`` ``purge_stream``
runs only after an ``approval`` in the same (or an enclosing) step list. Every problem is collected
(file, line, field, message), not just the first.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.playbooks.context import PLAYBOOK_VARIABLES
from service.playbooks.playbook import (
    ApprovalStep,
    LoadedPlaybook,
    Playbook,
    RollingStep,
)
from service.playbooks.scriptenv import missing_variables, required_variables
from service.playbooks.templating import TemplateEngine, TemplateError
from service.steps import StepSpecBase
from service.steps.exec import ProgramSpec
from service.steps.exec_env import inherited_env
from service.steps.nats import Spec as NatsSpec
from service.yamlload import ConfigError, ConfigErrors, PathPart, YamlDocument, load_yaml
from service.yamlload import validation_errors as _validation_errors

# Keys of a step that are not templates: the discriminator, the step's own name, the rolling
# variable name, and the condition (an expression, checked as one).
_NOT_TEMPLATED = frozenset({"type", "name", "var", "when"})


def playbook_from_source(source: bytes, file: str, engine: TemplateEngine) -> LoadedPlaybook:
    """Parse, validate and cross-check one playbook file. Raises ConfigErrors with every problem."""
    doc = load_yaml(source, file)
    if not isinstance(doc.data, dict):
        raise ConfigErrors([ConfigError(file, 1, "", "a playbook file must be a mapping")])
    try:
        playbook = Playbook.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigErrors(_validation_errors(exc, doc, model=Playbook)) from None
    errors = _cross_check(doc, playbook, engine)
    if errors:
        raise ConfigErrors(errors)
    warnings = tuple(_script_warnings(doc, playbook, engine))
    return LoadedPlaybook(_with_shared_env(playbook), file, hashlib.sha256(source).hexdigest(), warnings)


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


def _with_shared_env(playbook: Playbook) -> Playbook:
    """The playbook with its ``env`` merged under each exec or ssh step's own, wherever the step is, so a
    run (and a report of what ran) sees each step's whole declared environment."""
    if not playbook.env:
        return playbook

    def merged(steps: Sequence[Any]) -> list[Any]:
        out: list[Any] = []
        for step in steps:
            if isinstance(step, ProgramSpec):  # exec and ssh
                step = step.model_copy(update={"env": {**playbook.env, **step.env}})
            elif isinstance(step, RollingStep):
                update: dict[str, Any] = {"steps": merged(step.steps)}
                if step.check is not None:
                    update["check"] = step.check.model_copy(update={"checks": merged(step.check.checks)})
                step = step.model_copy(update=update)
            out.append(step)
        return out

    update: dict[str, Any] = {
        "steps": merged(playbook.steps),
        "on_failure": playbook.on_failure.model_copy(update={"steps": merged(playbook.on_failure.steps)}),
    }
    if playbook.verify is not None:
        update["verify"] = playbook.verify.model_copy(update={"checks": merged(playbook.verify.checks)})
    return playbook.model_copy(update=update)


def _script_warnings(doc: YamlDocument, playbook: Playbook, engine: TemplateEngine) -> Iterator[ConfigError]:
    """An exec step whose script requires a variable (``${NAME:?...}``) the step does not pass, where
    that can be known: argv[0] renders from param defaults alone to a shell script on this machine
    (relative paths from the current directory, as the service resolves them)."""
    defaults = {name: spec.default for name, spec in playbook.params.items() if spec.default is not None}
    for step in _all_steps(doc, playbook):
        if not isinstance(step.model, ProgramSpec):
            continue
        try:
            program = engine.render(step.model.argv[0], {"params": defaults})
            cwd = engine.render(step.model.cwd, {"params": defaults}) if step.model.cwd else "."
        except TemplateError:
            continue  # it depends on the alert or on a param without a default
        if "/" not in program:
            continue  # looked up on PATH: not a runbook script
        required = required_variables(Path(cwd) / program)
        if not required:
            continue
        inherit = step.model.inherit_env
        env = {**inherited_env(inherit, os.environ), **playbook.env, **step.model.env}
        for name in missing_variables(required, env):
            hint = "set it in the playbook's env (or the step's)"
            if inherit is True or (inherit and inherited_env(inherit, {name: "x"})):
                hint += "; inherit_env would take it from the service's environment, where it is not set"
            yield doc.error(
                (*step.path, "argv", 0),
                f"warning: {program} requires {name} ({required[name].name}: ${{{name}:?...}}), "
                f"which this step does not pass: {hint}",
            )


def _cross_check(doc: YamlDocument, playbook: Playbook, engine: TemplateEngine) -> list[ConfigError]:
    errors: list[ConfigError] = []
    seen: dict[str, tuple[PathPart, ...]] = {}
    # The shared env is rendered in each exec step's context, so it may read what every step may,
    # except results of steps (the first step that uses it has none before it).
    for name, value in playbook.env.items():
        errors += _template_errors(doc, playbook, engine, ("env", name), value, False, frozenset(), frozenset())
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
    for key, value in step.raw.items():
        if key == "when" and isinstance(value, str):
            errors += _template_errors(doc, playbook, engine, (*step.path, key), value, True, step.scope, earlier_steps)
        elif key not in _NOT_TEMPLATED and not (isinstance(step.model, RollingStep) and key in ("steps", "check")):
            for path, text in _strings(value, (*step.path, key)):
                errors += _template_errors(doc, playbook, engine, path, text, False, step.scope, earlier_steps)
    return errors


def _template_errors(
    doc: YamlDocument,
    playbook: Playbook,
    engine: TemplateEngine,
    path: tuple[PathPart, ...],
    source: str,
    expression: bool,
    scope: frozenset[str],
    earlier_steps: frozenset[str],
) -> list[ConfigError]:
    """What is wrong with one template (or ``when`` expression): unknown variables, undeclared
    params, later steps, attributes the run does not provide, bad constant ``time_in`` arguments."""
    known = frozenset(PLAYBOOK_VARIABLES) | scope
    try:
        names = engine.condition_variables(source) if expression else engine.undeclared_variables(source)
        unknown = sorted(names - known)
        if unknown:
            message = f"unknown template variable {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            return [doc.error(path, message)]
        errors: list[ConfigError] = []
        for param in sorted(engine.attributes_of(source, "params", expression=expression) - set(playbook.params)):
            errors.append(doc.error(path, f"params.{param} is not a declared param"))
        for name in sorted(engine.attributes_of(source, "steps", expression=expression) - earlier_steps):
            errors.append(doc.error(path, f"steps.{name} does not name an earlier step"))
        for variable, attributes in PLAYBOOK_VARIABLES.items():
            if attributes is None or variable in scope:
                continue
            for name in sorted(engine.attributes_of(source, variable, expression=expression) - attributes):
                errors.append(
                    doc.error(path, f"{variable}.{name} is not provided (known: {', '.join(sorted(attributes))})")
                )
        errors.extend(doc.error(path, problem) for problem in engine.time_in_errors(source, expression=expression))
        return errors
    except TemplateError as exc:
        return [doc.error(path, str(exc))]


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

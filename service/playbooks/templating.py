"""Sandboxed, strict Jinja2 for rule params, targets and playbook step fields.

- Sandboxed (immutable): templates come from config files, and label values inside them come
  from whoever can make an alert fire; neither may reach Python internals or mutate the context.
- ``StrictUndefined``: a missing label is an error, never a silent empty string that would turn
  ``restart {{ labels.node }}`` into ``restart`` of everything.
- No autoescape: output goes to one argv element or one env var, never to a shell or HTML.
- String/list repetition and powers are capped, so ``{{ 'x' * 10**9 }}`` fails instead of eating
  the memory of the service that is supposed to fix things.
- One function beyond Jinja's: ``time_in(after="08:00", before="18:00", weekday="mon-fri", tz="UTC")``,
  true when the context's ``now`` lies in that window (Home Assistant's time condition), so a step
  can say ``when: "not time_in(after='08:00', before='18:00')"``. Constant arguments are checked at
  load time (:meth:`TemplateEngine.time_in_errors`).

One :class:`TemplateEngine` per loaded config (or per app) holds the compile cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from service.errors import ConfigurationError
from service.times import time_window

MAX_OUTPUT_CHARS = 1_000_000
MAX_CACHE_ENTRIES = 4096
MAX_EXPONENT = 64


class TemplateError(ConfigurationError, ValueError):
    """A template that does not compile or does not render; the message quotes the template."""


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is over the limit of {MAX_EXPONENT}")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int):
                    if len(seq) * count > MAX_OUTPUT_CHARS:
                        raise SecurityError("repetition result is over the size limit")
        return super().call_binop(context, operator, left, right)


TIME_IN = "time_in"


@jinja2.pass_context
def _time_in(
    context: jinja2.runtime.Context,
    after: str | None = None,
    before: str | None = None,
    weekday: str | Sequence[str] | None = None,
    tz: str = "UTC",
) -> bool:
    now = context.get("now")
    if not isinstance(now, datetime):
        raise ValueError("time_in() needs the current time: it is for playbook steps, not rules")
    return time_window(after, before, weekday, tz).contains(now)


class TemplateEngine:
    """Compiles templates once and renders them strictly."""

    def __init__(self) -> None:
        self._env = _Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self._env.globals[TIME_IN] = _time_in
        self._templates: dict[str, jinja2.Template] = {}
        self._expressions: dict[str, Callable[..., Any]] = {}

    def compile(self, source: str) -> jinja2.Template:
        """Compile (cached). Raises TemplateError on a syntax error."""
        template = self._templates.get(source)
        if template is None:
            try:
                template = self._env.from_string(source)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(f"template {_show(source)}: syntax error: {exc.message}") from None
            self._remember(self._templates, source, template)
        return template

    def render(self, source: str, context: Mapping[str, Any]) -> str:
        """Render ``source`` with ``context``. Plain strings (no ``{{``/``{%``) skip Jinja."""
        if "{" not in source:
            return source
        try:
            out = self.compile(source).render(context)
        except TemplateError:
            raise
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"template {_show(source)}: undefined: {exc.message}") from None
        except SecurityError as exc:
            raise TemplateError(f"template {_show(source)}: refused by the sandbox: {exc}") from None
        except Exception as exc:  # a filter or operator failing on the data (e.g. int('x'))
            raise TemplateError(f"template {_show(source)}: {type(exc).__name__}: {exc}") from None
        if len(out) > MAX_OUTPUT_CHARS:
            raise TemplateError(f"template {_show(source)}: output is over {MAX_OUTPUT_CHARS} characters")
        return out

    def evaluate_condition(self, expr: str, context: Mapping[str, Any]) -> bool:
        """Truth of a bare Jinja expression (``when: steps.check.ok and params.force``)."""
        try:
            compiled = self._expression(expr)
            return bool(compiled(**context))
        except TemplateError:
            raise
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"condition {_show(expr)}: undefined: {exc.message}") from None
        except Exception as exc:
            raise TemplateError(f"condition {_show(expr)}: {type(exc).__name__}: {exc}") from None

    def undeclared_variables(self, source: str) -> frozenset[str]:
        """Top-level names a template reads from its context (globals like ``range`` excluded)."""
        return frozenset(meta.find_undeclared_variables(self._parse(source))) - frozenset(self._env.globals)

    def condition_variables(self, expr: str) -> frozenset[str]:
        """Like :meth:`undeclared_variables`, for a ``when:`` expression."""
        self._expression(expr)  # a syntax error is reported for the expression as written
        return self.undeclared_variables("{{ (" + expr + ") }}")

    def attributes_of(self, source: str, name: str, *, expression: bool = False) -> frozenset[str]:
        """Constant attributes read from top-level ``name``: ``steps.check.ok`` and
        ``steps['check']`` both give ``check``. Lets loaders check references to known keys."""
        ast = self._parse("{{ (" + source + ") }}" if expression else source)
        found: set[str] = set()
        for node in ast.find_all(nodes.Getattr):
            if isinstance(node.node, nodes.Name) and node.node.name == name:
                found.add(node.attr)
        for item in ast.find_all(nodes.Getitem):
            if isinstance(item.node, nodes.Name) and item.node.name == name:
                if isinstance(item.arg, nodes.Const) and isinstance(item.arg.value, str):
                    found.add(item.arg.value)
        return frozenset(found)

    def time_in_errors(self, source: str, *, expression: bool = False) -> list[str]:
        """What is wrong with the constant arguments of each ``time_in(...)`` call (a bad zone,
        ``after="8h"``), found before any run needs them."""
        ast = self._parse("{{ (" + source + ") }}" if expression else source)
        problems: list[str] = []
        for call in ast.find_all(nodes.Call):
            if not (isinstance(call.node, nodes.Name) and call.node.name == TIME_IN):
                continue
            values = [_constant(arg) for arg in call.args] + [_constant(kw.value) for kw in call.kwargs]
            if any(value is _NOT_CONSTANT for value in values) or call.dyn_args or call.dyn_kwargs:
                continue  # computed arguments are checked when the step runs
            args = values[: len(call.args)]
            kwargs = {kw.key: value for kw, value in zip(call.kwargs, values[len(call.args) :], strict=True)}
            try:
                time_window(*args, **kwargs)
            except TypeError:
                problems.append(f"{TIME_IN}() takes after, before, weekday and tz")
            except ValueError as exc:
                problems.append(f"{TIME_IN}(): {exc}")
        return problems

    def _parse(self, source: str) -> nodes.Template:
        try:
            return self._env.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"template {_show(source)}: syntax error: {exc.message}") from None

    def _expression(self, expr: str) -> Callable[..., Any]:
        compiled = self._expressions.get(expr)
        if compiled is None:
            try:
                compiled = self._env.compile_expression(expr, undefined_to_none=False)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(f"condition {_show(expr)}: syntax error: {exc.message}") from None
            self._remember(self._expressions, expr, compiled)
        return compiled

    @staticmethod
    def _remember(cache: dict[str, Any], key: str, value: Any) -> None:
        # Templates come from config, so the set is small; the cap only guards against a caller
        # rendering label values themselves as templates.
        if len(cache) >= MAX_CACHE_ENTRIES:
            cache.pop(next(iter(cache)))
        cache[key] = value


_NOT_CONSTANT = object()


def _constant(node: nodes.Node) -> Any:
    """A literal argument's value (a string, or a list of them), else _NOT_CONSTANT."""
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.List | nodes.Tuple) and all(isinstance(item, nodes.Const) for item in node.items):
        return [item.value for item in node.items if isinstance(item, nodes.Const)]
    return _NOT_CONSTANT


def _show(source: str, limit: int = 120) -> str:
    text = source if len(source) <= limit else source[:limit] + "..."
    return '"' + text.replace("\n", "\\n") + '"'

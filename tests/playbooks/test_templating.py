from __future__ import annotations

import pytest

from service.playbooks.templating import TemplateEngine, TemplateError


@pytest.fixture
def engine() -> TemplateEngine:
    return TemplateEngine()


def test_render_labels(engine: TemplateEngine) -> None:
    ctx = {"labels": {"instance": "n1:9000"}}
    assert engine.render("{{ labels.instance }}", ctx) == "n1:9000"
    assert engine.render("{{ labels['instance'] | replace(':9000', '') }}", ctx) == "n1"


def test_undefined_is_an_error_not_empty(engine: TemplateEngine) -> None:
    with pytest.raises(TemplateError) as info:
        engine.render("restart {{ labels.node }}", {"labels": {}})
    assert str(info.value) == "template \"restart {{ labels.node }}\": undefined: 'dict object' has no attribute 'node'"


def test_default_filter_still_works(engine: TemplateEngine) -> None:
    assert engine.render("{{ labels.instance | default(fingerprint) }}", {"labels": {}, "fingerprint": "f"}) == "f"


def test_no_autoescape(engine: TemplateEngine) -> None:
    assert engine.render("{{ v }}", {"v": "<a & 'b'>"}) == "<a & 'b'>"


@pytest.mark.parametrize(
    ("template", "ctx", "fragment"),
    [
        ("{{ x.__class__.__mro__ }}", {"x": 1}, "refused by the sandbox"),
        ("{{ items.append(3) }}", {"items": [1]}, "refused by the sandbox"),
        ("{{ 'x' * 100000000 }}", {}, "repetition result is over the size limit"),
        ("{{ 10 ** 10000 }}", {}, "exponent 10000 is over the limit"),
        ("{{ x", {}, "syntax error"),
        ("{{ 'a' | int + none }}", {}, "TypeError"),
    ],
)
def test_errors(engine: TemplateEngine, template: str, ctx: dict[str, object], fragment: str) -> None:
    with pytest.raises(TemplateError, match="template") as info:
        engine.render(template, ctx)
    assert fragment in str(info.value)


def test_plain_text_is_not_parsed(engine: TemplateEngine) -> None:
    assert engine.render("no templates here", {}) == "no templates here"


def test_compile_is_cached(engine: TemplateEngine) -> None:
    assert engine.compile("{{ a }}") is engine.compile("{{ a }}")


def test_undeclared_variables_exclude_locals_and_globals(engine: TemplateEngine) -> None:
    src = "{% for n in range(2) %}{{ n }}{{ labels.a }}{% endfor %}{% set z = 1 %}{{ z }}{{ steps.x.ok }}"
    assert engine.undeclared_variables(src) == {"labels", "steps"}


def test_attributes_of(engine: TemplateEngine) -> None:
    assert engine.attributes_of("{{ steps.a.ok }}{{ steps['b'].data }}{{ other.c }}", "steps") == {"a", "b"}
    assert engine.attributes_of("steps.check.ok", "steps", expression=True) == {"check"}


def test_conditions(engine: TemplateEngine) -> None:
    ctx = {"steps": {"probe": {"ok": False}}, "params": {"force": True}}
    assert engine.evaluate_condition("not steps.probe.ok and params.force", ctx) is True
    assert engine.evaluate_condition("steps.probe.ok", ctx) is False
    assert engine.condition_variables("steps.probe.ok or params.force") == {"steps", "params"}
    with pytest.raises(TemplateError, match=r'condition "steps\.nope\.ok": undefined'):
        engine.evaluate_condition("steps.nope.ok", ctx)
    with pytest.raises(TemplateError, match="syntax error"):
        engine.evaluate_condition("steps.probe.ok and", ctx)

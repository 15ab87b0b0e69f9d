"""The OpenAPI document (GET /api/v1/openapi.json) against the service it describes.

Every route is described, and a property-based run (schemathesis) over every operation of a live
`remediator serve`: no 5xx for any input, every answer as documented, nothing stored on a 4xx.
"""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from support.service_proc import ServiceProcess

from service.settings import Secrets, Settings
from service.web.app import create_app
from service.web.openapi import openapi_document

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
OPERATOR, READER = "openapi-operator-token", "openapi-read-token"
EXAMPLES = 20


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def routed(settings_: Settings) -> set[tuple[str, str]]:
    """The app's routes as (method, path template): regex parts dropped, alternatives spelt out."""
    app = create_app(settings_, Secrets(None, None, None))
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = route.resource.canonical
        pattern = route.resource.get_info().get("pattern")
        choices = re.search(r"\(\?P<action>([^)]*)\)", pattern.pattern) if pattern is not None else None
        for action in choices[1].split("|") if choices else [""]:
            found.add((route.method, path.replace("{action}", action) if action else path))
    return found


def test_the_document_describes_every_route_and_nothing_else(tmp_path: Path) -> None:
    config = Settings.model_validate({"store": {"path": str(tmp_path / "s.db")}, "rules": [], "playbooks": []})
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    assert documented(document) == routed(config)
    # Request and answer schemas come from the models: the webhook body is intake's own model.
    schemas = document["components"]["schemas"]
    assert schemas["WebhookNotification"]["properties"]["version"] == {
        "const": "4",
        "title": "Version",
        "type": "string",
    }
    assert "ExecutionReport" in schemas and "SimulateResult" in schemas
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document))
    assert set(refs) <= set(schemas)


# --- the property-based run over the live service ---------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    workdir = tmp_path_factory.mktemp("openapi")
    config = {
        "rules": [str(FIXTURES / "rules" / "*.yaml")],
        "playbooks": [str(FIXTURES / "playbooks" / "*.yaml")],
        "dry_run": True,  # accepted alerts are decided and recorded; nothing runs on this machine
        "limits": {"max_body_bytes": 64 * 1024},
    }
    env = {"REMEDIATOR_OPERATOR_TOKEN": OPERATOR, "REMEDIATOR_READ_TOKEN": READER}
    proc = ServiceProcess(workdir=workdir, config=config, env=env)
    proc.start()
    yield proc
    proc.stop()


def test_the_live_service_serves_the_document(live: ServiceProcess) -> None:
    with urllib.request.urlopen(f"{live.url}/api/v1/openapi.json", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        assert json.load(response) == openapi_document()


def stored(live: ServiceProcess) -> tuple[int, ...]:
    """What a request can write synchronously (executions come later, from the dispatcher)."""
    with sqlite3.connect(f"file:{live.db_path}?mode=ro", uri=True, timeout=10) as conn:
        return tuple(
            conn.execute(query).fetchone()[0]
            for query in (
                "SELECT count(*) FROM notifications",
                "SELECT count(*) FROM pauses",
                "SELECT count(*) FROM pauses WHERE cleared_at IS NOT NULL",
                "SELECT count(*) FROM limit_resets",
                "SELECT count(*) FROM approvals WHERE decided_at IS NOT NULL",
            )
        )


# Loaded from the function that builds the served document (checked equal above): schemathesis's lazy
# loading from a fixture does not work under pytest 9.
schema = schemathesis.openapi.from_dict(openapi_document())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case: schemathesis.Case, live: ServiceProcess) -> None:
    before = stored(live)
    response = case.call(
        base_url=live.url, headers={"Authorization": f"Bearer {OPERATOR}"}, allow_redirects=False, timeout=30
    )
    # Not positive_data_acceptance: the models are stricter than JSON Schema can say (a strict integer
    # refuses 1.0; alert times end before 9999-12-31 *in UTC*), so some schema-valid bodies are a 400.
    case.validate_response(response, excluded_checks=[checks.positive_data_acceptance])
    if 400 <= response.status_code < 500:
        assert stored(live) == before, f"{case.method} {case.path} answered {response.status_code} yet stored"

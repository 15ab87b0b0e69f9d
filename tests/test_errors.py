"""One exception tree: every exception the service package defines is a RemediatorError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from aiohttp import web

import service
from service.errors import RemediatorError


def test_every_exception_of_the_package_is_a_remediator_error() -> None:
    defined = []
    for module_info in pkgutil.walk_packages(service.__path__, "service."):
        module = importlib.import_module(module_info.name)
        for _name, value in inspect.getmembers(module, inspect.isclass):
            if value.__module__ == module.__name__ and issubclass(value, BaseException):
                defined.append(value)
    # aiohttp's HTTP exceptions are answers, not errors: the web layer may subclass them
    outside = [
        f"{c.__module__}.{c.__qualname__}" for c in defined if not issubclass(c, RemediatorError | web.HTTPException)
    ]
    assert len(defined) >= 14
    assert outside == []

"""What a runbook script cannot run without, read from the script itself, so loading a playbook can
warn about an ``exec`` step that does not pass it (``remediator check`` prints these warnings, and
``serve`` logs them at start).

A shell script says it needs a variable as ``${NAME:?message}`` (or ``${NAME?message}``), in itself
or in a file beside it that it sources (``source "$(dirname ...)/_common.sh"``). Only what can be
known offline is checked: ``argv[0]`` a path to a readable shell script once rendered with the
playbook's param defaults; anything else (a program on PATH, a path from a label) is not judged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

MAX_SCRIPT_BYTES = 1024 * 1024  # a runbook script is small; anything larger is not read
_REQUIRED_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?")
_SOURCE_RE = re.compile(r"^\s*(?:source|\.)\s+(.+?)\s*$", re.MULTILINE)
_SIBLING_RE = re.compile(r"([A-Za-z0-9_.-]+)[\"']?$")  # the file name a source line ends with
_COMMENT_RE = re.compile(r"^\s*#.*$", re.MULTILINE)  # a whole-line comment may quote the form
_SHELL_RE = re.compile(r"#!.*\b(?:ba|da|k|z)?sh\b")


def required_variables(script: Path) -> dict[str, Path] | None:
    """Each variable ``script`` requires, with the file that says so; None when ``script`` is not a
    readable shell script (nothing can be said about it)."""
    text = _read_shell(script)
    if text is None:
        return None
    required: dict[str, Path] = {}
    for file, content in [(script, text), *_sourced(script, text)]:
        code = _COMMENT_RE.sub("", content)
        for name in _REQUIRED_RE.findall(code):
            required.setdefault(name, file)
    return required


def _read_shell(path: Path) -> str | None:
    try:
        if not path.is_file() or path.stat().st_size > MAX_SCRIPT_BYTES:
            return None
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    first = text.split("\n", 1)[0]
    return text if _SHELL_RE.match(first) or path.suffix in (".sh", ".bash") else None


def _sourced(script: Path, text: str) -> Iterator[tuple[Path, str]]:
    """The files beside ``script`` that it sources (one level, as the runbook scripts do)."""
    for line in _SOURCE_RE.findall(text):
        name = _SIBLING_RE.search(line)
        if name is None:
            continue
        sibling = script.parent / name.group(1)
        content = _read_shell(sibling) if sibling != script else None
        if content is not None:
            yield sibling, content


def missing_variables(required: Mapping[str, Path], passed: Mapping[str, str]) -> list[str]:
    """The required names a step's environment does not give (or gives empty, which ``:?`` refuses)."""
    return sorted(name for name in required if not passed.get(name))

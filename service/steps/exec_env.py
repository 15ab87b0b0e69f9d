"""What an ``exec`` child is given: its environment, and the kernel's limits on argv + environment.

Alert labels and annotations become ``ALERT_LABEL_<NAME>`` / ``ALERT_ANNOTATION_<NAME>``, but whoever
sends an alert chooses their values: one with a NUL byte, one over the kernel's per-string limit or
thousands of large ones would make ``execve`` fail and so disable every exec step of that alert.
Such values are left out or cut, each with a note (in the step's summary and data) saying which
variable and why; the values the
playbook itself names (``argv``, ``env``, ``cwd``) are passed whole or the step fails naming them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

from service.errors import StepError

# Fixed so that neither the service's environment nor a rendered value decides which program runs.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Never inherited: the service's own settings and secrets, and stale alert variables that would pass
# for this alert's.
PRIVATE_PREFIXES = ("REMEDIATOR_", "ALERT_LABEL_", "ALERT_ANNOTATION_")
# Inherited by default: what programs need to behave (home, user, locale, time zone, temporary
# directory), nothing that tends to hold a credential. ``NAME_*`` entries are prefixes.
DEFAULT_INHERITED = ("HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR")

# Linux (include/uapi/linux/binfmts.h, fs/exec.c): one argv or environment string, its NUL included,
# is at most MAX_ARG_STRLEN bytes; all of them with their pointers at most ARG_MAX, a quarter of the
# stack limit (2 MiB by default). Alert variables are kept well inside both.
MAX_ARG_STRLEN = 128 * 1024
ALERT_VALUE_LIMIT = 32 * 1024  # bytes of one label or annotation value; a longer one is cut to this
EXEC_BUDGET = 1024 * 1024  # argv + environment, strings and pointers; alert variables past it are left out
_POINTER = 8
MAX_NOTES = 100  # notes kept in the step's data; the rest are counted
SUMMARY_NOTES = 3  # notes spelled out in the step's summary

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INHERIT_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")


def env_suffix(name: str) -> str:
    """A label or annotation name as an environment variable suffix: ``[A-Z0-9_]`` only."""
    return re.sub(r"[^A-Z0-9_]", "_", name.upper())


def check_env_name(name: str) -> None:
    if not _ENV_NAME.match(name):
        raise ValueError(f"invalid environment variable name {name!r}")
    if name == "PATH":
        # PATH is fixed so a rendered value can never redirect argv[0]; name the program by path.
        raise ValueError("PATH cannot be set; give argv[0] as an absolute path instead")


def _valid_names(env: dict[str, str]) -> dict[str, str]:
    for name in env:
        check_env_name(name)
    return env


# Variables a playbook sets for a program (a step's `env`, the playbook's shared `env`): names checked.
EnvVars = Annotated[dict[str, str], AfterValidator(_valid_names)]


def check_inherit_entry(entry: str) -> None:
    """An ``inherit_env`` list entry: a variable name, or a prefix ending in ``*``."""
    if not _INHERIT_ENTRY.match(entry):
        raise ValueError(f"inherit_env: {entry!r} is not a variable name or a NAME_* prefix")
    if entry.rstrip("*").startswith(PRIVATE_PREFIXES):
        raise ValueError(f"inherit_env: {entry!r}: REMEDIATOR_* and ALERT_* variables are never inherited")


def inherited_env(inherit: bool | Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The part of the service's environment a step starts from.

    ``False``: nothing; ``True``: everything; a list: :data:`DEFAULT_INHERITED` and its entries.
    The private prefixes are left out in every case.
    """
    if inherit is False:
        return {}
    allowed = None if inherit is True else (*DEFAULT_INHERITED, *inherit)
    return {
        name: value
        for name, value in environ.items()
        if not name.startswith(PRIVATE_PREFIXES) and (allowed is None or _allowed(name, allowed))
    }


def _allowed(name: str, entries: Iterable[str]) -> bool:
    return any(name == e or (e.endswith("*") and name.startswith(e[:-1])) for e in entries)


class Unpassable(StepError):
    """A value the playbook names cannot be given to a program; the message says which and why."""


def _unencodable(value: str) -> str | None:
    """Why ``value`` can be no C string at all (None: it can be one)."""
    if "\x00" in value:
        return "contains a NUL byte"
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        return "cannot be encoded (it holds a lone surrogate)"
    return None


def _problem(value: str) -> str | None:
    """Why ``value`` cannot be one argv or environment string (None: it can)."""
    unencodable = _unencodable(value)
    if unencodable is not None:
        return unencodable
    size = len(os.fsencode(value))
    if size + 1 > MAX_ARG_STRLEN:
        return f"is {size} bytes, over the kernel's {MAX_ARG_STRLEN - 1}-byte limit for one string"
    return None


def check_declared(argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> None:
    """Raise :class:`Unpassable` naming the first of the playbook's own values the kernel would refuse."""
    named = [(f"argv[{i}]", v) for i, v in enumerate(argv)] + [(f"env {k}", f"{k}={v}") for k, v in env.items()]
    if cwd is not None:
        named.append(("cwd", cwd))
    for where, value in named:
        problem = _problem(value)
        if problem is not None:
            raise Unpassable(f"{where} {problem}")


@dataclass(frozen=True)
class ChildEnv:
    env: dict[str, str]
    notes: tuple[str, ...]  # one per alert variable left out or cut: which and why

    def summary_note(self) -> str:
        """The notes for the step's summary, the first SUMMARY_NOTES of them spelled out ("" if none).

        Not in the output: that stays what the program printed, for later steps' templates to read.
        """
        if not self.notes:
            return ""
        listed = "; ".join(self.notes[:SUMMARY_NOTES])
        more = len(self.notes) - SUMMARY_NOTES
        rest = f"; and {more} more, in data.env_notes" if more > 0 else ""
        count = "1 alert variable" if len(self.notes) == 1 else f"{len(self.notes)} alert variables"
        return f" ({count} left out or cut: {listed}{rest})"


def _size(value: str) -> int:
    return len(os.fsencode(value)) + 1 + _POINTER


def _cut(raw: bytes, limit: int) -> str:
    """The longest prefix of ``raw`` of at most ``limit`` bytes that ends between UTF-8 characters."""
    end = limit
    while end > 0 and raw[end] & 0xC0 == 0x80:  # a continuation byte: the cut would split a character
        end -= 1
    return os.fsdecode(raw[:end])


def build_env(
    argv: Sequence[str],
    declared: Mapping[str, str],
    inherited: Mapping[str, str],
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    execution_id: str,
) -> ChildEnv:
    """The child's environment; later sources win: inherited, alert variables, ``declared``, fixed ones.

    Alert variables that collide after :func:`env_suffix` (``foo`` and ``FOO``) resolve in sorted
    order. They are fitted into :data:`EXEC_BUDGET` after everything else, labels first, in name order.
    """
    fixed = {"PATH": SAFE_PATH, "REMEDIATOR_EXECUTION_ID": execution_id}
    alert: dict[str, str] = {}
    for prefix, values in (("ALERT_LABEL_", labels), ("ALERT_ANNOTATION_", annotations)):
        for name in sorted(values):
            alert[prefix + env_suffix(name)] = values[name]
    env = dict(inherited)
    overriding = {**declared, **fixed}
    used = sum(_size(a) for a in argv) + sum(_size(f"{k}={v}") for k, v in {**env, **overriding}.items())
    notes: list[str] = []
    for name, value in alert.items():
        if name in overriding:
            continue
        unencodable = _unencodable(value)
        if unencodable is not None:
            notes.append(f"{name} not set: its value {unencodable}")
            continue
        raw = os.fsencode(value)
        if len(raw) > ALERT_VALUE_LIMIT:
            value = _cut(raw, ALERT_VALUE_LIMIT)
            notes.append(f"{name} cut to its first {len(os.fsencode(value))} of {len(raw)} bytes")
        needed = _size(f"{name}={value}")
        if used + needed > EXEC_BUDGET:
            notes.append(f"{name} not set: argv and environment would exceed {EXEC_BUDGET} bytes")
            continue
        used += needed
        env[name] = value
    env.update(overriding)
    return ChildEnv(env, tuple(notes))

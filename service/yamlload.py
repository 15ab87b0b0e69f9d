"""YAML loading that remembers where every value came from.

Config files are edited by hand at 3 a.m.; an error that says only "field required" is useless. So
the loader keeps the line of every mapping key and sequence item, keyed by the path to it, and
turns pydantic validation errors into ``file:line: field: message`` lines.

Usage (generic: rules, playbooks and ``remediator.yaml`` settings all go through it)::

    doc = load_yaml_file(path)                   # raises ConfigErrors on bad YAML / duplicate keys
    try:
        model = MyModel.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigErrors(validation_errors(exc, doc)) from None
"""

from __future__ import annotations

import difflib
import glob
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from service.errors import ConfigurationError
from service.times import Duration as Duration  # re-exported: the config models' duration type
from service.times import parse_duration as parse_duration

PathPart = str | int
YamlPath = tuple[PathPart, ...]

# Pydantic prefixes messages raised by our own validators; the prefix is noise in a config error.
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")
# Friendlier words for the pydantic error types people hit most in hand-written files.
# Error types whose last location part is a field absent from the data (and must be kept).
_NAMES_A_FIELD = frozenset({"missing", "extra_forbidden"})
_FRIENDLY_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
}


@dataclass(frozen=True)
class ConfigError:
    """One problem in one config file, pointing at the line and the field to fix."""

    file: str
    line: int | None
    field: str  # e.g. "rules[2].match[1]"; "" for the whole document
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigErrors(ConfigurationError):
    """Raised by loaders with every problem found, so one run of ``check`` lists them all."""

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        self.errors: tuple[ConfigError, ...] = tuple(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def format_path(path: Sequence[PathPart]) -> str:
    """``('rules', 2, 'match', 1)`` -> ``rules[2].match[1]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True)
class YamlDocument:
    """Parsed YAML plus the 1-based line of each mapping key and sequence item, by path."""

    file: str
    data: Any
    lines: Mapping[YamlPath, int]

    def line_of(self, path: Sequence[PathPart]) -> int | None:
        """Line of ``path``, or of its nearest ancestor present in the file (a missing field
        is reported at the mapping that should hold it)."""
        key = tuple(path)
        while True:
            if key in self.lines:
                return self.lines[key]
            if not key:
                return None
            key = key[:-1]

    def error(self, path: Sequence[PathPart], message: str) -> ConfigError:
        """A ConfigError for a semantic problem found after validation (cross-checks)."""
        return ConfigError(self.file, self.line_of(path), format_path(path), message)


def load_yaml(source: str | bytes, file: str) -> YamlDocument:
    """Parse one YAML document with the safe loader, recording lines; duplicate keys are errors.

    Raises :class:`ConfigErrors` for syntax errors (with the line YAML reports) and duplicate keys.
    """
    loader = _Loader(source)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            problem = exc.problem or exc.context or "syntax error"
            raise ConfigErrors([ConfigError(file, line, "", f"invalid YAML: {problem}")]) from None
        if node is None:
            return YamlDocument(file, None, {(): 1})
        walker = _LineWalker(loader, file, {(): node.start_mark.line + 1})
        walker.walk(node, ())
        if walker.errors:
            raise ConfigErrors(walker.errors)
        try:
            data = loader.construct_document(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            raise ConfigErrors([ConfigError(file, line, "", f"invalid YAML: {exc.problem}")]) from None
        return YamlDocument(file, data, walker.lines)
    except RecursionError:  # the parser, the walk and the constructor all recurse once a nesting level
        raise ConfigErrors([ConfigError(file, None, "", "invalid YAML: nested too deeply")]) from None
    finally:
        loader.dispose()


def load_yaml_file(path: Path, display_name: str | None = None) -> YamlDocument:
    """Read and parse ``path``; ``display_name`` is what errors call the file (e.g. relative)."""
    name = display_name if display_name is not None else str(path)
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise ConfigErrors([ConfigError(name, None, "", f"cannot read: {exc.strerror}")]) from None
    return load_yaml(source, name)


# Aliases may reuse a block (the shipped playbooks share one ``env:`` map between steps), but each use
# is a copy for everything after the loader: validation, templates, JSON. A few hundred bytes of nested
# aliases ("billion laughs") would expand into billions of values, so reuse may add at most this many.
MAX_ALIAS_EXPANSION = 10_000


class _Loader(yaml.SafeLoader):
    """The safe loader, remembering where each alias was written (the node it yields is the anchor's,
    which carries the anchor's position)."""

    def __init__(self, source: str | bytes) -> None:
        super().__init__(source)
        # (id of the collection, item index or id of the key node) -> 1-based line of the alias there
        self.alias_lines: dict[tuple[int, int], int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # check_event leaves the event it looked at in current_event (peek_event is untyped in the stubs)
        alias_line = self.current_event.start_mark.line + 1 if self.check_event(yaml.AliasEvent) else None
        node = super().compose_node(parent, index)
        if alias_line is not None and parent is not None and index is not None:
            self.alias_lines[(id(parent), index if isinstance(index, int) else id(index))] = alias_line
        return node


class _LineWalker:
    """Records the line of every key and item and finds duplicate keys, walking each node once.

    A node met again (through an alias) is not walked again: its keys and items keep the lines of
    its first use, and an error inside it is reported there. What it adds to the expanded document
    is counted against MAX_ALIAS_EXPANSION.
    """

    def __init__(self, loader: _Loader, file: str, lines: dict[YamlPath, int]) -> None:
        self._loader = loader
        self._file = file
        self.lines = lines
        self.errors: list[ConfigError] = []
        self._walked: set[int] = set()
        self._sizes: dict[int, int] = {}
        self._alias_expansion = 0

    def walk(self, node: yaml.Node, path: YamlPath) -> None:
        if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            return
        if id(node) in self._walked:  # an alias (or an alias back into an enclosing node)
            self._reused(node, path)
            return
        self._walked.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = (*path, index)
                line = self._loader.alias_lines.get((id(node), index), item.start_mark.line + 1)
                self.lines.setdefault(child, line)
                self.walk(item, child)
            return
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.walk(value_node, path)
                continue
            key = self._loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key (a mapping as key): leave it to the model to refuse
                continue
            child = (*path, key if isinstance(key, int | str) else str(key))
            if first is not None:
                message = f'duplicate key "{key}" (first at line {first})'
                self.errors.append(ConfigError(self._file, line, format_path(child), message))
                continue
            seen[key] = line
            self.lines.setdefault(child, line)
            self.walk(value_node, child)

    def _reused(self, node: yaml.Node, path: YamlPath) -> None:
        if self._alias_expansion > MAX_ALIAS_EXPANSION:
            return  # already reported
        self._alias_expansion += self._size(node, set())
        if self._alias_expansion > MAX_ALIAS_EXPANSION:
            line = self.lines.get(path)
            message = f"YAML aliases expand the document by more than {MAX_ALIAS_EXPANSION} values"
            self.errors.append(ConfigError(self._file, line, format_path(path), message))

    def _size(self, node: yaml.Node, active: set[int]) -> int:
        """How many values ``node`` stands for once every alias in it is expanded (computed once a node)."""
        if id(node) in self._sizes:
            return self._sizes[id(node)]
        if id(node) in active:  # an alias back into an enclosing node: a cycle, which the model refuses
            return 1
        active.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._size(item, active) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._size(k, active) + self._size(v, active) for k, v in node.value)
        else:
            size = 1
        active.discard(id(node))
        self._sizes[id(node)] = size
        return size


def validation_errors(
    exc: ValidationError, doc: YamlDocument, prefix: Sequence[PathPart] = (), model: type[BaseModel] | None = None
) -> list[ConfigError]:
    """Turn a pydantic ValidationError into ConfigErrors with lines from ``doc``.

    ``prefix`` is the path of the validated value inside ``doc`` when only part of the document
    was validated. Pydantic puts union member tags (``exec``, ``function-after[...]``) into error
    locations; parts that do not exist in the data are dropped unless they name the missing or
    unknown field the error is about, so the field path is what the user wrote. With the validated
    ``model``, an unknown field names the closest field it has (``did you mean `starts_at`?``).
    """
    out: list[ConfigError] = []
    root = _descend(doc.data, prefix)
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # Point at the discriminator key (``type:``) rather than the whole item.
            loc = (*loc, str(err.get("ctx", {}).get("discriminator", "")).strip("'"))
        keep_last = err["type"] in _NAMES_A_FIELD or err["type"].startswith("union_tag")
        path = (*prefix, *_data_path(root, loc, keep_last))
        message = _FRIENDLY_MESSAGES.get(err["type"], err["msg"])
        if err["type"] == "extra_forbidden" and model is not None and loc:
            message += did_you_mean(str(loc[-1]), fields_at(model, loc[:-1]))
        elif err["type"] == "union_tag_invalid":
            ctx = err.get("ctx", {})
            tags = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
            message += did_you_mean(str(ctx.get("tag", "")), tags)
        for noise in _PYDANTIC_PREFIXES:
            message = message.removeprefix(noise)
        out.append(ConfigError(doc.file, doc.line_of(path), format_path(path), message))
    return out


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``; did you mean `starts_at`?`` for the known name closest to ``name`` (``startsAt``, ``exce``
    for ``exec``), or "" when none is close."""
    choices = sorted(known)
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower().replace("-", "_")
    same = [choice for choice in choices if choice.lower() == snake]
    close = same or difflib.get_close_matches(snake, choices, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def fields_at(model: type[BaseModel], loc: Sequence[PathPart]) -> list[str]:
    """The field names of the model found at ``loc`` (a pydantic error location) under ``model``:
    through lists, dicts, optionals and tagged unions (a location part naming a union member's
    ``type``). Empty when the location does not lead to a model."""
    candidates: list[Any] = [model]
    for part in loc:
        candidates = [found for annotation in candidates for found in _step_into(annotation, part)]
    names = [name for annotation in candidates for name in _model_fields(annotation)]
    return list(dict.fromkeys(names))


def _members(annotation: Any) -> list[Any]:
    """An annotation's alternatives: Annotated unwrapped, unions spread, None dropped."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return [member for arg in get_args(annotation) for member in _members(arg)]
    return [] if annotation is type(None) else [annotation]


def _model_fields(annotation: Any) -> list[str]:
    """The names a file uses for a model's fields (``json``, not the attribute ``json_body``)."""
    return [
        field.alias or name
        for member in _members(annotation)
        if isinstance(member, type) and issubclass(member, BaseModel)
        for name, field in member.model_fields.items()
    ]


def _step_into(annotation: Any, part: PathPart) -> list[Any]:
    members = _members(annotation)
    tagged = [
        member
        for member in members
        if isinstance(member, type)
        and issubclass(member, BaseModel)
        and "type" in member.model_fields
        and part in get_args(member.model_fields["type"].annotation)
    ]
    if tagged:  # a discriminated union's location names the member by its tag
        return tagged
    out: list[Any] = []
    for member in members:
        origin = get_origin(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            by_name = {field.alias or name: field for name, field in member.model_fields.items()}
            if isinstance(part, str) and part in by_name:
                out.append(by_name[part].annotation)
        elif origin in (list, tuple, set, frozenset) and isinstance(part, int):
            out.append(get_args(member)[0])
        elif origin is dict and isinstance(part, str):
            out.append(get_args(member)[1])
    # a location part pydantic adds for a union member (``list[str]``, ``function-after[...]``): same level
    return out or ([annotation] if isinstance(part, str) else [])


def _descend(data: Any, path: Sequence[PathPart]) -> Any:
    for part in path:
        data = data[part]
    return data


def _data_path(data: Any, loc: Sequence[PathPart], keep_last: bool) -> YamlPath:
    out: list[PathPart] = []
    for position, part in enumerate(loc):
        last = keep_last and position == len(loc) - 1
        if isinstance(data, Mapping) and part in data:
            data = data[part]
            out.append(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
            out.append(part)
        elif last and not isinstance(data, list):
            out.append(part)
    return tuple(out)


def expand_globs(patterns: Sequence[str], base_dir: Path) -> tuple[list[tuple[Path, str]], list[ConfigError]]:
    """Files matching ``patterns`` (relative to ``base_dir``), sorted, each once, with the name
    errors should use (relative to ``base_dir`` when inside it). A pattern matching nothing is an
    error: a typo in a glob must not silently load zero rules."""
    found: dict[Path, str] = {}
    errors: list[ConfigError] = []
    for pattern in patterns:
        full = pattern if Path(pattern).is_absolute() else str(base_dir / pattern)
        matches = sorted(Path(p) for p in glob.glob(full, recursive=True) if Path(p).is_file())
        if not matches:
            errors.append(ConfigError(pattern, None, "", "no files match"))
        for path in matches:
            try:
                display = str(path.relative_to(base_dir))
            except ValueError:
                display = str(path)
            found.setdefault(path, display)
    return list(found.items()), errors

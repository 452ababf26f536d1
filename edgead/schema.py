"""The one validator for every YAML section: a typed dataclass from a mapping, or an error naming the key.

A typo in a config must never be ignored (a misspelt `deadline_ms` or `exposure_us` silently falling
back to its default is exactly what an inspection line cannot afford). So the model config, the run
config, its `camera:` section and every output are built here the same way: unknown keys, values of
the wrong type and values out of range are EdgeADErrors that say where (`run config`, `outputs[1]
(log)`), which key (`record.quota_mb`) and what is expected. Edge path: no torch.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import functools
import math
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Union, get_args, get_origin

import yaml

from edgead.errors import EdgeADError
from edgead.io import check_input


@dataclass(frozen=True)
class Place:
    """Where a section sits, for messages: `Place("run config", "record")` names 'record.quota_mb'."""

    prefix: str                 # the file or item: "config", "run config", "outputs[0] (modbus)"
    section: str = ""           # the dotted path inside it ("" at the top)

    def key(self, name: str) -> str:
        return f"{self.section}.{name}" if self.section else name

    def child(self, name: str) -> Place:
        return Place(self.prefix, self.key(name))

    def error(self, message: str, hint: str) -> EdgeADError:
        return EdgeADError(f"{self.prefix}: {message}", hint)

    def bad(self, name: str, value: Any, want: str) -> EdgeADError:
        return self.error(f"'{self.key(name)}' has a bad value {value!r}", f"expected {want}")


def mapping(data: Any, place: Place, hint: str = "write it as indented `key: value` lines") -> dict[str, Any]:
    """The data as a mapping, or an error that the section is not one."""
    if not isinstance(data, dict):
        raise place.error(f"'{place.section or 'the file'}' must be a mapping, got {type(data).__name__}", hint)
    return data


def known_keys(data: Any, allowed: Iterable[str], place: Place) -> dict[str, Any]:
    """The mapping, after refusing the first key (in sorted order) that is not allowed."""
    data = mapping(data, place)
    allowed = sorted(allowed)
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        where = f" in '{place.section}'" if place.section else ""
        raise place.error(f"unknown key '{place.key(unknown[0])}'", f"allowed keys{where}: {', '.join(allowed)}")
    return data


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# `int | None` written without quotes is a types.UnionType on 3.10+; the strings we resolve become Union.
_UNIONS = (Union, getattr(types, "UnionType", Union))
# PEP 585 builtins as the typing generics Python 3.8 can subscript (same origin, same args).
_GENERICS = {"list": typing.List, "dict": typing.Dict, "tuple": typing.Tuple, "set": typing.Set,
             "frozenset": typing.FrozenSet, "type": typing.Type}


def _resolve(node: ast.AST, names: Mapping[str, Any]) -> Any:
    """One annotation expression as the typing object it means, on any Python from 3.8.

    typing.get_type_hints evaluates the annotation strings of `from __future__ import annotations`,
    and on Python 3.8 `str | None` and `list[int]` raise when evaluated; read as Union and List here,
    the validator sees the same origins and arguments on every version.
    """
    if isinstance(node, ast.Expression):
        return _resolve(node.body, names)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return names[node.id] if node.id in names else getattr(builtins, node.id)
    if isinstance(node, ast.Attribute):
        return getattr(_resolve(node.value, names), node.attr)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return Union[_resolve(node.left, names), _resolve(node.right, names)]
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_resolve(e, names) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Subscript):
        index = getattr(node.slice, "value", node.slice) if sys.version_info < (3, 9) else node.slice  # ast.Index
        base = node.value
        generic = _GENERICS.get(base.id) if isinstance(base, ast.Name) and base.id not in names else None
        return (generic or _resolve(base, names))[_resolve(index, names)]
    raise TypeError(f"unsupported annotation {ast.dump(node)}")


@functools.lru_cache(maxsize=None)
def type_hints(cls: type) -> dict[str, Any]:
    """The annotations of a class and its bases, resolved: the 3.8-safe typing.get_type_hints (read-only)."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        own = vars(klass).get("__annotations__", {})
        names = vars(sys.modules[klass.__module__]) if own else {}
        for name, hint in own.items():
            hints[name] = _resolve(ast.parse(hint, mode="eval"), names) if isinstance(hint, str) else hint
    return hints


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in _UNIONS:
        return " or ".join(_describe(h) for h in get_args(hint))
    if origin is tuple and get_args(hint) and Ellipsis not in get_args(hint):
        return f"a list of {len(get_args(hint))} ({_describe(get_args(hint)[0])} each)"
    return {type(None): "null", bool: "true or false", int: "a whole number", float: "a finite number", str: "text",
            list: "a list", dict: "a mapping", tuple: "a list"}.get(origin or hint, getattr(hint, "__name__", str(hint)))


def _convert(value: Any, hint: Any, place: Place, name: str) -> Any:
    """The value as the hint's type (YAML ints where floats are meant, lists where tuples are), or an error."""
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in _UNIONS:
        sections = [o for o in get_args(hint) if dataclasses.is_dataclass(o) and isinstance(o, type)]
        if isinstance(value, dict) and len(sections) == 1:   # a section: its own errors name its keys
            return _convert(value, sections[0], place, name)
        for option in get_args(hint):
            try:
                return _convert(value, option, place, name)
            except EdgeADError:
                continue
        raise place.bad(name, value, _describe(hint))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        return build(hint, value, place.child(name))
    ok = {type(None): value is None, bool: isinstance(value, bool), int: is_int(value), float: is_number(value),
          str: isinstance(value, str)}.get(hint)
    if ok is not None:
        if not ok:
            raise place.bad(name, value, _describe(hint))
        return float(value) if hint is float else value
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise place.bad(name, value, _describe(hint))
        args = [a for a in get_args(hint) if a is not Ellipsis]
        if origin is tuple and args and len(get_args(hint)) == len(args) and len(value) != len(args):
            raise place.bad(name, value, f"a list of {len(args)}")
        items = [_convert(v, args[0 if len(args) == 1 else i], place, name) if args else v
                 for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise place.bad(name, value, "a mapping")
        return value
    return value


def build(cls: type, data: Any, place: Place) -> Any:
    """An instance of dataclass `cls` from a mapping: keys checked, every value checked against its hint.

    Fields left out keep their defaults; nested dataclass fields are built from nested mappings.
    Range and cross-field rules stay with each config (its `validate()`), written with the helpers below.
    """
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.metadata.get("yaml", True)]
    data = known_keys({} if data is None else data, names, place)
    hints = type_hints(cls)
    return cls(**{key: _convert(value, hints[key], place, key) for key, value in data.items()})


def at_least(place: Place, name: str, value: Any, minimum: float, optional: bool = False) -> None:
    """A number (whole where the field is) not below `minimum`; None passes when optional."""
    if value is None and optional:
        return
    if not is_number(value) or value < minimum:
        raise place.bad(name, value, f"a number >= {minimum:g}" + (" or null" if optional else ""))


def positive(place: Place, name: str, value: Any, optional: bool = False) -> None:
    """A number above zero; None passes when optional."""
    if value is None and optional:
        return
    if not is_number(value) or value <= 0:
        raise place.bad(name, value, "a positive number" + (" or null" if optional else ""))


def in_range(place: Place, name: str, value: Any, low: float, high: float) -> None:
    if not is_number(value) or not low <= value <= high:
        raise place.bad(name, value, f"a value from {low:g} to {high:g}")


def one_of(place: Place, name: str, value: Any, allowed: Iterable[Any], hint: str | None = None) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise place.error(f"'{place.key(name)}' has a bad value {value!r}",
                          hint or f"use one of: {', '.join(str(a) for a in allowed)}")


def need(place: Place, ok: bool, message: str, hint: str) -> None:
    """A cross-field rule: `message` says what is wrong, `hint` what to write instead."""
    if not ok:
        raise place.error(message, hint)


class _DuplicateKey(yaml.YAMLError):
    """A mapping names one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error, not "the last wins"."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise _DuplicateKey(f"the key {key!r} is given twice (lines {seen[key] + 1} and "
                                f"{key_node.start_mark.line + 1}): only one of them can hold")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def safe_load(text: str, what: str) -> Any:
    """YAML text parsed safely; bad syntax or a key given twice is an EdgeADError naming `what`."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise EdgeADError(f"{what}: {exc}", "remove one of the two lines") from None
    except yaml.YAMLError as exc:
        raise EdgeADError(f"{what} is not valid YAML: {_yaml_problem(exc)}",
                          "fix the YAML syntax (indentation, colons, brackets)") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """"expected ',' or ']', but got ':' at line 2, column 3": what the parser found, and where."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def read_yaml(path: str | Path, what: str, hint: str) -> Any:
    """A YAML file's content (None when empty); a missing file or bad syntax says so, naming `what`."""
    path = check_input(path, kind="file", what=what, hint=hint)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeADError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}",
                          "check the file and its permissions") from None
    return safe_load(text, f"{what} {path}")

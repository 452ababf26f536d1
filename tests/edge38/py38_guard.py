"""A static guard for the edge path's Python 3.8 promise (JetPack 5), run by any interpreter.

`ast.parse(feature_version=(3, 8))` refuses 3.9+ *syntax* (parenthesised with-items, match, ...),
but most breakage on 3.8 is valid syntax that fails when it runs: `list[int]` or `int | None`
evaluated at import time (type aliases, isinstance, cast), 3.9+ functions and keywords
(str.removeprefix, zip(strict=), functools.cache), and 3.9+ typing names. `findings()` lists
those, so a slip is caught even on a machine without Python 3.8. Annotations are not evaluated
(every module starts with `from __future__ import annotations`), so they may use the new forms.
A line that is deliberately fine (a version check around it) says so with a `3.8-safe` comment.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

PRAGMA = "3.8-safe"
BUILTIN_TYPES = {"int", "float", "str", "bytes", "bool", "complex", "bytearray", "object", "list", "dict", "tuple",
                 "set", "frozenset", "type"}
GENERIC_ON_39 = {"list", "dict", "tuple", "set", "frozenset", "type"}          # builtins subscriptable from 3.9
# Classes that became subscriptable at run time in 3.9 (PEP 585), by module; numpy's ndarray only on 3.9+ too.
GENERIC_MODULES = {"collections", "collections.abc", "queue", "re", "os", "contextlib", "concurrent.futures",
                   "asyncio", "weakref", "functools", "itertools", "pathlib", "numpy"}
GENERIC_CLASSES = {"ndarray", "dtype", "PathLike", "Pattern", "Match", "Queue", "SimpleQueue", "LifoQueue",
                   "PriorityQueue", "deque", "defaultdict", "OrderedDict", "Counter", "ChainMap", "Future", "partial"}
# Names whose absence on 3.8 is an AttributeError or ImportError when the line runs.
NEW_NAMES = {
    "typing": {"Annotated", "ParamSpec", "ParamSpecArgs", "ParamSpecKwargs", "Concatenate", "TypeAlias", "TypeGuard",
               "is_typeddict", "Self", "LiteralString", "Never", "TypeVarTuple", "Unpack", "Required", "NotRequired",
               "assert_never", "assert_type", "reveal_type", "dataclass_transform", "override", "get_overloads",
               "clear_overloads", "TypeAliasType", "ReadOnly", "TypeIs", "NoDefault"},
    "functools": {"cache"},
    "math": {"lcm", "nextafter", "ulp", "cbrt", "exp2", "sumprod"},
    "asyncio": {"to_thread", "timeout", "timeout_at", "TaskGroup", "Runner"},
    "random": {"randbytes"},
    "itertools": {"pairwise", "batched"},
    "ast": {"unparse"},
    "types": {"UnionType", "NoneType", "GenericAlias", "EllipsisType", "NotImplementedType"},
    "inspect": {"get_annotations"},
    "os": {"waitstatus_to_exitcode", "pidfd_open"},
    "hashlib": {"file_digest"},
    "datetime": {"UTC"},
    "enum": {"StrEnum", "verify", "ReprEnum"},
    "contextlib": {"chdir", "aclosing"},
    "argparse": {"BooleanOptionalAction"},
    "logging": {"getLevelNamesMapping"},
    "importlib.resources": {"files", "as_file"},
    "statistics": {"correlation", "covariance", "linear_regression"},
    "dataclasses": {"KW_ONLY"},
    "sys": {"orig_argv", "stdlib_module_names"},
}
NEW_MODULES = {"zoneinfo", "graphlib", "tomllib"}
NEW_METHODS = {"removeprefix", "removesuffix", "is_relative_to", "with_stem", "hardlink_to", "bit_count"}
NEW_KEYWORDS = {("zip", "strict"), ("dataclass", "slots"), ("dataclass", "kw_only"), ("dataclass", "match_args"),
                ("field", "kw_only"), ("glob", "root_dir"), ("glob", "dir_fd"), ("insort", "key"),
                ("bisect", "key"), ("bisect_left", "key"), ("bisect_right", "key"), ("shutdown", "cancel_futures")}
NEW_BUILTINS = {"aiter", "anext", "ExceptionGroup", "BaseExceptionGroup", "EncodingWarning"}


class _Finder(ast.NodeVisitor):
    """Collects (line, what) for each run-time use of a 3.9+ form; annotations are skipped."""

    def __init__(self, lines: list[str], lazy_annotations: bool) -> None:
        self.lines, self.lazy = lines, lazy_annotations
        self.found: list[tuple[int, str]] = []
        self.modules: dict[str, str] = {}        # local name -> module (import x / import x as y)
        self.imported: dict[str, str] = {}       # local name -> "module.name" (from x import name)

    def _add(self, node: ast.AST, what: str) -> None:
        line = getattr(node, "lineno", 0)
        if not (0 < line <= len(self.lines) and PRAGMA in self.lines[line - 1]):
            self.found.append((line, what))

    def _dotted(self, node: ast.AST) -> str | None:
        """`np.ndarray` -> "numpy.ndarray", `ndarray` (from numpy import ndarray) -> "numpy.ndarray"."""
        if isinstance(node, ast.Name):
            return self.imported.get(node.id) or self.modules.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    # -- imports
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name.split(".")[0] in NEW_MODULES:
                self._add(node, f"module {a.name} is new in Python 3.9+")
            if a.asname:
                self.modules[a.asname] = a.name
            else:
                self.modules[a.name.split(".")[0]] = a.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        if mod.split(".")[0] in NEW_MODULES:
            self._add(node, f"module {mod} is new in Python 3.9+")
        for a in node.names:
            if a.name in NEW_NAMES.get(mod, ()):
                self._add(node, f"{mod}.{a.name} does not exist on Python 3.8")
            self.imported[a.asname or a.name] = f"{mod}.{a.name}"

    # -- annotations are strings under `from __future__ import annotations`: not evaluated
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for d in node.decorator_list:
            self.visit(d)
        args = node.args
        for default in [*args.defaults, *[d for d in args.kw_defaults if d is not None]]:
            self.visit(default)
        if not self.lazy:
            for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if a is not None and a.annotation is not None:
                    self.visit(a.annotation)
            if node.returns is not None:
                self.visit(node.returns)
        for stmt in node.body:
            self.visit(stmt)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if not self.lazy:
            self.visit(node.annotation)
        if node.value is not None:
            self.visit(node.value)

    # -- run-time expressions
    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = self._dotted(node)
        if dotted:
            mod, _, name = dotted.rpartition(".")
            if name in NEW_NAMES.get(mod, ()):
                self._add(node, f"{dotted} does not exist on Python 3.8")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in NEW_BUILTINS and node.id not in self.imported:
            self._add(node, f"builtin {node.id} is new in Python 3.9+")

    def _generic_base(self, node: ast.AST) -> str | None:
        """The class's name when `node[...]` is a PEP 585 generic (fails on 3.8), else None."""
        if isinstance(node, ast.Name) and node.id in GENERIC_ON_39 and node.id not in self.imported:
            return node.id
        dotted = self._dotted(node)
        if dotted:
            mod, _, name = dotted.rpartition(".")
            if mod in GENERIC_MODULES and (name in GENERIC_CLASSES or mod == "collections.abc"):
                return dotted
        return None

    def visit_Subscript(self, node: ast.Subscript) -> None:
        base = self._generic_base(node.value)
        if base:
            self._add(node, f"{base}[...] at run time needs Python 3.9+ (use typing's List/Dict/..., or a string)")
        self.generic_visit(node)

    def _type_like(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and node.value is None:
            return True
        if isinstance(node, ast.Name):
            return ((node.id in BUILTIN_TYPES and node.id not in self.imported)
                    or self.imported.get(node.id, "").startswith(("typing.", "collections.abc."))
                    or (node.id[:1].isupper() and any(c.islower() for c in node.id)))   # CamelCase: a class
        if isinstance(node, ast.Subscript):
            return self._generic_base(node.value) is not None or self._type_like(node.value)
        dotted = self._dotted(node)
        return bool(dotted) and dotted.rpartition(".")[2] in GENERIC_CLASSES | {"Path", "Any"}

    def _dict_like(self, node: ast.AST) -> bool:
        if isinstance(node, (ast.Dict, ast.DictComp)):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            return True
        return self._dotted(node) == "os.environ"

    def _bitor(self, node: ast.AST, left: ast.AST, right: ast.AST) -> None:
        if self._type_like(left) or self._type_like(right):
            self._add(node, "X | Y of types at run time needs Python 3.10+ (use typing.Union/Optional, or a string)")
        elif self._dict_like(left) or self._dict_like(right):
            self._add(node, "dict | dict needs Python 3.9+ (use {**a, **b})")

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.BitOr):
            self._bitor(node, node.left, node.right)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.op, ast.BitOr):
            self._bitor(node, node.target, node.value)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if isinstance(func, ast.Attribute) and func.attr in NEW_METHODS:
            self._add(node, f".{func.attr}() is new in Python 3.9+")
        for kw in node.keywords:
            if (name, kw.arg) in NEW_KEYWORDS:
                self._add(node, f"{name}({kw.arg}=...) is new in Python 3.9+")
        dotted = self._dotted(func) or ""
        if dotted in ("traceback.format_exception", "traceback.print_exception") and len(node.args) == 1:
            self._add(node, f"{dotted}(exc) with one argument needs Python 3.10+ (pass type, value, traceback)")
        if dotted.endswith("get_type_hints"):
            self._add(node, "get_type_hints evaluates annotation strings, which fails on Python 3.8 for `X | Y` "
                            "and `list[int]` (use edgead.schema.type_hints)")
        self.generic_visit(node)


def _lazy_annotations(tree: ast.Module) -> bool:
    return any(isinstance(s, ast.ImportFrom) and s.module == "__future__" and any(a.name == "annotations"
               for a in s.names) for s in tree.body)


def findings(path: Path) -> Iterator[str]:
    """'path:line: what' for each 3.9+ form in one file; a syntax error is one finding."""
    text = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text, str(path), feature_version=(3, 8))
    except SyntaxError as err:
        yield f"{path}:{err.lineno}: syntax Python 3.8 cannot parse: {err.msg}"
        return
    finder = _Finder(text.splitlines(), _lazy_annotations(tree))
    finder.visit(tree)
    for line, what in sorted(finder.found):
        yield f"{path}:{line}: {what}"

"""A static determinism linter for workflow code (``stalwart lint PATH...``).

Workflow functions are re-run from their history after a crash, so everything they do must
come out the same on every run. This module reads Python source with :mod:`ast` (nothing is
imported or executed) and reports, inside workflow functions, the calls that would make a
replay diverge: reading the clock, randomness, fresh UUIDs, the process environment, direct
I/O and threads.

A *workflow function* is one decorated with ``@workflow``, ``@workflow(...)``,
``@stalwart.workflow`` or an imported alias of it (``from stalwart import workflow as wf``).
Its whole body is checked, including the functions, lambdas, classes and comprehensions
defined in it, but not functions passed to ``ctx.side_effect(...)`` (whose value is
recorded) nor nested ``@activity`` functions. Activities and plain functions are never
checked, and the checks do not follow calls into other functions.

Import aliases are resolved per scope (``import datetime as dt`` then ``dt.datetime.now()``,
``from time import time``); a name assigned in the function (``random = ctx.random()``)
shadows a module of the same name. Annotations are not checked.

A finding is silenced by a comment on its line: ``# stalwart: ignore`` (every code) or
``# stalwart: ignore[SW001]`` / ``# stalwart: ignore[SW001, SW005]`` (those codes).
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

SYNTAX = "SW000"
"""The file could not be checked: a syntax error, or it cannot be read or decoded."""
TIME = "SW001"
"""Reading the clock (``datetime.now()``, ``time.time()``, ...) or ``time.sleep()``."""
RANDOMNESS = "SW002"
"""The ``random`` module's shared generator, unseeded ``random.Random()``, ``secrets``."""
UUID = "SW003"
"""Time- or randomness-based UUIDs (``uuid.uuid1()``, ``uuid.uuid4()``)."""
ENVIRONMENT = "SW004"
"""Reading the process environment (``os.environ``, ``os.getenv()``)."""
IO = "SW005"
"""Direct I/O: files, sockets, HTTP clients, subprocesses, databases."""
THREADS = "SW006"
"""Running code on other threads or processes (``asyncio.to_thread()``, executors)."""

CODES: dict[str, str] = {
    SYNTAX: "file cannot be checked (syntax error, unreadable or undecodable)",
    TIME: "clock read or blocking sleep in a workflow",
    RANDOMNESS: "randomness in a workflow",
    UUID: "random or time-based UUID in a workflow",
    ENVIRONMENT: "environment read in a workflow",
    IO: "direct I/O in a workflow",
    THREADS: "threads, processes or executors in a workflow",
}
"""Every finding code with a one-line description."""

IGNORE_COMMENT = re.compile(r"#\s*stalwart:\s*ignore\b(?:\[(?P<codes>[^\]]*)\])?", re.I)
"""A suppression comment: ``# stalwart: ignore`` or ``# stalwart: ignore[SW001, ...]``."""

EXCLUDED_DIRS = frozenset(
    {"__pycache__", "__pypackages__", "_build", "buck-out", "build", "dist"}
    | {"node_modules", "site-packages", "venv"}
)
"""Directory names skipped when walking a directory (as are names starting with a dot)."""


@dataclass(frozen=True)
class Finding:
    """One problem: where it is (1-based line and column), its code and what to do instead."""

    path: str
    line: int
    col: int
    code: str
    message: str

    def format(self) -> str:
        """``path:line:col: CODE message``, the one-line text form."""
        return f"{self.path}:{self.line}:{self.col}: {self.code} {self.message}"

    def to_dict(self) -> dict[str, str | int]:
        """The finding as a JSON-able dict (its fields by name)."""
        return asdict(self)


# ----------------------------------------------------------------------------- the rules
@dataclass(frozen=True)
class _Rule:
    code: str
    problem: str
    instead: str

    def message(self, name: str) -> str:
        return f"{name} {self.problem}; {self.instead}"


_REPLAY = "which differs on replay"
_CLOCK = _Rule(TIME, f"reads the clock, {_REPLAY}", "use ctx.now()")
_SLEEP = _Rule(TIME, "blocks the worker and is not durable", "use await ctx.sleep()")
_RANDOM = _Rule(RANDOMNESS, f"is random, {_REPLAY}", "use ctx.random()")
_UNSEEDED = _Rule(RANDOMNESS, f"without a seed is random, {_REPLAY}", "use ctx.random()")
_SECRET = _Rule(RANDOMNESS, f"is random, {_REPLAY}", "generate secrets in an activity")
_UUID = _Rule(UUID, f"gives a new id, {_REPLAY}", "use ctx.uuid()")
_ENV = _Rule(
    ENVIRONMENT,
    "reads the environment, which may differ on replay",
    "pass the value as an argument or read it in an activity",
)
_IO = _Rule(IO, "does I/O, which is repeated on replay", "use an activity")
_THREAD = _Rule(THREADS, "runs code outside the workflow's event loop", "use an activity")


def _each(prefix: str, names: str, rule: _Rule) -> dict[str, _Rule]:
    return {f"{prefix}.{name}": rule for name in names.split()}


_REFERENCES: dict[str, _Rule] = {
    **_each("datetime.datetime", "now utcnow today", _CLOCK),
    **_each("datetime.date", "today", _CLOCK),
    **_each(
        "time",
        "time time_ns monotonic monotonic_ns perf_counter perf_counter_ns "
        "process_time process_time_ns thread_time thread_time_ns",
        _CLOCK,
    ),
    "time.sleep": _SLEEP,
    **_each(
        "random",
        "betavariate binomialvariate choice choices expovariate gammavariate gauss "
        "getrandbits getstate lognormvariate normalvariate paretovariate randbytes randint "
        "random randrange sample seed setstate shuffle triangular uniform vonmisesvariate "
        "weibullvariate",
        _RANDOM,
    ),
    "os.urandom": _RANDOM,
    **_each("secrets", "choice randbelow randbits token_bytes token_hex token_urlsafe", _SECRET),
    **_each("uuid", "uuid1 uuid4 uuid6 uuid7", _UUID),
    **_each("os", "environ environb getenv getenvb", _ENV),
    **_each("builtins", "open input", _IO),
    "io.open": _IO,
    "sqlite3.connect": _IO,
    **_each(
        "asyncio",
        "open_connection open_unix_connection start_server start_unix_server "
        "create_subprocess_exec create_subprocess_shell",
        _IO,
    ),
    "asyncio.to_thread": _THREAD,
}
"""Flagged wherever they are used (called or passed on, e.g. ``key=random.random``)."""


def _always(call: ast.Call) -> bool:
    return True


def _unseeded(call: ast.Call) -> bool:
    if call.keywords:
        return False
    return not call.args or (isinstance(call.args[0], ast.Constant) and call.args[0].value is None)


def _no_arguments(call: ast.Call) -> bool:
    return not call.args and not call.keywords


def _no_time_argument(call: ast.Call) -> bool:
    return len(call.args) < 2 and not any(isinstance(a, ast.Starred) for a in call.args)


_CALLS: dict[str, tuple[_Rule, Callable[[ast.Call], bool]]] = {
    "random.Random": (_UNSEEDED, _unseeded),
    "random.SystemRandom": (_RANDOM, _always),
    "secrets.SystemRandom": (_SECRET, _always),
    **{
        f"time.{name}": (_CLOCK, _no_arguments)
        for name in ("localtime", "gmtime", "ctime", "asctime")
    },
    "time.strftime": (_CLOCK, _no_time_argument),
    **{
        name: (_THREAD, _always)
        for name in (
            "threading.Thread",
            "threading.Timer",
            "concurrent.futures.ThreadPoolExecutor",
            "concurrent.futures.ProcessPoolExecutor",
            "multiprocessing.Process",
            "multiprocessing.Pool",
        )
    },
}
"""Flagged only when called (and the condition holds): classes, and no-argument clock reads."""

_MODULES: dict[str, _Rule] = {
    "secrets": _SECRET,
    "requests": _IO,
    "httpx": _IO,
    "aiohttp": _IO,
    "urllib.request": _IO,
    "http.client": _IO,
    "socket": _IO,
    "subprocess": _IO,
}
"""Calling anything in these modules is flagged (except exceptions and :data:`_ALLOWED`)."""

_ALLOWED = frozenset({"secrets.compare_digest"})
_EXCEPTION_SUFFIXES = ("Error", "Exception", "Warning")

_METHODS: dict[str, _Rule] = {"run_in_executor": _THREAD}
"""Method calls flagged whatever the object (``loop.run_in_executor(...)``)."""

_WORKFLOW_DECORATORS = frozenset({"stalwart.workflow", "stalwart.decorators.workflow"})
_ACTIVITY_DECORATORS = frozenset({"stalwart.activity", "stalwart.decorators.activity"})
_BUILTINS = frozenset({"open", "input"})


def _display(name: str) -> str:
    return name.removeprefix("builtins.")


def _call_rule(name: str, call: ast.Call) -> _Rule | None:
    rule = _REFERENCES.get(name)
    if rule is not None:
        return rule
    if name in _CALLS:
        rule, applies = _CALLS[name]
        return rule if applies(call) else None
    if name in _ALLOWED or name.endswith(_EXCEPTION_SUFFIXES):
        return None
    for module, rule in _MODULES.items():
        if name.startswith(module + "."):
            return rule
    return None


# ----------------------------------------------------------------------------- scopes
_Bindings = dict[str, str | None]
"""Names bound in one scope: the dotted name an import binds, or None for anything else."""


def _import_bindings(node: ast.Import | ast.ImportFrom) -> Iterator[tuple[str, str]]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.asname is not None:
                yield alias.asname, alias.name
            else:
                first = alias.name.split(".")[0]
                yield first, first
        return
    module = "." * node.level + (node.module or "")
    for alias in node.names:
        if alias.name == "*":
            continue
        sep = "" if not module or module.endswith(".") else "."
        yield alias.asname or alias.name, f"{module}{sep}{alias.name}"


_NEW_SCOPES = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Lambda,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


def _scope_bindings(body: Iterable[ast.AST], params: Iterable[str] = ()) -> _Bindings:
    """The names bound directly in a scope (not in the scopes nested in it).

    An import wins over other bindings of the same name (``try: import x`` / ``except
    ImportError: x = None``); names declared ``global`` or ``nonlocal`` are not local.
    """
    imports: dict[str, str] = {}
    others: set[str] = set(params)
    declared: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            imports.update(_import_bindings(node))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            others.add(node.name)
        elif isinstance(node, _NEW_SCOPES):
            pass
        elif isinstance(node, ast.Global | ast.Nonlocal):
            declared.update(node.names)
        else:
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                others.add(node.id)
            elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar):
                if node.name is not None:
                    others.add(node.name)
            elif isinstance(node, ast.MatchMapping) and node.rest is not None:
                others.add(node.rest)
            for child in ast.iter_child_nodes(node):
                visit(child)

    for node in body:
        visit(node)
    bindings: _Bindings = {name: None for name in others}
    bindings.update(imports)
    for name in declared:
        bindings.pop(name, None)
    return bindings


def _parameters(args: ast.arguments) -> list[str]:
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    every += [a for a in (args.vararg, args.kwarg) if a is not None]
    return [a.arg for a in every]


def _side_effect_function(call: ast.Call) -> ast.expr | None:
    """The function given to ``<ctx>.side_effect(fn)``, if ``call`` is such a call."""
    if not (isinstance(call.func, ast.Attribute) and call.func.attr == "side_effect"):
        return None
    if call.args:
        return call.args[0]
    return next((k.value for k in call.keywords if k.arg == "fn"), None)


@dataclass
class _Scope:
    bindings: _Bindings
    is_class: bool = False
    recorded: set[str] = field(default_factory=set)
    """Names of local functions passed to ``ctx.side_effect()`` (not checked)."""


_Report = Callable[[ast.expr, _Rule, str], None]


class _Checker(ast.NodeVisitor):
    """Walks a module, tracking scopes, and reports the rules broken in workflow code."""

    def __init__(self, report: _Report) -> None:
        self._report = report
        self._scopes: list[_Scope] = []
        self._checking = False

    # -- names ------------------------------------------------------------------------
    def _lookup(self, name: str) -> str | None:
        """What ``name`` refers to: a dotted import, None for a local value, else itself."""
        for depth, scope in enumerate(reversed(self._scopes)):
            if scope.is_class and depth > 0:
                continue
            if name in scope.bindings:
                return scope.bindings[name]
        return f"builtins.{name}" if name in _BUILTINS else name

    def _dotted(self, node: ast.expr) -> str | None:
        """``a.b.c`` with ``a`` resolved through the imports in scope, or None."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        base = self._lookup(node.id)
        if base is None:
            return None
        return ".".join([base, *reversed(parts)])

    def _kind(self, decorators: list[ast.expr]) -> str | None:
        """``"workflow"``, ``"activity"`` or None, from a function's decorators."""
        for decorator in decorators:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            name = self._dotted(target)
            if name in _WORKFLOW_DECORATORS:
                return "workflow"
            if name in _ACTIVITY_DECORATORS:
                return "activity"
            if isinstance(target, ast.Name) and target.id in ("workflow", "activity"):
                return target.id
        return None

    # -- scopes -----------------------------------------------------------------------
    def _in_scope(
        self, scope: _Scope, nodes: Iterable[ast.AST], *, checking: bool | None = None
    ) -> None:
        outer = self._checking
        self._scopes.append(scope)
        if checking is not None:
            self._checking = checking
        try:
            for node in nodes:
                self.visit(node)
        finally:
            self._scopes.pop()
            self._checking = outer

    def _visit_defaults(self, args: ast.arguments) -> None:
        for default in [*args.defaults, *args.kw_defaults]:
            if default is not None:
                self.visit(default)

    def visit_Module(self, node: ast.Module) -> None:
        """The module scope."""
        self._in_scope(_Scope(_scope_bindings(node.body)), node.body)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        self._visit_defaults(node.args)
        kind = self._kind(node.decorator_list)
        if kind is not None:
            checking = kind == "workflow"
        else:
            recorded = bool(self._scopes) and node.name in self._scopes[-1].recorded
            checking = self._checking and not recorded
        scope = _Scope(_scope_bindings(node.body, _parameters(node.args)))
        if checking:
            scope.recorded = {
                fn.id
                for call in ast.walk(node)
                if isinstance(call, ast.Call)
                and isinstance(fn := _side_effect_function(call), ast.Name)
            }
        self._in_scope(scope, node.body, checking=checking)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        """A function: its own scope; a workflow's body is checked."""
        self._visit_function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        """An async function: its own scope; a workflow's body is checked."""
        self._visit_function(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        """A lambda: its own scope, checked when defined in workflow code."""
        self._visit_defaults(node.args)
        self._in_scope(_Scope(_scope_bindings([], _parameters(node.args))), [node.body])

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        """A class body: a scope that the functions defined in it do not see."""
        for child in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(child)
        self._in_scope(_Scope(_scope_bindings(node.body), is_class=True), node.body)

    def _visit_comprehension(
        self, node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp
    ) -> None:
        targets = [g.target for g in node.generators]
        names = {n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)}
        self._in_scope(_Scope(dict.fromkeys(names)), list(ast.iter_child_nodes(node)))

    visit_ListComp = _visit_comprehension
    visit_SetComp = _visit_comprehension
    visit_DictComp = _visit_comprehension
    visit_GeneratorExp = _visit_comprehension

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        """``x: T = value``: the annotation is not checked."""
        self.visit(node.target)
        if node.value is not None:
            self.visit(node.value)

    # -- the checks -------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        """A call: flagged by name (with its arguments) or as a method of any object."""
        if not self._checking:
            self.generic_visit(node)
            return
        func = node.func
        name = self._dotted(func)
        rule = _call_rule(name, node) if name is not None else None
        if rule is not None and name is not None:
            self._report(node, rule, f"{_display(name)}()")
        elif isinstance(func, ast.Attribute) and func.attr in _METHODS:
            self._report(node, _METHODS[func.attr], f".{func.attr}()")
            self.visit(func.value)
        else:
            self.visit(func)
        recorded = _side_effect_function(node)
        for argument in [*node.args, *(k.value for k in node.keywords)]:
            if argument is recorded:
                outer, self._checking = self._checking, False
                try:
                    self.visit(argument)
                finally:
                    self._checking = outer
            else:
                self.visit(argument)

    def _visit_reference(self, node: ast.Name | ast.Attribute) -> None:
        if self._checking and isinstance(node.ctx, ast.Load):
            name = self._dotted(node)
            rule = _REFERENCES.get(name) if name is not None else None
            if rule is not None and name is not None:
                self._report(node, rule, _display(name))
                return
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        """A name: flagged when it refers to a flagged function (``from time import time``)."""
        self._visit_reference(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        """``a.b``: flagged when it resolves to a flagged name (``os.environ``)."""
        self._visit_reference(node)


# ----------------------------------------------------------------------------- linting
def _suppressions(source: str) -> dict[int, frozenset[str] | None]:
    """Line -> the codes ignored on it (None: every code), from the source's comments."""
    found: dict[int, frozenset[str] | None] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type != tokenize.COMMENT:
                continue
            match = IGNORE_COMMENT.search(token.string)
            if match is None:
                continue
            line = token.start[0]
            codes = re.findall(r"[A-Za-z]+[0-9]+", match.group("codes") or "")
            if not codes or (line in found and found[line] is None):
                found[line] = None
            else:
                found[line] = frozenset(c.upper() for c in codes).union(found.get(line) or ())
    except (tokenize.TokenError, SyntaxError):
        pass
    return found


def _char_column(lines: list[str], line: int, byte_offset: int) -> int:
    """The 1-based character column of a UTF-8 byte offset in a 1-based line."""
    if not 0 < line <= len(lines):
        return byte_offset + 1
    prefix = lines[line - 1].encode("utf-8")[:byte_offset]
    return len(prefix.decode("utf-8", errors="replace")) + 1


def _unchecked(filename: str, problem: str, line: int = 1, col: int = 1) -> list[Finding]:
    return [Finding(filename, line, col, SYNTAX, f"{problem}; the file was not checked")]


def lint_source(source: str, filename: str = "<string>") -> list[Finding]:
    """Check one module's source; the findings come sorted by line and column.

    A syntax error is reported as one ``SW000`` finding rather than raised.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        return _unchecked(filename, f"syntax error: {exc.msg}", exc.lineno or 1, exc.offset or 1)
    except (ValueError, RecursionError, MemoryError) as exc:
        return _unchecked(filename, f"cannot parse: {exc}")

    lines = re.split(r"\r\n|\r|\n", source)
    found: list[Finding] = []

    def report(node: ast.expr, rule: _Rule, name: str) -> None:
        col = _char_column(lines, node.lineno, node.col_offset)
        found.append(Finding(filename, node.lineno, col, rule.code, rule.message(name)))

    try:
        _Checker(report).visit(tree)
    except RecursionError:
        return _unchecked(filename, "too deeply nested to check")
    ignored = _suppressions(source)

    def kept(finding: Finding) -> bool:
        if finding.line not in ignored:
            return True
        codes = ignored[finding.line]
        return codes is not None and finding.code not in codes

    return sorted(filter(kept, found), key=lambda f: (f.line, f.col, f.code))


def lint_file(path: str | os.PathLike[str]) -> list[Finding]:
    """Check one file (decoded as Python source: a coding cookie or BOM, else UTF-8).

    A file that cannot be read, decoded or parsed gives one ``SW000`` finding.
    """
    filename = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return _unchecked(filename, f"cannot read: {exc.strerror or exc}")
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        source = data.decode(encoding)
    except (SyntaxError, UnicodeDecodeError, LookupError) as exc:
        return _unchecked(filename, f"cannot decode: {exc}")
    return lint_source(source, filename)


def python_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The files to check: each file given, and the ``*.py`` files under each directory.

    Directories are walked recursively in sorted order, skipping hidden ones and
    :data:`EXCLUDED_DIRS`; a file reached twice is listed once.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    files: list[Path] = []
    seen: set[Path] = set()

    def add(file: Path) -> None:
        key = file.resolve()
        if key not in seen:
            seen.add(key)
            files.append(file)

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(_walk(path)):
                add(file)
        elif path.exists():
            add(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {os.fspath(raw)}")
    return files


def _walk(root: Path) -> Iterator[Path]:
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and d not in EXCLUDED_DIRS]
        base = Path(directory)
        yield from (base / name for name in names if name.endswith(".py"))


def lint_files(files: Iterable[str | os.PathLike[str]]) -> list[Finding]:
    """Check each file in turn; the findings of all files, file by file."""
    return [finding for file in files for finding in lint_file(file)]


def lint_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Finding]:
    """Check files and directories (recursively, ``*.py``); see :func:`python_files`.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    return lint_files(python_files(paths))


def summary(findings: list[Finding], files_checked: int) -> str:
    """The closing line of the text output."""
    checked = f"{files_checked} file{'' if files_checked == 1 else 's'}"
    if not findings:
        return f"No determinism problems found in {checked}."
    with_findings = len({f.path for f in findings})
    return (
        f"Found {len(findings)} problem{'' if len(findings) == 1 else 's'} in "
        f"{with_findings} file{'' if with_findings == 1 else 's'} ({checked} checked)."
    )


__all__ = [
    "CODES",
    "Finding",
    "lint_file",
    "lint_files",
    "lint_paths",
    "lint_source",
    "python_files",
    "summary",
]

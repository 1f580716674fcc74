"""Mutation testing of chosen faceapp modules: `make mutants MODULES="validation url_fetch"`.

Each mutant is one small change made with Python's ast module, the kinds a slip of the pen makes:
- operators: a comparison flipped at its boundary (< and <=, == and !=, in and not in, is and
  is not), `and` and `or` swapped, a `not` dropped;
- constants: a number changed by one, a True/False flipped (a boolean default too), a limit
  doubled (an integer of 2 or more outside function bodies: module and class constants,
  argument defaults);
- statements deleted: a `raise`, a call made for its effect (a cleanup, a guard's check), an
  `if` guard that ends in raise, return, continue or break; a `return <value>` emptied;
- strings that matter: one in a comparison, a dictionary key (in a literal, a subscript, or
  .get/.pop/.setdefault/.getlist), changed;
- a keyword argument dropped from a call.
Messages are never changed, and nothing inside annotations or logging calls is.

First the whole test suite runs once under coverage.py with one context per test (slow tests that
run the app in another process are left out: no mutant made here reaches them). That gives the
tests that reach each line of every module, and how long each takes; it is kept in .mutants/ and
reused until a source or test file changes. Then, one mutant at a time, a forked child imports
the mutated module in place of the real one (nothing is written to disk) and runs only the tests
that reach the mutated line, quickest first, stopping at the first failure. A failure (or an
error) is "caught"; tests that ran past their time budget with none failing are a "timeout", a
category of its own (on a loaded machine a mutant no test can see times out too, so it is not
counted as caught: rerun it with --only); all passing is "missed", unless
mutants/equivalent.txt argues why the change cannot be seen from outside ("equivalent"). Mutant
ids are module:function:kind#n, n counting that kind within the function, so they stay put when
other functions change. `--sample N --seed S` tests N mutants of each module drawn with a fixed
seed instead of all of them.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.abc
import importlib.util
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "mutants" / "config.toml"
EQUIVALENT = ROOT / "mutants" / "equivalent.txt"
CACHE = ROOT / ".mutants"  # the traced run, kept until a source or test file changes
MODEL_FIXTURE = "tiny_model_dir"  # tests/conftest.py's session-wide random CLIP
LOG_NAMES = ("log", "logging", "logger", "warnings")
KEY_METHODS = ("get", "pop", "setdefault", "getlist")  # whose first argument is a key
EXITS = (ast.Raise, ast.Return, ast.Continue, ast.Break)
FIRST_STAGE = 8  # a mutant's quickest tests, run first on their own (see _stages)
# The children's output (the last test run); per run, as two runs may go on side by side.
CHILD_LOG = os.path.join(tempfile.gettempdir(), f"faceapp-mutants-{os.getuid()}-{os.getpid()}.log")
FLIPPED = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
SYMBOL = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}


@dataclass
class Mutant:
    id: str
    line: int
    change: str
    # Outside functions a line runs at import, before any test: such a mutant is reached by the
    # tests that run the lines naming what it changes (the assigned names, or the class).
    names: tuple[str, ...] = ()
    in_function: bool = True
    # ... and, inside an entry of a dict literal keyed by a string (DEFAULTS), the tests that run
    # a line of any faceapp module quoting that key.
    quoted: str = ""
    # The lines of the statement it is in (a compound one's header): coverage.py records a
    # statement that spans lines under one of them, not necessarily the mutated one.
    statement: tuple[int, int] = (0, 0)


# --- making mutants ---------------------------------------------------------------------------


class _Sites(ast.NodeVisitor):
    """Walk a module in a fixed order; yield each mutation site, or apply the `apply`-th one."""

    def __init__(self, module: str, apply: int | None = None) -> None:
        self.module, self.apply = module, apply
        self.scope: list[str] = []
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        self.mutants: list[Mutant] = []
        self.function_depth = 0
        self.in_defaults = False
        self.classes: list[str] = []
        self.assigned: tuple[str, ...] = ()
        self.strings: set[int] = set()  # string constants already made a site (by id)
        self.entry_key = ""  # the string key of the module-level dict entry being visited
        self.statement = (0, 0)  # the lines of the statement being visited

    def _site(self, node: ast.AST, kind: str, change: str) -> bool:
        """Record a site; True when it is the one to apply."""
        where = ".".join(self.scope) or "<module>"
        self.counts[(where, kind)] += 1
        mutant_id = f"{self.module}:{where}:{kind}#{self.counts[(where, kind)]}"
        index = len(self.mutants)
        names = (*self.classes[-1:], *self.assigned)
        inside = self.function_depth > 0
        quoted = "" if inside else self.entry_key
        lines = self.statement if self.statement[0] else (node.lineno, node.lineno)
        self.mutants.append(Mutant(mutant_id, node.lineno, change, names, inside, quoted, lines))
        return index == self.apply

    def visit(self, node: ast.AST):
        if not isinstance(node, ast.stmt):
            return super().visit(node)
        outer = self.statement
        body = getattr(node, "body", None)
        last = node.end_lineno or node.lineno
        if body and isinstance(body, list):  # a compound statement: its header only
            last = max(node.lineno, body[0].lineno - 1)
        self.statement = (node.lineno, last)
        try:
            return super().visit(node)
        finally:
            self.statement = outer

    def visit_Assign(self, node: ast.Assign) -> None:
        if self.function_depth:
            self.generic_visit(node)
            return
        self.assigned = tuple(
            n.id for target in node.targets for n in ast.walk(target) if isinstance(n, ast.Name)
        )
        self.generic_visit(node)
        self.assigned = ()

    def _scoped(self, node, name: str) -> None:
        self.scope.append(name)
        is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        # Decorators and default values run when the def runs (at import), not when it is called.
        outer = self.assigned
        self.assigned = (name,) if is_function and not self.function_depth else outer
        for field in ("decorator_list", "bases", "keywords"):
            for child in getattr(node, field, []):
                self.visit(child)
        if is_function:
            self.visit(node.args)
        self.assigned = outer
        self.function_depth += is_function
        body = node.body
        if body and _is_docstring(body[0]):
            body = body[1:]
        for statement in body:
            self.visit(statement)
        self.function_depth -= is_function
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scoped(node, node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.classes.append(node.name)
        self._scoped(node, node.name)
        self.classes.pop()

    def visit_arguments(self, node: ast.arguments) -> None:
        self.in_defaults = True
        for default in [*node.defaults, *node.kw_defaults]:
            if default is not None:
                self.visit(default)
        self.in_defaults = False

    def visit_arg(self, node: ast.arg) -> None:  # annotations are not code that runs
        return

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            if not self.function_depth and isinstance(node.target, ast.Name):
                self.assigned = (node.target.id,)
            self.visit(node.value)
            self.assigned = ()

    def visit_Call(self, node: ast.Call) -> None:
        if _is_log_call(node):
            return  # what a log line says is not behaviour
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in KEY_METHODS and node.args:
            self._strings(node.args[0])
        for keyword in node.keywords:
            if keyword.arg is not None and self._site(
                keyword, "keyword", f"{keyword.arg}= dropped"
            ):
                keyword._faceapp_drop = True  # noqa: SLF001 (read by _Apply)
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        for i, op in enumerate(node.ops):
            flipped = FLIPPED[type(op)]
            if self._site(node, "compare", f"{SYMBOL[type(op)]} -> {SYMBOL[flipped]}"):
                node.ops[i] = flipped()
        for operand in (node.left, *node.comparators):
            self._strings(operand)
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        outer = self.entry_key
        for key in node.keys:
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                self.entry_key = key.value
                self._strings(key)
        self.entry_key = outer
        # Keys, then values: the order generic_visit has (it numbers the other kinds' sites).
        for field in (node.keys, node.values):
            for key, child in zip(node.keys, field, strict=True):
                is_str = isinstance(key, ast.Constant) and isinstance(key.value, str)
                self.entry_key = key.value if is_str else outer
                if child is not None:
                    self.visit(child)
        self.entry_key = outer

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self._strings(node.slice)
        self.generic_visit(node)

    def _strings(self, node: ast.AST) -> None:
        """A string constant that a comparison or a key uses (or a tuple, list or set of them)."""
        items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
        for item in items:
            if not (isinstance(item, ast.Constant) and isinstance(item.value, str)):
                continue
            if id(item) in self.strings:
                continue
            self.strings.add(id(item))
            changed = f"{item.value}~"
            if self._site(item, "string", f"{_short(item.value)} -> {_short(changed)}"):
                item.value = changed

    def visit_Expr(self, node: ast.Expr) -> None:
        call = node.value
        if self.function_depth and isinstance(call, ast.Call) and not _is_log_call(call):
            if self._site(node, "statement", f"{_call_name(call)}(...) deleted"):
                node._faceapp_delete = True  # noqa: SLF001 (read by _Apply)
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        if self.function_depth and not node.orelse and isinstance(node.body[-1], EXITS):
            if self._site(node, "guard", f"guard `if ...: {_exit_word(node.body[-1])}` deleted"):
                node._faceapp_delete = True  # noqa: SLF001 (read by _Apply)
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        is_and = isinstance(node.op, ast.And)
        if self._site(node, "boolop", "and -> or" if is_and else "or -> and"):
            node.op = ast.Or() if is_and else ast.And()
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        if isinstance(node.op, ast.Not) and self._site(node, "not", "not x -> x"):
            node._faceapp_drop = True  # noqa: SLF001 (read by _Apply)
        self.generic_visit(node)
        return node

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool):
            if self._site(node, "constant", f"{value} -> {not value}"):
                node.value = not value
        elif isinstance(value, int | float):
            if self._site(node, "constant", f"{value!r} -> {value + 1!r}"):
                node.value = value + 1
            limit = not self.function_depth or self.in_defaults
            if limit and isinstance(value, int) and value >= 2:
                if self._site(node, "limit", f"{value!r} -> {value * 2!r}"):
                    node.value = value * 2

    def visit_Raise(self, node: ast.Raise) -> None:
        if self._site(node, "raise", "raise deleted"):
            node.exc, node.cause = None, None
            node._faceapp_delete = True  # noqa: SLF001 (read by _Apply)
        self.generic_visit(node)

    def visit_Return(self, node: ast.Return) -> None:
        value = node.value
        if value is not None and not (isinstance(value, ast.Constant) and value.value is None):
            if self._site(node, "return", "return value -> return None"):
                node._faceapp_empty = True  # noqa: SLF001 (read by _Apply)
        self.generic_visit(node)


def _is_log_call(node: ast.Call) -> bool:
    func = node.func
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id in LOG_NAMES
    )


def _call_name(node: ast.Call) -> str:
    return ast.unparse(node.func)[:40]


def _exit_word(node: ast.stmt) -> str:
    return type(node).__name__.lower()


def _short(text: str) -> str:
    return repr(text if len(text) <= 30 else text[:27] + "...")


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


class _Apply(ast.NodeTransformer):
    """Finish what _Sites marked: a deleted statement becomes `pass`, a dropped `not x` becomes
    x, a dropped keyword argument goes."""

    def _statement(self, node: ast.stmt) -> ast.AST:
        if getattr(node, "_faceapp_delete", False):
            return ast.copy_location(ast.Pass(), node)
        self.generic_visit(node)
        return node

    visit_Raise = visit_Expr = visit_If = _statement

    def visit_Call(self, node: ast.Call) -> ast.AST:
        node.keywords = [k for k in node.keywords if not getattr(k, "_faceapp_drop", False)]
        self.generic_visit(node)
        return node

    def visit_Return(self, node: ast.Return) -> ast.AST:
        if getattr(node, "_faceapp_empty", False):
            node.value = None
        self.generic_visit(node)
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        return node.operand if getattr(node, "_faceapp_drop", False) else node


def list_mutants(module: str, source: str) -> list[Mutant]:
    sites = _Sites(module)
    sites.visit(ast.parse(source))
    return sites.mutants


def lines_naming(source: str, names: tuple[str, ...]) -> set[int]:
    """The lines inside functions that use any of `names` (a name, an attribute, a class body)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name in names:
            for inner in ast.walk(node):
                if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
        elif isinstance(node, ast.Name) and node.id in names:
            lines.add(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr in names:
            lines.add(node.lineno)
    return lines


def mutated_code(module: str, source: str, path: str, index: int):
    tree = ast.parse(source)
    _Sites(module, apply=index).visit(tree)
    tree = ast.fix_missing_locations(_Apply().visit(tree))
    return compile(tree, path, "exec")


# --- running tests in a forked child ----------------------------------------------------------


class _MutantLoader(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, name: str, path: str, code) -> None:
        self.name, self.path, self.code = name, path, code

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=self.path)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        module.__file__ = self.path
        exec(self.code, module.__dict__)  # noqa: S102 (our own source, mutated)


class _Select:
    """pytest plugin for a mutant's run: only the chosen tests, quickest first, and the tiny
    model the tracing run built instead of building it again (it takes seconds)."""

    def __init__(self, keep: dict[str, float], model_dir: str | None) -> None:
        self.keep, self.model_dir = keep, model_dir

    def pytest_collection_modifyitems(self, session, config, items) -> None:
        chosen = [item for item in items if item.nodeid in self.keep]
        items[:] = sorted(chosen, key=lambda item: self.keep[item.nodeid])

    def pytest_fixture_setup(self, fixturedef, request):
        if fixturedef.argname != MODEL_FIXTURE or self.model_dir is None:
            return None
        fixturedef.cached_result = (self.model_dir, fixturedef.cache_key(request), None)
        return self.model_dir


class _CoverageTracer:
    """pytest plugin: every test's own coverage.py context (its node id), and its duration.

    Slow tests in `server_tests` files are left out: they run the app in another process. So is
    every test of a `left_out` file: no mutant runs it, so where it goes is never asked."""

    def __init__(self, cov, server_tests: list[str], left_out: list[str], keep_in: str) -> None:
        self.cov, self.server_tests, self.keep_in = cov, tuple(server_tests), keep_in
        self.left_out = tuple(left_out)
        self.model_dir: str | None = None
        self.seconds: dict[str, float] = {}
        self.failed: list[str] = []

    def pytest_collection_modifyitems(self, session, config, items) -> None:
        def elsewhere(item) -> bool:
            if item.nodeid.startswith(self.left_out):
                return True
            return item.nodeid.startswith(self.server_tests) and item.get_closest_marker("slow")

        items[:] = [item for item in items if not elsewhere(item)]

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.cov.switch_context(item.nodeid)
        started = time.monotonic()
        yield
        self.seconds[item.nodeid] = time.monotonic() - started
        self.cov.switch_context("")

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed and report.nodeid not in self.failed:
            self.failed.append(report.nodeid)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        outcome = yield
        if fixturedef.argname == MODEL_FIXTURE and self.model_dir is None:
            self.model_dir = os.path.join(self.keep_in, "tiny-model")
            shutil.rmtree(self.model_dir, ignore_errors=True)
            shutil.copytree(outcome.get_result(), self.model_dir)


def _pytest_args(files: list[str], extra: list[str]) -> list[str]:
    # Plugins imported before the fork (see preload) cannot have their asserts rewritten.
    quiet = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
    return [*files, *extra, "-q", "-p", "no:cacheprovider", *quiet]


def _in_child(run, timeout: float) -> tuple[int | None, float]:
    """Run `run()` (returns an exit code) in a forked child; (code or None on timeout, seconds)."""
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: its own process group, so a timeout can end its servers too
        os.setpgid(0, 0)
        log = os.open(CHILD_LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        code = 3
        try:
            code = int(run())
        except BaseException:  # noqa: BLE001 (reported in the child's log, counted as exit 3)
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), time.monotonic() - started
        if time.monotonic() - started > timeout:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None, time.monotonic() - started
        time.sleep(0.05)


def _fresh_faceapp() -> None:
    for name in [n for n in sys.modules if n == "faceapp" or n.startswith(("faceapp.", "tests"))]:
        del sys.modules[name]


def trace_tests(paths: list[str], server_tests: list[str], left_out: list[str], out: str) -> int:
    """Run `paths` under coverage.py, one context per test; write the tests that reach each line."""
    import coverage

    _fresh_faceapp()
    # Per process: two runs side by side may both trace a changed test file.
    data_file = os.path.join(os.path.dirname(out), f"coverage-{os.getpid()}.db")
    cov = coverage.Coverage(
        data_file=data_file, source=[str(ROOT / "faceapp")], config_file=False, branch=False
    )
    tracer = _CoverageTracer(cov, server_tests, left_out, str(CACHE))
    cov.start()
    try:
        code = pytest.main(_pytest_args(paths, []), plugins=[tracer])
    finally:
        cov.stop()
        cov.save()
    data = coverage.CoverageData(basename=data_file)
    data.read()
    lines: dict[str, dict[int, list[str]]] = {}
    for measured in data.measured_files():
        by_line = {
            line: sorted(c for c in contexts if c in tracer.seconds)
            for line, contexts in data.contexts_by_lineno(measured).items()
        }
        lines[os.path.relpath(measured, ROOT)] = {k: v for k, v in by_line.items() if v}
    document = {
        "seconds": tracer.seconds,
        "failed": tracer.failed,
        "model": tracer.model_dir,
        "lines": lines,
    }
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(document, fh)
    os.remove(data_file)
    return code  # 1: some tests failed; the mutants' runs leave them out


def run_mutant(name: str, path: str, code, files: list[str], select) -> int:
    _fresh_faceapp()
    sys.meta_path.insert(0, _MutantLoader(name, path, code))
    # -x: the first failing test decides; quiet, and no cache written between children.
    return pytest.main(_pytest_args(files, ["-x"]), plugins=[select])


def _digest(paths) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def code_digest(left_out: list[str]) -> str:
    """What every traced line depends on: the package, the shared test helpers, which tests the
    traced run leaves out."""
    shared = [ROOT / "tests" / "conftest.py", ROOT / "tests" / "servers.py"]
    package = _digest([*(ROOT / "faceapp").rglob("*.py"), *shared])
    return hashlib.sha256(f"{package}:{sorted(left_out)}".encode()).hexdigest()[:16]


def test_file_digests() -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): _digest([path]) for path in (ROOT / "tests").glob("test_*.py")
    }


class Trace:
    """Which tests reach each line of each faceapp file, and how long each test takes.

    Kept in .mutants/trace.json. A change to the package (or conftest.py, servers.py, the
    settings) moves lines, so the whole suite is traced again; a changed or new test file is
    traced on its own and merged in."""

    def __init__(self, document: dict | None = None) -> None:
        document = document or {"sources": "", "files": {}, "seconds": {}, "failed": []}
        self.sources: str = document["sources"]
        self.files: dict[str, str] = document["files"]
        self.seconds: dict[str, float] = document["seconds"]
        self.failed: set[str] = set(document["failed"])
        self.model: str | None = document.get("model")
        self.left_out: tuple[str, ...] = ()  # test files no mutant runs (config's left_out)
        self._names: dict[str, set[str]] | None = None
        self.lines: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
        tests = list(self.seconds)
        for path, by_line in document.get("lines", {}).items():
            for line, numbers in by_line.items():
                self.lines[path][int(line)].update(tests[n] for n in numbers)

    def document(self) -> dict:
        tests = list(self.seconds)
        number = {test: n for n, test in enumerate(tests)}
        lines = {
            path: {line: sorted(number[t] for t in found) for line, found in by_line.items()}
            for path, by_line in self.lines.items()
        }
        return {
            "sources": self.sources,
            "files": self.files,
            "seconds": self.seconds,
            "failed": sorted(self.failed),
            "model": self.model,
            "lines": lines,
        }

    def forget(self, files: set[str]) -> None:
        """Drop the tests of these test files (changed or gone)."""

        def gone(test: str) -> bool:
            return test.split("::", 1)[0] in files

        self.seconds = {t: s for t, s in self.seconds.items() if not gone(t)}
        self.failed = {t for t in self.failed if not gone(t)}
        for by_line in self.lines.values():
            for found in by_line.values():
                found.difference_update({t for t in found if gone(t)})
        for name in files:
            self.files.pop(name, None)

    def add(self, partial: dict) -> None:
        self.seconds.update(partial["seconds"])
        self.failed.update(partial["failed"])
        self.model = partial["model"] or self.model
        for path, by_line in partial["lines"].items():
            for line, found in by_line.items():
                self.lines[path][int(line)].update(found)

    def at(self, path: str, lines) -> set[str]:
        """The tests (passing without any mutant) that run any of `lines` of `path`."""
        by_line = self.lines.get(path, {})
        found = {test for line in lines for test in by_line.get(line, ())}
        return found - self.failed

    def anywhere(self, path: str) -> set[str]:
        return self.at(path, list(self.lines.get(path, {})))

    def naming(self, names: tuple[str, ...]) -> set[str]:
        """The tests whose own code names any of `names` (DEFAULTS["RATELIMIT"], RECENT_LIMIT)."""
        if self._names is None:
            self._names = _names_in_tests()
        wanted = set(names)
        functions = {f for f, used in self._names.items() if used & wanted}
        return {t for t in self.seconds if t.split("[", 1)[0] in functions} - self.failed


def _names_in_tests() -> dict[str, set[str]]:
    """file::function (or file::Class::function) of every test, and the names its body uses."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        prefix = str(path.relative_to(ROOT))
        for node in tree.body:
            owners = [(prefix, node)]
            if isinstance(node, ast.ClassDef):
                owners = [(f"{prefix}::{node.name}", child) for child in node.body]
            for owner, function in owners:
                if isinstance(function, ast.FunctionDef) and function.name.startswith("test"):
                    found[f"{owner}::{function.name}"] = {
                        n.id if isinstance(n, ast.Name) else n.attr
                        for n in ast.walk(function)
                        if isinstance(n, ast.Name | ast.Attribute)
                    }
    return found


def load_trace(server_tests: list[str], left_out: list[str], kept: str | None = None) -> Trace:
    """The traced run for the sources as they are now: from .mutants/, brought up to date; or
    `kept` (a trace.json) as it is, for modules that did not change since it was made."""
    if kept:
        print(f"using {kept} as it is: only the lines of modules unchanged since are right")
        return Trace(json.loads(Path(kept).read_text(encoding="utf-8")))
    saved = CACHE / "trace.json"
    trace = Trace(json.loads(saved.read_text(encoding="utf-8")) if saved.exists() else None)
    sources, files = code_digest([*server_tests, *left_out]), test_file_digests()
    if trace.sources != sources:
        trace, stale = Trace(), sorted(files)
        trace.sources = sources
    else:
        stale = sorted(f for f, digest in files.items() if trace.files.get(f) != digest)
        trace.forget(set(stale) | (set(trace.files) - set(files)))
    if stale:
        whole = len(stale) == len(files)
        print(
            f"tracing {'the whole suite' if whole else ', '.join(stale)} under coverage",
            flush=True,
        )
        CACHE.mkdir(exist_ok=True)
        out = str(CACHE / f"partial-{os.getpid()}.json")
        paths = ["tests"] if whole else stale
        code, seconds = _in_child(lambda: trace_tests(paths, server_tests, left_out, out), 7200)
        if not os.path.exists(out):
            sys.exit(f"the traced run made no trace (exit {code}); see {CHILD_LOG}")
        trace.add(json.loads(Path(out).read_text(encoding="utf-8")))
        os.remove(out)
        trace.files.update({f: files[f] for f in stale})
        saved.write_text(json.dumps(trace.document()), encoding="utf-8")
        print(f"traced in {seconds / 60:.1f} min", flush=True)
    if trace.failed:
        print(f"left out, failing without any mutant: {', '.join(sorted(trace.failed))}")
    return trace


# --- the report -------------------------------------------------------------------------------


def load_equivalent() -> dict[str, str]:
    """mutants/equivalent.txt: `<mutant id>  <one-line argument>` per line, # comments."""
    argued = {}
    if EQUIVALENT.exists():
        for raw in EQUIVALENT.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                mutant_id, _, reason = line.partition(" ")
                argued[mutant_id] = reason.strip()
    return argued


def preload() -> None:
    """Import the heavy libraries and pytest's plugins once, before forking, so each child
    starts in a blink (schemathesis and hypothesis alone take seconds)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from importlib.metadata import entry_points

    for entry in entry_points(group="pytest11"):
        entry.load()
    for heavy in ("torch", "transformers", "cv2", "numpy", "PIL.Image", "flask", "requests"):
        try:
            importlib.import_module(heavy)
        except ImportError:
            pass


def module_path(name: str) -> Path:
    """faceapp/<name>.py; a dotted name is a module inside a package (store.base), and a
    package's own name is its __init__.py."""
    base = ROOT / "faceapp" / name.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def tests_for(mutant: Mutant, name: str, source: str, trace: Trace) -> set[str]:
    tests = _reaching(mutant, name, source, trace)
    return {t for t in tests if not t.startswith(trace.left_out)}


def _reaching(mutant: Mutant, name: str, source: str, trace: Trace) -> set[str]:
    """The tests that reach a mutant: those running its statement. A line outside functions
    runs at import, before any test: the tests running a line that names what it changes, the
    tests whose own code names it, and for an entry of a dict keyed by a string (DEFAULTS), the
    tests running a line of any faceapp module that quotes the key. Failing all that, every
    test that runs the module."""
    path = os.path.relpath(module_path(name), ROOT)
    if mutant.in_function:
        first, last = mutant.statement
        return trace.at(path, range(min(first, mutant.line), max(last, mutant.line) + 1))
    reaching = trace.naming(mutant.names)  # tests that read the constant themselves
    if mutant.names:
        reaching |= trace.at(path, lines_naming(source, mutant.names))
    if mutant.quoted:
        quotes = (f'"{mutant.quoted}"', f"'{mutant.quoted}'")
        for other in (ROOT / "faceapp").rglob("*.py"):
            text = other.read_text(encoding="utf-8").splitlines()
            lines = [n for n, line in enumerate(text, 1) if any(q in line for q in quotes)]
            reaching |= trace.at(os.path.relpath(other, ROOT), lines)
    return reaching or trace.anywhere(path)


def _stages(tests: set[str], seconds: dict[str, float]) -> list[list[str]]:
    """The quickest few tests first, in a child of their own: most mutants fail one of them, and
    a child that collects only their files starts in a fraction of the time. Then the rest."""
    ordered = sorted(tests, key=lambda test: seconds[test])
    return [ordered[:FIRST_STAGE], ordered[FIRST_STAGE:]] if ordered[FIRST_STAGE:] else [ordered]


def test_module(name: str, trace: Trace, argued: dict[str, str], options) -> dict:
    module = f"faceapp.{name}"
    path = str(module_path(name))
    source = Path(path).read_text(encoding="utf-8")
    mutants = list_mutants(name, source)
    chosen = list(range(len(mutants)))
    if options.only:
        chosen = [i for i in chosen if mutants[i].id in options.only]
    elif options.sample and options.sample < len(mutants):
        draw = random.Random(f"{options.seed}:{name}")
        chosen = sorted(draw.sample(chosen, options.sample))
    print(f"{name}: {len(chosen)} of {len(mutants)} mutants", flush=True)

    tally = dict.fromkeys(VERDICTS, 0) | {"mutants": len(mutants)}
    listed: dict[str, list[Mutant]] = {"missed": [], "timeout": []}
    stale = []
    for index in chosen:
        mutant = mutants[index]
        tests = tests_for(mutant, name, source, trace)
        if mutant.id in argued and not options.check_equivalent:
            tests = set()  # argued: not run (--check-equivalent runs them, to find stale lines)
        results: list[int | None] = []  # no test even runs this line: none
        if tests:
            mutated = mutated_code(name, source, path, index)
            for stage in _stages(tests, trace.seconds):
                budget = 3 * sum(trace.seconds[t] for t in stage) + 20
                select = _Select({t: trace.seconds[t] for t in stage}, trace.model)
                files = sorted({t.split("::", 1)[0] for t in stage})
                result, _ = _in_child(
                    lambda m=mutated, s=select, f=files: run_mutant(module, path, m, f, s), budget
                )
                results.append(result)
                if result not in (0, None):  # a failure decides; after a timeout, the next stage
                    break
        verdict = verdict_of(results, mutant.id in argued)
        tally[verdict] += 1
        if verdict in listed:
            listed[verdict].append(mutant)
        if verdict == "caught" and mutant.id in argued:
            stale.append(mutant.id)
        if options.verbose:
            shown = {"equivalent": "EQUIV", "missed": "MISSED", "timeout": "TIMEOUT"}
            print(
                f"  {shown.get(verdict, verdict):7} {mutant.id} (line {mutant.line}: "
                f"{mutant.change}; {len(tests)} tests)",
                flush=True,
            )
    for verdict, found in listed.items():
        for mutant in found:
            print(f"  {verdict:7} {mutant.id}  line {mutant.line}: {mutant.change}")
    if listed["timeout"]:
        print("  (a timeout is no verdict: rerun those with --only on a quieter machine)")
    for mutant_id in stale:
        print(f"  note: {mutant_id} is argued equivalent but a test catches it; drop the line")
    return tally


#: The verdicts a mutant gets, in the report's order.
VERDICTS = ("caught", "timeout", "missed", "equivalent")


def verdict_of(results: list[int | None], argued: bool) -> str:
    """A mutant's verdict from its test stages' exit codes (None: ran past its budget): caught
    when a stage failed, else timeout when one ran out of time, else equivalent when argued so,
    else missed (no stage at all: no test reaches the line)."""
    if any(result not in (0, None) for result in results):
        return "caught"
    if None in results:
        return "timeout"
    return "equivalent" if argued else "missed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="faceapp module names (default: config's)")
    parser.add_argument("--list", action="store_true", help="only list the mutants")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every verdict")
    parser.add_argument("--sample", type=int, default=0, help="N mutants per module (0: all)")
    parser.add_argument("--seed", default="19", help="the seed of --sample's draw")
    parser.add_argument("--only", nargs="+", default=[], help="these mutant ids, no others")
    parser.add_argument("--kept-trace", help="a trace.json to use as it is (no tracing)")
    parser.add_argument(
        "--check-equivalent",
        action="store_true",
        help="run the mutants argued equivalent too (a caught one is a stale argument)",
    )
    options = parser.parse_args()
    config = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    known = config["modules"]["names"]
    names = options.modules or known
    if options.only:  # the modules of the ids asked for
        names = list(dict.fromkeys(mutant_id.split(":", 1)[0] for mutant_id in options.only))
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"{', '.join(unknown)} not among the modules in {CONFIG}")
    if options.list:
        for name in names:
            source = module_path(name).read_text(encoding="utf-8")
            for mutant in list_mutants(name, source):
                print(f"{mutant.id}  line {mutant.line}: {mutant.change}")
        return
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    preload()
    print(f"the tests' output goes to {CHILD_LOG}", flush=True)
    started = time.monotonic()
    left_out = config["trace"].get("left_out", [])
    trace = load_trace(config["trace"]["server_tests"], left_out, options.kept_trace)
    trace.left_out = tuple(left_out)
    argued = load_equivalent()
    rows = []
    for name in names:
        module_started = time.monotonic()
        tally = test_module(name, trace, argued, options)
        rows.append((name, tally, time.monotonic() - module_started))
    sampled = f", {options.sample} drawn per module (seed {options.seed})" if options.sample else ""
    print(f"\n{HEADER} {'time':>6}{sampled}")
    total = defaultdict(int)
    for name, tally, seconds in rows:
        for key, value in tally.items():
            total[key] += value
        print(_row(name, tally, seconds))
    print(_row("total", total, time.monotonic() - started))


HEADER = (
    f"{'module':20} {'mutants':>7} {'caught':>7} {'timeout':>7} {'missed':>7} {'equiv':>6}"
    f" {'score':>6}"
)


def _row(name: str, tally: dict, seconds: float) -> str:
    """caught / (caught + missed): timeouts (no verdict) and equivalent mutants are left out
    of the score."""
    real = tally["caught"] + tally["missed"]
    score = f"{100 * tally['caught'] / real:.0f}%" if real else "-"
    return (
        f"{name:20} {tally['mutants']:7} {tally['caught']:7} {tally['timeout']:7}"
        f" {tally['missed']:7} {tally['equivalent']:6} {score:>6} {seconds / 60:5.1f}m"
    )


if __name__ == "__main__":
    main()

"""Mutation testing of chosen faceapp modules: `make mutants MODULES="validation url_fetch"`.

Each mutant is one small change made with Python's ast module, the kinds a slip of the pen makes:
a comparison flipped at its boundary (< and <=, == and !=, in and not in, is and is not), `and`
and `or` swapped, a `not` dropped, a number changed by one or a True/False flipped, a `raise`
deleted, a `return <value>` emptied. Strings are never changed (they are messages) and nothing
inside annotations or logging calls is.

First the module's tests (mutants/config.toml) run once under a line tracer, which gives the
tests that reach each line and how long they take. Then, one mutant at a time, a forked child
imports the mutated module in place of the real one (nothing is written to disk) and runs only
the tests that reach the mutated line, stopping at the first failure. A failure or a timeout is
"caught"; all passing is "missed", unless mutants/equivalent.txt argues why the change cannot
be seen from outside ("equivalent"). Mutant ids are module:function:kind#n, n counting that kind
within the function, so they stay put when other functions change.
"""

from __future__ import annotations

import argparse
import ast
import importlib.abc
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "mutants" / "config.toml"
EQUIVALENT = ROOT / "mutants" / "equivalent.txt"
MODEL_FIXTURE = "tiny_model_dir"  # tests/conftest.py's session-wide random CLIP
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


# --- making mutants ---------------------------------------------------------------------------


class _Sites(ast.NodeVisitor):
    """Walk a module in a fixed order; yield each mutation site, or apply the `apply`-th one."""

    def __init__(self, module: str, apply: int | None = None) -> None:
        self.module, self.apply = module, apply
        self.scope: list[str] = []
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        self.mutants: list[Mutant] = []
        self.function_depth = 0
        self.classes: list[str] = []
        self.assigned: tuple[str, ...] = ()

    def _site(self, node: ast.AST, kind: str, change: str) -> bool:
        """Record a site; True when it is the one to apply."""
        where = ".".join(self.scope) or "<module>"
        self.counts[(where, kind)] += 1
        mutant_id = f"{self.module}:{where}:{kind}#{self.counts[(where, kind)]}"
        index = len(self.mutants)
        names = (*self.classes[-1:], *self.assigned)
        self.mutants.append(Mutant(mutant_id, node.lineno, change, names, self.function_depth > 0))
        return index == self.apply

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
        for default in [*node.defaults, *node.kw_defaults]:
            if default is not None:
                self.visit(default)

    def visit_arg(self, node: ast.arg) -> None:  # annotations are not code that runs
        return

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            if not self.function_depth and isinstance(node.target, ast.Name):
                self.assigned = (node.target.id,)
            self.visit(node.value)
            self.assigned = ()

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if func.value.id in ("log", "logging", "logger", "warnings"):
                return  # what a log line says is not behaviour
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        for i, op in enumerate(node.ops):
            flipped = FLIPPED[type(op)]
            if self._site(node, "compare", f"{SYMBOL[type(op)]} -> {SYMBOL[flipped]}"):
                node.ops[i] = flipped()
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


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


class _Apply(ast.NodeTransformer):
    """Finish what _Sites marked: a deleted raise becomes `pass`, a dropped `not x` becomes x."""

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        return ast.Pass() if getattr(node, "_faceapp_delete", False) else node

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


class _LineTracer:
    """pytest plugin: which lines of one file each test runs, and how long each test takes."""

    def __init__(self, path: str, keep_in: str) -> None:
        self.path, self.keep_in = path, keep_in
        self.model_dir: str | None = None
        self.current: str | None = None
        self.lines: dict[str, set[int]] = defaultdict(set)
        self.seconds: dict[str, float] = {}
        self.failed: list[str] = []

    def _global(self, frame, event, arg):
        return self._local if frame.f_code.co_filename == self.path else None

    def _local(self, frame, event, arg):
        if event == "line" and self.current is not None:
            self.lines[self.current].add(frame.f_lineno)
        return self._local


def _wrap_protocol(tracer: _LineTracer):
    import pytest

    class Plugin:
        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_protocol(self, item, nextitem):
            tracer.current = item.nodeid
            sys.settrace(tracer._global)
            threading.settrace(tracer._global)
            started = time.monotonic()
            yield
            sys.settrace(None)
            threading.settrace(None)
            tracer.seconds[item.nodeid] = time.monotonic() - started
            tracer.current = None

        def pytest_runtest_logreport(self, report) -> None:
            if report.failed:
                tracer.failed.append(report.nodeid)

        @pytest.hookimpl(hookwrapper=True)
        def pytest_fixture_setup(self, fixturedef, request):
            outcome = yield
            if fixturedef.argname == MODEL_FIXTURE and tracer.model_dir is None:
                tracer.model_dir = os.path.join(tracer.keep_in, "tiny-model")
                shutil.copytree(outcome.get_result(), tracer.model_dir)

    return Plugin()


def _pytest_args(files: list[str], extra: list[str]) -> list[str]:
    # Plugins imported before the fork (see preload) cannot have their asserts rewritten.
    quiet = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
    return [*files, *extra, "-x", "-q", "-p", "no:cacheprovider", *quiet]


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


def trace_tests(name: str, path: str, files: list[str], extra: list[str], out: str) -> int:
    import pytest

    _fresh_faceapp()
    tracer = _LineTracer(path, os.path.dirname(out))
    code = pytest.main(_pytest_args(files, extra), plugins=[_wrap_protocol(tracer)])
    with open(out, "w", encoding="utf-8") as fh:
        lines = {test: sorted(lines) for test, lines in tracer.lines.items()}
        seconds, failed, model = tracer.seconds, tracer.failed, tracer.model_dir
        json.dump({"lines": lines, "seconds": seconds, "failed": failed, "model": model}, fh)
    return code


def run_mutant(name: str, path: str, code, files: list[str], extra: list[str], select) -> int:
    import pytest

    _fresh_faceapp()
    sys.meta_path.insert(0, _MutantLoader(name, path, code))
    return pytest.main(_pytest_args(files, extra), plugins=[select])


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


def test_module(name: str, settings: dict, argued: dict[str, str], verbose: bool) -> dict:
    module = f"faceapp.{name}"
    path = str(module_path(name))
    source = Path(path).read_text(encoding="utf-8")
    files, extra = settings["tests"], settings.get("pytest_args", [])
    mutants = list_mutants(name, source)

    scratch = tempfile.TemporaryDirectory(prefix="faceapp-mutants-")
    out = os.path.join(scratch.name, "traced.json")
    code, seconds = _in_child(lambda: trace_tests(name, path, files, extra, out), 1800)
    traced = json.loads(Path(out).read_text(encoding="utf-8")) if os.path.exists(out) else {}
    if code != 0 or not traced:
        sys.exit(f"{name}: the tests fail without any mutant (exit {code}); fix them first")
    print(f"{name}: {len(mutants)} mutants; {len(traced['seconds'])} tests in {seconds:.0f}s")
    by_line: dict[int, list[str]] = defaultdict(list)
    for test, lines in traced["lines"].items():
        for line in lines:
            by_line[line].append(test)

    tally = {"caught": 0, "missed": 0, "equivalent": 0}
    missed, stale = [], []
    for index, mutant in enumerate(mutants):
        if mutant.in_function:
            tests = sorted(set(by_line[mutant.line]))
        else:
            lines = lines_naming(source, mutant.names) if mutant.names else set()
            reaching = {t for line in lines for t in by_line[line]}
            tests = sorted(reaching or traced["seconds"])
        if tests:
            budget = 3 * sum(traced["seconds"][t] for t in tests) + 20
            mutated = mutated_code(name, source, path, index)
            select = _Select({t: traced["seconds"][t] for t in tests}, traced["model"])
            result, _ = _in_child(
                lambda m=mutated, s=select: run_mutant(module, path, m, files, extra, s), budget
            )
            caught = result != 0  # a failure, an error or a timeout (None)
        else:
            caught = False  # no test even runs this line
        if caught:
            tally["caught"] += 1
            if mutant.id in argued:
                stale.append(mutant.id)
        elif mutant.id in argued:
            tally["equivalent"] += 1
        else:
            tally["missed"] += 1
            missed.append(mutant)
        if verbose:
            verdict = "caught" if caught else "EQUIV" if mutant.id in argued else "MISSED"
            print(f"  {verdict:7} {mutant.id} (line {mutant.line}: {mutant.change})", flush=True)
    for mutant in missed:
        print(f"  missed  {mutant.id}  line {mutant.line}: {mutant.change}")
    for mutant_id in stale:
        print(f"  note: {mutant_id} is argued equivalent but a test catches it; drop the line")
    scratch.cleanup()
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="faceapp module names (default: config's)")
    parser.add_argument("--list", action="store_true", help="only list the mutants")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every verdict")
    options = parser.parse_args()
    config = tomllib.loads(CONFIG.read_text(encoding="utf-8"))["modules"]
    names = options.modules or list(config)
    unknown = [n for n in names if n not in config]
    if unknown:
        sys.exit(f"no tests configured for {', '.join(unknown)} in {CONFIG}")
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
    argued = load_equivalent()
    started = time.monotonic()
    rows = []
    for name in names:
        module_started = time.monotonic()
        tally = test_module(name, config[name], argued, options.verbose)
        rows.append((name, tally, time.monotonic() - module_started))
    print(f"\n{'module':20} {'caught':>7} {'missed':>7} {'equiv':>6} {'score':>6} {'time':>6}")
    total = defaultdict(int)
    for name, tally, seconds in rows:
        for key, value in tally.items():
            total[key] += value
        print(_row(name, tally, seconds))
    print(_row("total", total, time.monotonic() - started))


def _row(name: str, tally: dict, seconds: float) -> str:
    real = tally["caught"] + tally["missed"]
    score = f"{100 * tally['caught'] / real:.0f}%" if real else "-"
    return (
        f"{name:20} {tally['caught']:7} {tally['missed']:7} {tally['equivalent']:6} {score:>6}"
        f" {seconds / 60:5.1f}m"
    )


if __name__ == "__main__":
    main()

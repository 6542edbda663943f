"""The shape of the code in figures (issue 23's goals): fallback chains `or {})` outside runners/record.py, modules
that compute J/token or the measured-else-estimated choice, literal 0.95 thresholds, files over 400 lines, functions
over 80 lines, import cycles between modules and two-way dependencies between folders.

    python scripts/code_figures.py [--list]

Standard library only (ast); it reads the project's own packages, not tests/."""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runners", "orchestrator", "analysis", "evaluation", "benchmarks")
TOP_FILES = ("orchestrate.py",)
FILE_LIMIT, FUNCTION_LIMIT = 400, 80


def source_files() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    return files + [ROOT / f for f in TOP_FILES if (ROOT / f).exists()]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, tree: ast.AST, known: set[str]) -> set[str]:
    """The project modules a module imports (at any depth: a function-level import is a dependency too)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != me:
                out.add(name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


PACKAGE_NAMES: set[str] = set()  # modules that are packages (their __init__): a package is its own folder


def folder(module: str) -> str:
    if module in PACKAGE_NAMES:
        return module
    parts = module.split(".")
    return ".".join(parts[:-1]) if len(parts) > 1 else "(top)"


ENERGY = re.compile(r"(_j\b|_j\W|joule|energy)", re.I)
TOKENS = re.compile(r"(token|out_tokens|output)", re.I)
SOURCE_NAMES = {"SOURCES", "ENERGY_SOURCES"}


def computes_j_per_token(tree: ast.AST) -> bool:
    """A division of an energy by a token count (J/token computed here), by ``/`` or by a ``…div(energy, tokens)``
    helper."""
    def energy_by_tokens(num: ast.AST, den: ast.AST) -> bool:
        return bool(ENERGY.search(ast.unparse(num)) and TOKENS.search(ast.unparse(den))
                    and not ENERGY.search(ast.unparse(den)))

    def divides(value: ast.AST) -> bool:
        return any(isinstance(d, ast.BinOp) and isinstance(d.op, ast.Div) or isinstance(d, ast.Call) and "div" in
                   getattr(d.func, "id", getattr(d.func, "attr", "")).lower() for d in ast.walk(value))

    for n in ast.walk(tree):
        if isinstance(n, ast.Assign) and re.search(r"j(oules)?_?per_?token", ast.unparse(n.targets[0]), re.I) \
                and divides(n.value):
            return True  # named as J/token and computed by a division
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and energy_by_tokens(n.left, n.right):
            return True
        name = getattr(n.func, "id", getattr(n.func, "attr", "")) if isinstance(n, ast.Call) else ""
        if "div" in name.lower() and len(n.args) == 2 and energy_by_tokens(*n.args):
            return True
    return False


def _over_sources(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in SOURCE_NAMES
    return isinstance(node, (ast.Tuple, ast.List)) and [getattr(e, "value", None) for e in node.elts][:2] == [
        "measured", "estimated"]


def chooses_measured_else_estimated(tree: ast.AST) -> bool:
    """The headline's choice: the first of measured, estimated that exists (a loop over the sources that returns or
    breaks, or next() over them)."""
    for n in ast.walk(tree):
        if isinstance(n, ast.For) and _over_sources(n.iter) and any(
                isinstance(b, (ast.Return, ast.Break)) for b in ast.walk(n)):
            return True
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "next" and n.args and isinstance(
                n.args[0], ast.GeneratorExp) and any(_over_sources(g.iter) for g in n.args[0].generators):
            return True
    return False


def figures(show: bool = False, quiet: bool = False) -> dict[str, tuple[int, object]]:
    files = source_files()
    known = {module_name(p) for p in files}
    PACKAGE_NAMES.update(module_name(p) for p in files if p.name == "__init__.py")
    graph: dict[str, set[str]] = {}
    chains: dict[str, int] = {}
    thresholds: dict[str, int] = {}
    long_files: dict[str, int] = {}
    long_functions: list[tuple[str, int]] = []
    jpt: set[str] = set()
    measured_else: set[str] = set()
    for path in files:
        text = path.read_text()
        rel = str(path.relative_to(ROOT))
        tree = ast.parse(text)
        graph[module_name(path)] = imports_of(path, tree, known)
        if not rel.startswith("runners/record"):  # the record's own reader is where the chains belong
            n = text.count("or {})")
            if n:
                chains[rel] = n
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == 0.95 and not isinstance(node.value, bool):
                thresholds[rel] = thresholds.get(rel, 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > FUNCTION_LIMIT:
                    long_functions.append((f"{rel}:{node.name}", length))
        lines = text.count("\n")
        if lines > FILE_LIMIT:
            long_files[rel] = lines
        if computes_j_per_token(tree):
            jpt.add(rel)
        if chooses_measured_else_estimated(tree):
            measured_else.add(rel)
    folder_edges: dict[str, set[str]] = defaultdict(set)
    for mod, deps in graph.items():
        for dep in deps:
            if folder(mod) != folder(dep) and not folder(dep).startswith(folder(mod) + ".") \
                    and not folder(mod).startswith(folder(dep) + "."):
                folder_edges[folder(mod)].add(folder(dep))
    two_way = sorted({tuple(sorted((a, b))) for a, bs in folder_edges.items() for b in bs if a in folder_edges.get(b, ())})
    result = {
        "fallback chains `or {})` outside runners/record": (sum(chains.values()), chains),
        "modules computing J/token": (len(jpt), sorted(jpt)),
        "modules choosing measured-else-estimated": (len(measured_else), sorted(measured_else)),
        "literal 0.95": (sum(thresholds.values()), thresholds),
        f"files over {FILE_LIMIT} lines": (len(long_files), long_files),
        f"functions over {FUNCTION_LIMIT} lines": (len(long_functions), long_functions),
        "import cycles": (len(cycles(graph)), cycles(graph)),
        "folder-level two-way dependencies": (len(two_way), two_way),
    }
    for name, (n, detail) in result.items():
        if quiet:
            break
        print(f"{n:5d}  {name}")
        if show and n:
            print(f"         {detail}")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="name the files, functions and cycles behind each figure")
    figures(ap.parse_args().list)

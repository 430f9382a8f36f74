"""The house rules of docs/architecture.md, checked on the source: no import cycles (module-level or inside
functions), model_backend never imports copilot_ls, copilot_ls imports only model_backend.fim (a data table), the
pure layers import no LSP or HTTP code, the core imports nothing of copilot_ls.lsp, the CPU kernels are a
leaf, and no function runs over 60 lines without a `# long:` reason on its `def` line."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("copilot_ls", "model_backend")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every module the file imports, at any depth of its code (absolute names; relative ones resolved)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        graph[name] = {d for d in _imports(path, name) if d in files and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    graph = _graph()
    # a package's __init__ re-exporting its own modules is not a cycle of logic
    for name in graph:
        graph[name] = {d for d in graph[name] if not (name.startswith(d + ".") and d in graph)}
    assert _cycles(graph) == []


def test_the_two_packages_meet_only_over_http_and_the_fim_table() -> None:
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("model_backend"):
            assert not [d for d in deps if d.startswith("copilot_ls")], name
        else:
            assert {d for d in deps if d.startswith("model_backend")} <= {
                "model_backend",
                "model_backend.fim",
            }, name


def test_pure_layers_import_no_lsp_and_no_http() -> None:
    pure = (
        "copilot_ls.context",
        "copilot_ls.postprocess",
        "copilot_ls.documents",
        "copilot_ls.languages",
        "copilot_ls.confidence",
        "copilot_ls.static_checks",
        "copilot_ls.chat",
    )
    for path in (ROOT / "copilot_ls").rglob("*.py"):
        name = _module_name(path)
        if name.startswith(pure):
            bad = {
                d
                for d in _imports(path, name)
                if d.split(".")[0] in ("pygls", "lsprotocol", "httpx") or d.startswith("copilot_ls.lsp")
            }
            assert not bad, (name, bad)


# The front ends: the language server itself and the command-line tools (which may start the backend with
# lsp.autostart and read editor-style settings with lsp.settings). Everything else in copilot_ls is the core.
FRONT_ENDS = ("copilot_ls.lsp", "copilot_ls.cli", "copilot_ls.complete_cmd", "copilot_ls.evaluation.cli")


def test_the_core_never_imports_the_language_server() -> None:
    core = [
        (name, path)
        for path in (ROOT / "copilot_ls").rglob("*.py")
        if not (name := _module_name(path)).startswith(FRONT_ENDS)
    ]
    assert {"copilot_ls.pipeline", "copilot_ls.settings", "copilot_ls.context.prompt"} <= {n for n, _ in core}
    for name, path in core:
        bad = {d for d in _imports(path, name) if d == "copilot_ls.lsp" or d.startswith("copilot_ls.lsp.")}
        assert not bad, (name, bad)


def test_cpu_kernels_are_a_leaf() -> None:
    path = ROOT / "model_backend" / "cpu_kernels.py"
    if not path.exists():  # before the weights-as-stored engine
        return
    assert not {d for d in _imports(path, "model_backend.cpu_kernels") if d.startswith("model_backend")}


LONG_FUNCTION_LINES = 60
LONG_FUNCTION_DIRS = ("copilot_ls", "model_backend", "benchmarks")


Function = ast.FunctionDef | ast.AsyncFunctionDef


def _functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, Function]]:
    """(qualified name, node) of every function under `node`, methods and nested functions included."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                yield name, child
            yield from _functions(child, name + ".")
        else:
            yield from _functions(child, prefix)


def _long_functions() -> list[tuple[str, int, str]]:
    """(path:qualified name, lines, its def line) of each function longer than LONG_FUNCTION_LINES."""
    out = []
    for folder in LONG_FUNCTION_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            lines = text.splitlines()
            for name, fn in _functions(ast.parse(text)):
                n = fn.end_lineno - fn.lineno + 1
                if n > LONG_FUNCTION_LINES:
                    out.append((f"{path.relative_to(ROOT).as_posix()}:{name}", n, lines[fn.lineno - 1]))
    return out


def test_long_functions_say_why() -> None:
    """A function over LONG_FUNCTION_LINES lines (its def line to its last) carries its reason on the def line,
    `def name(...):  # long: a flat list of options`: split it into named steps, or say why it reads best whole."""
    found = _long_functions()
    assert found, "the scan finds no function at all: is LONG_FUNCTION_LINES still meaningful?"
    unexplained = [f"{where} ({n} lines)" for where, n, def_line in found if "# long: " not in def_line]
    assert not unexplained, unexplained

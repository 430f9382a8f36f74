"""Import resolution: from a name used in the current document to its definition in another file, through the
document's imports (``from pkg import f``, ``import pkg.mod``, ``require('./m')``), re-exports (a package's
``__init__.py``, an ``index.js``), star imports, the test file's subject file, open documents and the
workspace name index.

Files come from ``Workspace.file_symbols`` (open documents win over the disk); the module-to-file rules
(``module_files``) only ask the file system whether candidate paths exist.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from copilot_ls.context.imports import Import
from copilot_ls.context.subjects import subject_files
from copilot_ls.context.symbols import Definition, FileSymbols, current_file, extract_symbols
from copilot_ls.context.workspace import Workspace, open_overlays, real_path, resolved
from copilot_ls.documents import Snapshot
from copilot_ls.languages import JS_EXTENSIONS, SYMBOL_LANGUAGES

MAX_REEXPORT_DEPTH = 2  # `from pkg import f` -> pkg/__init__.py -> `from .impl import f` -> pkg/impl.py
MAX_REEXPORT_FILES = 16
MODULE_EXPORTS = "module.exports"  # the imported name of `const x = require('./m')` used as x itself


# --- modules to files -----------------------------------------------------------------------------------------
def module_files(root: Path, from_path: str, imp: Import, language: str) -> list[str]:
    """Files under ``root`` an import in ``from_path`` may refer to (existing files only, nearest first);
    ``language``: "python" or "js"."""
    if language == "python":
        return _python_module_files(root, from_path, imp)
    return _js_module_files(root, from_path, imp.module)


def _python_module_files(root: Path, from_path: str, imp: Import) -> list[str]:
    module = imp.module
    level = len(module) - len(module.lstrip("."))
    parts = [p for p in module.lstrip(".").split(".") if p]
    here = Path(from_path).parent
    bases: list[Path] = []
    if level:
        base = here
        for _ in range(level - 1):
            base = base.parent
        bases.append(base)
    else:
        bases.extend([here, root, root / "src"])
        # the package that contains this file: walk up while __init__.py exists
        top = here
        while (top / "__init__.py").exists() and top.parent != top:
            top = top.parent
        bases.append(top)
    out: list[str] = []
    for base in bases:
        target = base.joinpath(*parts) if parts else base
        candidates = [target.with_suffix(".py") if parts else None, target / "__init__.py"]
        # ``from pkg import mod``: each name may be a submodule
        if imp.names:
            for name, _ in imp.names:
                if name != "*":
                    candidates.append(target / f"{name}.py")
        for c in candidates:
            if c is not None and c.is_file() and _inside(c, root):
                s = str(c)
                if s not in out:
                    out.append(s)
    return out


def _js_module_files(root: Path, from_path: str, source: str) -> list[str]:
    if not source.startswith("."):
        return []  # a package from node_modules: not part of the workspace
    try:
        target = real_path(Path(from_path).parent / source)
    except OSError:  # e.g. an import of a symlink loop
        return []
    candidates = [target] if target.suffix in JS_EXTENSIONS else []
    stem = target.with_suffix("") if target.suffix in (".js", ".mjs", ".cjs", ".jsx") else target
    candidates += [Path(str(stem) + ext) for ext in JS_EXTENSIONS]
    candidates += [target / f"index{ext}" for ext in JS_EXTENSIONS]
    return [str(c) for c in candidates if c.is_file() and _inside(c, root)][:1]


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


# --- names to definitions -------------------------------------------------------------------------------------
class Resolver:
    """Definitions of names as the current document sees them (one per request: it counts the re-exports it
    follows)."""

    def __init__(self, snap: Snapshot, others: Sequence[Snapshot], workspace: Workspace | None) -> None:
        self.snap = snap
        self.ws = workspace
        self.overlays = open_overlays(others)
        spec = snap.language
        self.lang = spec.id if spec is not None else ""
        self.current = current_file(snap)
        self.imported: dict[str, tuple[Import, str]] = {}  # local name -> (import, imported name)
        self.modules: dict[str, Import] = {}  # local module name -> import
        self.stars: list[Import] = []
        self.reexport_files = MAX_REEXPORT_FILES  # re-exports followed in this request (each parses files)
        for imp in self.current.imports:
            if imp.local:
                self.modules[imp.local] = imp
            for name, local in imp.names:
                if name == "*":
                    self.stars.append(imp)
                else:
                    self.imported[local] = (imp, name)

    def file(self, path: str) -> FileSymbols | None:
        overlay = self.overlays.get(resolved(path))
        if self.ws is not None:
            return self.ws.file_symbols(path, overlay)
        if overlay is not None and overlay.language is not None and overlay.language.id in SYMBOL_LANGUAGES:
            return extract_symbols(overlay.text, overlay.language, overlay.path or path, overlay.tree)
        return None

    def files_of(self, imp: Import, from_path: str | None = None) -> list[str]:
        if self.ws is None or not self.snap.path:
            # without a workspace only open documents can answer
            return [p for p in self.overlays if _module_matches(p, imp.module)]
        family = "python" if self.lang == "python" else "js"
        return module_files(self.ws.root, from_path or self.snap.path, imp, family)

    def lookup(
        self,
        name: str,
        imp: Import,
        imported_name: str | None = None,
        *,
        from_path: str | None = None,
        depth: int = 0,
    ) -> list[Definition]:
        wanted = imported_name or name
        out: list[Definition] = []
        for path in self.files_of(imp, from_path):
            fs = self.file(path)
            if fs is None or same_file(path, self.snap.path):
                continue
            if (
                wanted in ("default", MODULE_EXPORTS) and fs.default_export
            ):  # `export default`, `module.exports =`
                found = fs.named(fs.default_export)
            else:
                found = fs.named(wanted)
            if not found and wanted == "default" and not fs.default_export:
                # no `export default` nor `module.exports = <definition>`: the file's first definition
                found = [d for d in fs.definitions if d.kind != "method"][:1]
            if not found and depth < MAX_REEXPORT_DEPTH:
                found = self.reexported(fs, path, fs.local_name(wanted), depth)
            out.extend(found)
            if out:
                break
        return out

    def reexported(self, fs: FileSymbols, path: str, wanted: str, depth: int) -> list[Definition]:
        """The definition of ``wanted`` that the file at ``path`` re-exports: a package's ``__init__.py`` with
        ``from .impl import wanted`` / ``from .impl import *``, an ``index.js`` with ``export {wanted} from``
        / ``export * from``. Followed ``MAX_REEXPORT_DEPTH`` files deep, ``MAX_REEXPORT_FILES`` per request."""
        if self.ws is None:
            return []
        for imp in fs.imports:
            for name, local in imp.names:
                if local != wanted and name != "*":
                    continue
                if self.reexport_files <= 0:
                    return []
                self.reexport_files -= 1
                found = self.lookup(wanted if name == "*" else name, imp, from_path=path, depth=depth + 1)
                if found:
                    return found
        return []

    def definition_of(self, name: str, qual: str | None) -> list[Definition]:
        if qual is not None:
            imp = self.modules.get(qual)
            if imp is not None:
                return self.lookup(name, imp)
            if "." in qual:  # Python `import pkg.mod` then `pkg.mod.f`; `import pkg` then `pkg.mod.f`
                parts = qual.split(".")
                for k in range(len(parts) - 1, 0, -1):
                    imp = self.modules.get(".".join(parts[:k]))
                    if imp is not None:
                        return self.lookup(name, Import(".".join([imp.module, *parts[k:]]), ()))
                return []
            if qual in self.imported:  # ``from pkg import mod`` then ``mod.name``
                imp, mod_name = self.imported[qual]
                # `from . import mod` -> ".mod" (not "..mod", the parent package); `from pkg import mod` -> "pkg.mod"
                dot = "" if imp.module.endswith(".") else "."
                sub = Import(f"{imp.module}{dot}{mod_name}" if self.lang == "python" else imp.module, ())
                return self.lookup(name, sub) if self.lang == "python" else []
            return []
        if name in self.imported:
            imp, imported_name = self.imported[name]
            return self.lookup(name, imp, imported_name)
        imp = self.modules.get(name)
        if (
            imp is not None and imp.commonjs
        ):  # `const f = require('./f')`: f is what f.js assigns to module.exports
            return self.lookup(name, imp, MODULE_EXPORTS)
        for imp in self.stars:
            found = self.lookup(name, imp)
            if found:
                return found
        return []

    def anywhere(self, name: str) -> list[Definition]:
        """A definition of ``name`` wherever it can be found: imports, the test file's subject file, open
        documents, the workspace name index."""
        found = self.definition_of(name, None)
        if found:
            return found
        for imp in list(self.modules.values()):
            found = self.lookup(name, imp)
            if found:
                return found
        paths = [p for p in subject_files(self.snap.path or "") if Path(p).is_file() or p in self.overlays]
        paths += sorted(self.overlays)
        if self.ws is not None:
            paths += self.ws.paths_defining(name)
        for path in dict.fromkeys(paths):
            if same_file(path, self.snap.path):
                continue
            fs = self.file(path)
            if fs is not None and fs.named(name):
                return fs.named(name)
        return []


def same_file(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    try:
        return a == b or resolved(a) == resolved(b)
    except OSError:
        return a == b


def _module_matches(path: str, module: str) -> bool:
    stem = Path(path).with_suffix("").as_posix()
    mod = module.lstrip("./").replace(".", "/") if not module.startswith(".") else module.lstrip("./")
    mod = re.sub(r"\.(js|ts|tsx|jsx|mjs|cjs)$", "", mod)
    return bool(mod) and (stem.endswith("/" + mod) or stem == mod)

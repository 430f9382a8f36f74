"""The workspace around a document: its root, its files' symbols (parsed on demand, cached), a name index built
by a background thread, and the registry of workspaces shared by all requests. The only part of the context
builder that keeps state across requests; see docs/context.md ("Workspace and cost") for the cost model.

- ``Workspace.file_symbols(path)`` parses one file on demand and caches the result by (path, mtime, size);
  the request path only parses the few files the current document imports (once each).
- ``Workspace.paths_defining(name)`` answers from the name index (a cheap regex scan in a background thread);
  until it is ready, answers are partial.
- Open documents (snapshots) always win over the disk: their text is what the user sees.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from copilot_ls.context.symbols import FileSymbols, extract_symbols
from copilot_ls.documents import Snapshot
from copilot_ls.languages import INDEXED_EXTENSIONS, NAME_PATTERNS, SYMBOL_LANGUAGES, language_for
from copilot_ls.lru import LRUCache

ROOT_MARKERS = (".git", "pyproject.toml", "setup.py", "setup.cfg", "package.json", "go.mod", "Cargo.toml")
SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        ".venv",
        "venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        "build",
        "dist",
        ".cache",
        "site-packages",
        ".idea",
        ".vscode",
        "target",
    }
)

MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 64  # folders below the root that the name index walks into


def _too_big(text: str) -> bool:
    """More than MAX_FILE_BYTES in UTF-8 (encoded only when the length alone cannot tell)."""
    if len(text) > MAX_FILE_BYTES:
        return True
    return len(text) * 4 > MAX_FILE_BYTES and len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES


# --- paths and roots ------------------------------------------------------------------------------------------
# Resolved paths, roots and shown paths are asked many times per request and each costs stats: their answers are
# kept for a short while (a new symlink or project marker shows within that time).
_FS_TTL_S = 2.0
_FS_CACHE_MAX = 4096
_RESOLVED: dict[str, tuple[float, str]] = {}
_ROOTS: dict[str, tuple[float, tuple[Path, bool]]] = {}
_DISPLAY: dict = {}  # (path, root) -> shown path, for a short while (like the resolved paths it is made of)


def _fs_cached(cache: dict, key: str, compute):
    now = time.monotonic()
    hit = cache.get(key)
    if hit is not None and now - hit[0] < _FS_TTL_S:
        return hit[1]
    value = compute()  # errors (OSError) propagate and are not cached
    if len(cache) >= _FS_CACHE_MAX:
        cache.clear()
    cache[key] = (now, value)
    return value


def resolved(path: str | os.PathLike[str]) -> str:
    """``str(Path(path).resolve())``, cached for a short while (see ``_FS_TTL_S``)."""
    key = os.fspath(path)
    return _fs_cached(_RESOLVED, key, lambda: str(real_path(Path(key))))


def real_path(path: Path) -> Path:
    """``path.resolve()``, with a symlink loop as the OSError it is (Python < 3.13 raises RuntimeError)."""
    try:
        return path.resolve()
    except RuntimeError as exc:
        raise OSError(errno.ELOOP, str(exc), str(path)) from None


LIBRARY_DIRS = frozenset({"site-packages", "dist-packages"})


def find_root(path: str | os.PathLike[str]) -> tuple[Path, bool]:
    """(root, marked): the nearest ancestor directory holding a project marker (.git, pyproject.toml,
    package.json, ...) and True; an installed package's ``site-packages`` (a library file belongs to its
    packages, not to the project whose virtual environment holds it) and False; else the folder above the
    outermost Python package around the file (or the file's own folder) and False (no name index is built for
    unmarked roots). Cached for a short while."""
    key = os.fspath(path)
    return _fs_cached(_ROOTS, key, lambda: _find_root(key))


def _find_root(path: str) -> tuple[Path, bool]:
    p = Path(resolved(path)).parent
    for d in (p, *p.parents):
        if any((d / m).exists() for m in ROOT_MARKERS):
            return d, True
        if d.name in LIBRARY_DIRS:
            return d, False
    top = p
    while (top / "__init__.py").exists() and top.parent != top:
        top = top.parent
    return top, False


def display_path(path: str | None, root: str | os.PathLike[str] | None = None) -> str:
    """A path as the prompt shows it: relative to the workspace root when inside it, else its last 3 parts."""
    if not path:
        return ""
    if root is not None:
        try:
            return _fs_cached(
                _DISPLAY,
                (path, os.fspath(root)),
                lambda: Path(resolved(path)).relative_to(resolved(root)).as_posix(),
            )
        except (ValueError, OSError):
            pass
    parts = [p for p in path.replace(os.sep, "/").split("/") if p]
    return "/".join(parts[-3:])


# --- the workspace --------------------------------------------------------------------------------------------
class Workspace:
    """One workspace root: parsed files on demand (bounded LRU) and a lazily built name index."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_files: int = 20_000,
        cache_files: int = 256,
        index: bool = True,
    ) -> None:
        self.root = Path(root).resolve()
        self.index_enabled = index
        self.max_files = max_files
        self._files: LRUCache[tuple, FileSymbols] = LRUCache(cache_files)
        self._lock = threading.Lock()  # starts the index thread once
        self._index: dict[str, list[str]] | None = None
        self._index_thread: threading.Thread | None = None
        self._index_done = threading.Event()
        self.files_indexed = 0

    # files
    def file_symbols(
        self, path: str | os.PathLike[str], overlay: Snapshot | None = None
    ) -> FileSymbols | None:
        """Definitions and imports of ``path`` (from ``overlay`` when the file is open), or None when the file
        is not a known language, too big, unreadable or missing."""
        if overlay is not None and overlay.language is not None and overlay.language.id in SYMBOL_LANGUAGES:
            if _too_big(overlay.text):  # as on disk: an open multi-MB document is not parsed (seconds) either
                return None
            key = ("open", overlay.uri, overlay.version, len(overlay.text))
            hit = self._files.get(key)
            if hit is None:
                hit = extract_symbols(
                    overlay.text, overlay.language, overlay.path or overlay.uri, overlay.tree
                )
                self._files.put(key, hit)
            return hit
        p = str(path)
        spec = language_for(None, p)
        if spec is None or spec.id not in SYMBOL_LANGUAGES:
            return None
        try:
            st = os.stat(p)
        except OSError:
            return None
        if st.st_size > MAX_FILE_BYTES or not os.path.isfile(p):
            return None
        key = (p, st.st_mtime_ns, st.st_size)
        hit = self._files.get(key)
        if hit is not None:
            return hit
        try:
            text = Path(p).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        symbols = extract_symbols(text, spec, p)
        self._files.put(key, symbols)
        return symbols

    # name index
    def start_indexing(self) -> None:
        with self._lock:
            if self._index_thread is not None:
                return
            self._index_thread = threading.Thread(
                target=self._build_index, name="copilot-ls-index", daemon=True
            )
            self._index_thread.start()

    def wait_indexed(self, timeout: float | None = None) -> bool:
        self.start_indexing()
        return self._index_done.wait(timeout)

    def _build_index(self) -> None:
        index: dict[str, list[str]] = {}
        count = 0
        try:
            for path in iter_source_files(self.root, self.max_files):
                try:
                    st = os.stat(path)
                    # not a regular file (a FIFO named x.py would block the read, and the index, forever)
                    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
                        continue
                    text = Path(path).read_text(encoding="utf-8", errors="replace")
                except OSError:
                    continue
                pattern = NAME_PATTERNS["python" if path.endswith((".py", ".pyi")) else "js"]
                for m in pattern.finditer(text):
                    paths = index.setdefault(m.group(1), [])
                    if len(paths) < 16 and path not in paths:
                        paths.append(path)
                count += 1
                self.files_indexed = count
                if count % 50 == 0:
                    time.sleep(0.001)  # yield the GIL to the request path
        finally:
            self._index = index
            self._index_done.set()

    def paths_defining(self, name: str) -> list[str]:
        """Files whose top level defines ``name`` (from the name index; [] while it is being built)."""
        index = self._index
        if index is None:
            if self.index_enabled:
                self.start_indexing()
            return []
        return list(index.get(name, ()))


def iter_source_files(root: Path, max_files: int) -> Iterable[str]:
    """Python / JS / TS files under ``root`` in a stable order, skipping vendored and build folders."""
    n = 0
    top = os.fspath(root).rstrip(os.sep).count(os.sep)
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath.count(os.sep) - top >= MAX_DEPTH:
            dirnames[:] = []  # os.walk recurses: a pathologically deep tree must not exhaust the stack
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(INDEXED_EXTENSIONS):
                yield os.path.join(dirpath, name)
                n += 1
                if n >= max_files:
                    return


# --- the registry: one Workspace per project root, shared by all requests ------------------------------------
_WORKSPACES: LRUCache[Path, Workspace] = LRUCache(4)
_WS_LOCK = threading.Lock()  # one Workspace per root even when two requests ask at once


def workspace_for(path: str | None) -> Workspace | None:
    """The shared Workspace of the project that contains ``path`` (None for unnamed buffers)."""
    if not path:
        return None
    root, marked = find_root(path)
    with _WS_LOCK:
        ws = _WORKSPACES.get(root)
        if ws is None:
            ws = Workspace(root, index=marked)
            _WORKSPACES.put(root, ws)
    return ws


def open_overlays(others: Sequence[Snapshot]) -> dict[str, Snapshot]:
    """Open documents by resolved file path (they override the disk)."""
    out: dict[str, Snapshot] = {}
    for s in others:
        if s.path:
            try:
                out[resolved(s.path)] = s
            except OSError:
                continue
    return out

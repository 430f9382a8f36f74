"""Real Neovim, end to end: the copilot_ls plugin in a headless nvim, the real `copilot-ls` over stdio and the
session's real backend with the default model.

Two Neovims from PyPI wheels (scripts/setup-neovim-e2e.sh): 0.12-dev, where the plugin drives Neovim's own
vim.lsp.inline_completion, and 0.11.4, where it draws its own ghost text. Each run types a test for
common_prefix() into test_lib.py, waits for ghost text, then accepts or dismisses it (tests/editors/nvim/e2e.lua
does the typing and writes what it saw to a JSON file that these tests check).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "editors" / "neovim"
DRIVER = Path(__file__).resolve().parent / "nvim" / "e2e.lua"
UNIT = Path(__file__).resolve().parent / "nvim" / "unit.lua"
SETUP = REPO / "scripts" / "setup-neovim-e2e.sh"

# name -> (venv folder, the path the plugin takes there by default)
NVIMS = {"nvim0.12": (".e2e/nvim012", "native"), "nvim0.11": (".e2e/nvim011", "ghost")}

LIB = '''def common_prefix(a, b):
    """Return the longest common prefix of the strings a and b."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]
'''
TEST_LIB = "from lib import common_prefix\n\n\n"
TYPED = ["def test_common_prefix():", "    assert common_prefix("]

GHOST_WAIT_MS = 180_000  # the default model on a busy 2-core CPU


@pytest.fixture(scope="session")
def nvims() -> dict[str, Path]:
    """The two nvim binaries, installed on first use (idempotent, seconds when already there)."""
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"{SETUP.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {name: REPO / folder / "bin" / "nvim" for name, (folder, _) in NVIMS.items()}


@pytest.fixture(scope="session")
def warm_backend(backend_url: str) -> str:
    """The session backend after one small completion, so no editor test pays the first request's cost."""
    reply = httpx.post(
        f"{backend_url}/v1/completions", json={"prompt": "def f(", "max_tokens": 2}, timeout=300
    )
    reply.raise_for_status()
    return backend_url


def settings_for(backend_url: str) -> dict:
    # The real default model through the real server; short suggestions and a patient timeout because CI's
    # CPU is shared with the rest of the suite.
    return {"backendUrl": backend_url, "timeout": 150, "maxTokens": 32}


def server_command() -> list[str]:
    """The installed `copilot-ls` entry point, as users start it (python -m before `pip install -e .`)."""
    script = shutil.which("copilot-ls", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "copilot_ls.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_nvim(
    nvim: Path,
    tmp_path: Path,
    scenario: str,
    settings: dict,
    mode: str = "auto",
    extra_env: dict[str, str] | None = None,
) -> dict:
    """Run one scenario of e2e.lua in a fresh workspace and return its JSON result."""
    ws = tmp_path / "ws"
    ws.mkdir(parents=True)
    (ws / "lib.py").write_text(LIB)
    (ws / "test_lib.py").write_text(TEST_LIB)
    xdg = tmp_path / "xdg"
    env = dict(os.environ)
    for name in ("STATE", "CACHE", "DATA", "CONFIG"):
        (xdg / name.lower()).mkdir(parents=True)
        env[f"XDG_{name}_HOME"] = str(xdg / name.lower())
    result_file = tmp_path / "result.json"
    env.update(
        {
            "COPILOT_LS_PLUGIN": str(PLUGIN),
            "COPILOT_LS_CMD": json.dumps(server_command()),
            "COPILOT_LS_SETTINGS": json.dumps(settings),
            "COPILOT_LS_MODE": mode,
            "COPILOT_LS_SCENARIO": scenario,
            "COPILOT_LS_FILE": "test_lib.py",
            "COPILOT_LS_RESULT": str(result_file),
            "COPILOT_LS_TIMEOUT_MS": str(GHOST_WAIT_MS),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
            **(extra_env or {}),
        }
    )
    cmd = [
        "timeout",
        "-k",
        "5",
        str(GHOST_WAIT_MS // 1000 + 60),
        str(nvim),
        "--headless",
        "--clean",
        "-n",
        "-c",
        f"luafile {DRIVER}",
    ]
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True)
    lsp_log = xdg / "state" / "nvim" / "lsp.log"
    log_tail = lsp_log.read_text(errors="replace")[-4000:] if lsp_log.exists() else "(no lsp.log)"
    where = f"nvim exit {proc.returncode}\nstderr:\n{proc.stderr[-2000:]}\nlsp.log:\n{log_tail}"
    if not result_file.exists():
        pytest.fail(f"nvim wrote no result\n{where}")
    result = json.loads(result_file.read_text())
    assert not result.get("error"), f"{result['error']}\nresult: {result}\n{where}"
    return result


@pytest.mark.parametrize("name", list(NVIMS))
def test_plugin_pure_parts(nvims, tmp_path, name):
    """Positions in every encoding, option validation, health helpers (tests/editors/nvim/unit.lua)."""
    env = {**os.environ, **{f"XDG_{d}_HOME": str(tmp_path / d) for d in ("STATE", "CACHE", "DATA", "CONFIG")}}
    proc = subprocess.run(
        ["timeout", "60", str(nvims[name]), "--clean", "-l", str(UNIT), str(PLUGIN)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok "), proc.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(NVIMS))
def test_ghost_text_from_the_model_is_accepted_with_tab(nvims, warm_backend, tmp_path, name):
    result = run_nvim(nvims[name], tmp_path, "accept", settings_for(warm_backend))
    assert result["path"] == NVIMS[name][1]
    ghost = result["ghost"]
    assert ghost.strip(), f"empty ghost text: {result}"
    # The buffer now holds exactly what was typed followed by the suggestion that was shown.
    assert "\n".join(result["after_accept"]) == TYPED[0] + "\n" + TYPED[1] + ghost
    stats = result["status"]["stats"]
    assert stats["accepted"] == 1, result["status"]
    # The driver runs with 'notermguicolors': the ghost text's highlight has a terminal colour (issue 16: it
    # had none and looked like code). Neovim's own inline completion draws with ComplHint, linked to ours.
    hl = result["ghost_highlight"]
    assert hl and hl["group"] in ("CopilotLsGhost", "ComplHint") and "ctermfg" in hl["resolved"], hl


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(NVIMS))
def test_accept_the_next_word_then_the_rest(nvims, warm_backend, tmp_path, name):
    result = run_nvim(nvims[name], tmp_path, "partial", settings_for(warm_backend))
    ghost, after_word = result["ghost"], result["after_word"]
    word = after_word[len(TYPED[1]) :]
    assert after_word.startswith(TYPED[1]) and word and ghost.startswith(word) and word != ghost, result
    assert result["rest"] == ghost[len(word) :]  # the rest is still offered
    assert "\n".join(result["after_accept"]) == TYPED[0] + "\n" + TYPED[1] + ghost
    stats = result["status"]["stats"]
    assert (stats["partially_accepted"], stats["accepted"]) == (1, 1), result["status"]


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(NVIMS))
def test_dismiss_leaves_the_buffer_unchanged(nvims, warm_backend, tmp_path, name):
    result = run_nvim(nvims[name], tmp_path, "dismiss", settings_for(warm_backend))
    assert result["ghost"].strip()
    assert result["after_dismiss"] == TYPED
    assert result["status"]["stats"]["rejected"] == 1, result["status"]
    assert result["status"]["stats"]["accepted"] == 0


@pytest.mark.e2e
def test_own_ghost_text_goes_on_cursor_move_and_mode_change(nvims, warm_backend, tmp_path):
    result = run_nvim(nvims["nvim0.11"], tmp_path, "move", settings_for(warm_backend))
    assert result["path"] == "ghost"
    assert result["ghost"].strip()
    assert result["visible_after_move"] is False  # <Left> hid it, and a move alone asks for nothing new
    assert result["ghost_again"].strip()  # a change asks again
    assert result["visible_after_esc"] is False
    assert result["after_esc"] == TYPED


@pytest.mark.e2e
def test_own_ghost_text_stays_while_its_first_character_is_typed(nvims, warm_backend, tmp_path):
    # On 0.12 with mode = "ghost": our own ghost text on the newer Neovim too.
    result = run_nvim(nvims["nvim0.12"], tmp_path, "typeahead", settings_for(warm_backend), mode="ghost")
    assert result["path"] == "ghost"
    ghost = result["ghost"]
    assert result["polls"] > 0 and result["hidden_polls"] == 0, result  # never blank while the server answers
    assert result["rest"] == ghost[1:]
    # the server's typed-ahead answer is the same suggestion, so Tab completes it exactly
    assert "\n".join(result["after_accept"]) == TYPED[0] + "\n" + TYPED[1] + ghost
    assert result["status"]["stats"]["accepted"] == 1, result["status"]


@pytest.mark.e2e
def test_own_ghost_text_never_shows_beside_the_popup_menu(nvims, warm_backend, tmp_path):
    result = run_nvim(nvims["nvim0.11"], tmp_path, "popup", settings_for(warm_backend))
    assert result["ghost"].strip()
    assert result["visible_with_popup"] is False
    assert result["after_popup"] == TYPED
    assert result["ghost_after_popup"].strip()  # back once the menu closed


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(NVIMS))
def test_cycle_through_candidates_and_accept_the_one_shown(nvims, warm_backend, tmp_path, name):
    settings = {**settings_for(warm_backend), "n": 3, "temperature": 0.8}
    for attempt in range(3):
        result = run_nvim(nvims[name], tmp_path / str(attempt), "cycle", settings)
        # Sampled candidates can all come out the same (the server then offers one item): that is the model's
        # luck, not the editor's, so sample again.
        if (result.get("count_after_next") or 0) >= 2:
            break
    first, second = result["ghost"], result["ghost_next"]
    assert first.strip() and second.strip(), result
    assert result["count_after_next"] >= 2, result  # (2/3) on Neovim's own, our count on ours
    assert second != first, f"<M-]> showed the same suggestion: {result}"
    assert result["ghost_back"] == first  # <M-[> goes back
    assert "\n".join(result["after_accept"]) == TYPED[0] + "\n" + TYPED[1] + first
    assert result["status"]["stats"]["accepted"] == 1, result["status"]


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(NVIMS))
def test_settings_change_reaches_the_running_server(nvims, warm_backend, tmp_path, name):
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_nvim(
        nvims[name],
        tmp_path,
        "settings",
        {**settings_for(dead), "autostart": False},
        extra_env={"COPILOT_LS_LIVE_URL": warm_backend},
    )
    assert result.get("ghost_dead") is None
    assert result["ghost"].strip(), result
    assert result["status"]["backend"]["url"] == warm_backend, result["status"]
    assert result["visible_when_off"] is False  # after :CopilotLs toggle


UNICODE = [("nvim0.12", "utf-16"), ("nvim0.11", "utf-16"), ("nvim0.11", "utf-8")]


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "encoding"), UNICODE, ids=[f"{n}-{e}" for n, e in UNICODE])
def test_accept_after_non_ascii_text_in_each_position_encoding(nvims, warm_backend, tmp_path, name, encoding):
    result = run_nvim(
        nvims[name],
        tmp_path,
        "unicode",
        settings_for(warm_backend),
        extra_env={"COPILOT_LS_ENCODING": encoding},
    )
    assert result["encoding"] == encoding
    typed = result["typed"]
    assert "\n".join(result["after_accept"]) == typed[0] + "\n" + typed[1] + result["ghost"]
    assert result["status"]["position_encoding"] == encoding
    assert result["status"]["stats"]["accepted"] == 1, result["status"]


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(NVIMS))
def test_dead_backend_leaves_editing_unharmed(nvims, tmp_path, name):
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_nvim(nvims[name], tmp_path, "dead_backend", {"backendUrl": dead, "autostart": False})
    assert result.get("ghost") is None
    # Typing goes on; with nothing shown, Tab does what Tab does (indent), not an accept.
    last = result["after_typing"][1]
    assert re.fullmatch(r'    assert common_prefix\("ab", "ac"\)(\t| +)== "a"', last), result["after_typing"]
    assert result["after_typing"][0] == TYPED[0]
    assert result["client_alive"], "the language server died"
    assert 'common_prefix("ab"' not in "\n".join(result["after_undo"])
    assert any("127.0.0.1" in m or "backend" in m for m in result["messages"]), result["messages"]


def run_nvim_in_tmux(
    nvim: Path, tmp_path: Path, scenario: str, settings: dict, columns: int = 80, lines: int = 24
) -> tuple[dict, list[str]]:
    """Run one scenario of e2e.lua in a real terminal (a tmux pane of `columns` x `lines`, no truecolor) and
    watch its screen. Returns the JSON result and every screen that showed a prompt that waits for a key
    ("Press ENTER", "-- More --"); each such prompt is answered with Enter so that the run can finish."""
    if shutil.which("tmux") is None:
        pytest.fail("this test needs tmux (scripts/setup-neovim-e2e.sh installs it)")
    ws = tmp_path / "ws"
    ws.mkdir(parents=True)
    (ws / "lib.py").write_text(LIB)
    (ws / "test_lib.py").write_text(TEST_LIB)
    result_file = tmp_path / "result.json"
    env = {f"XDG_{d}_HOME": str(tmp_path / "xdg" / d.lower()) for d in ("STATE", "CACHE", "DATA", "CONFIG")}
    for d in env.values():
        Path(d).mkdir(parents=True)
    env.update(
        {
            "COPILOT_LS_PLUGIN": str(PLUGIN),
            "COPILOT_LS_CMD": json.dumps(server_command()),
            "COPILOT_LS_SETTINGS": json.dumps(settings),
            "COPILOT_LS_MODE": "auto",
            "COPILOT_LS_SCENARIO": scenario,
            "COPILOT_LS_FILE": "test_lib.py",
            "COPILOT_LS_RESULT": str(result_file),
            "COPILOT_LS_TIMEOUT_MS": "60000",
            "PYTHONPATH": str(REPO),
            "TERM": "screen",
        }
    )
    script = tmp_path / "run.sh"
    script.write_text(
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        + "unset COLORTERM\n"
        + f"cd {shlex.quote(str(ws))}\n"
        + f"exec timeout -k 5 120 {shlex.quote(str(nvim))} --clean -n -c 'luafile {DRIVER}'\n"
    )
    sock = f"copilot-ls-e2e-{os.getpid()}-{free_port()}"
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    subprocess.run(
        [
            *tmux,
            "new-session",
            "-d",
            "-s",
            "e2e",
            "-x",
            str(columns),
            "-y",
            str(lines),
            f"bash {shlex.quote(str(script))}",
        ],
        check=True,
        timeout=30,
    )
    prompts: list[str] = []
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            shot = subprocess.run([*tmux, "capture-pane", "-p", "-t", "e2e"], capture_output=True, text=True)
            if shot.returncode != 0:
                break  # nvim quit, and the session with it
            if "Press ENTER" in shot.stdout or "-- More --" in shot.stdout:
                prompts.append(shot.stdout)
                subprocess.run([*tmux, "send-keys", "-t", "e2e", "Enter"], timeout=10)
            time.sleep(0.1)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30)
    if not result_file.exists():
        pytest.fail(f"nvim wrote no result; prompts seen: {prompts}")
    return json.loads(result_file.read_text()), prompts


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(NVIMS))
def test_dead_backend_never_stops_a_narrow_terminal_with_a_prompt(nvims, tmp_path, name):
    """Issue 16: with the backend down, opening a file in an 80-column Neovim stopped on "Press ENTER" (the
    server's message took two lines). Now each message is one line that fits, shown once, and the ghost text's
    highlight has a terminal colour with 'notermguicolors'."""
    dead = f"http://127.0.0.1:{free_port()}"
    result, prompts = run_nvim_in_tmux(
        nvims[name], tmp_path, "outage", {"backendUrl": dead, "autostart": False}
    )
    assert not result.get("error"), result
    assert not prompts, "a prompt waited for a key:\n" + "\n----\n".join(prompts)
    assert result["columns"] == 80 and result["termguicolors"] is False, result
    assert not ({"r", "rm"} & set(result["modes"])), result["modes"]  # never in a hit-enter / more prompt
    ours = [m for m in result["history"] if m.startswith("copilot-ls:")]
    assert ours and any("backend" in m for m in ours), result["history"]  # the outage was said ...
    assert all(len(m) < 80 for m in ours), ours  # ... on one line that fits
    assert len([m for m in ours if "backend" in m]) == 1, ours  # ... once
    assert "ctermfg" in result["ghost_hl"], result["ghost_hl"]
    if NVIMS[name][1] == "native":
        assert "ctermfg" in result["complhint_hl"], result["complhint_hl"]


@pytest.mark.e2e
def test_checkhealth_suggests_the_backend_command_for_the_configured_port(nvims, tmp_path):
    port = free_port()
    result = run_nvim(nvims["nvim0.12"], tmp_path, "health", {"backendUrl": f"http://127.0.0.1:{port}"})
    text = "\n".join(result["health"])
    assert f"copilot-backend serve --model default --port {port}" in text, text


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(NVIMS))
def test_checkhealth_reports_server_backend_and_path(nvims, warm_backend, tmp_path, name):
    result = run_nvim(nvims[name], tmp_path, "health", settings_for(warm_backend))
    text = "\n".join(result["health"])
    assert "ERROR" not in text, text
    assert "starts and answers initialize" in text and "offers inline completion" in text, text
    assert f"the backend answers at {warm_backend}" in text, text
    if NVIMS[name][1] == "native":
        assert "using Neovim's own inline completion" in text, text
    else:
        assert "using copilot-ls ghost text" in text, text


@pytest.mark.e2e
def test_checkhealth_names_a_dead_backend_and_a_missing_server(nvims, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_nvim(
        nvims["nvim0.11"],
        tmp_path,
        "health",
        {"backendUrl": dead},
        extra_env={"COPILOT_LS_CMD": json.dumps(["/nonexistent/copilot-ls"])},
    )
    text = "\n".join(result["health"])
    assert "server command not found: /nonexistent/copilot-ls" in text, text
    assert f"the backend does not answer at {dead}" in text, text

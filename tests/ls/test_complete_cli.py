"""`copilot-ls complete PATH:LINE:COL` as a user runs it (a subprocess): exit codes, messages, --json,
--explain, stdin; the end-to-end cases against the real backend with the default model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from lsp_testing import COMMON_PREFIX_BUFFER, REPO, FakeBackend, free_port


def complete(*args: str, stdin: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "copilot_ls.cli", "complete", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def buffer(tmp_path):
    path = tmp_path / "common_prefix.py"
    path.write_text(COMMON_PREFIX_BUFFER)
    return path


LAST_LINE = COMMON_PREFIX_BUFFER.count("\n") + 1  # 1-based
END_COL = len(COMMON_PREFIX_BUFFER.split("\n")[-1]) + 1  # 1-based: just after the last character


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{missing}:1:1", "no such file"),
        ("{path}:99:1", "line 99 is past the end"),
        ("{path}:1:99", "column 99 is past the end of line 1"),
        ("{path}:0:1", "1-based"),
        ("{path}:1", "PATH:LINE:COL"),
        ("{path}:x:1", "must be integers"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(buffer, tmp_path, spec, message):
    r = complete(spec.format(path=buffer, missing=tmp_path / "nope.py"), "--backend", "http://127.0.0.1:9")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and r.stdout == ""


def test_directory_exits_2_saying_so(tmp_path):
    r = complete(f"{tmp_path}:1:1", "--backend", "http://127.0.0.1:9")
    assert r.returncode == 2 and "is a directory" in r.stderr, r.stderr


def test_bad_option_exits_2(buffer):
    r = complete(f"{buffer}:1:1", "--n", "0", "--backend", "http://127.0.0.1:9")
    assert r.returncode == 2 and "'n'" in r.stderr


def test_unreachable_backend_exits_1(buffer):
    r = complete(f"{buffer}:{LAST_LINE}:{END_COL}", "--backend", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "cannot reach the backend" in r.stderr


def test_no_completion_exits_1():
    with FakeBackend(reply="   \n") as fake:  # whitespace only: post-processing drops it
        r = complete("-:1:7", "--backend", fake.url, "--language", "python", stdin="x = f(\n")
    assert r.returncode == 1 and "no completion" in r.stderr
    assert fake.requests and fake.requests[0]["prompt"].endswith("x = f(")


def test_column_counts_characters_not_bytes():
    # column 14 is the end of this 13-character line (17 UTF-8 bytes, 14 UTF-16 units)
    with FakeBackend(reply="1)") as fake:
        r = complete("-:1:14", "--backend", fake.url, "--json", stdin='s = "😀中" + f(\n', timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["items"][0]["start"] == {"line": 1, "column": 14}
    assert out["items"][0]["text"] == "1)"
    assert fake.requests[0]["prompt"].endswith('s = "😀中" + f(')
    r = complete("-:1:15", "--backend", fake.url, stdin='s = "😀中" + f(\n', timeout=120)
    assert r.returncode == 2 and "the end is 14" in r.stderr


def test_crlf_file_is_read_as_the_editor_sends_it(tmp_path):
    """The file's CRLF line breaks reach the pipeline (text-mode reads made them LF): the suggestion gets the
    document's CRLF, as in the editor."""
    path = tmp_path / "m.py"
    path.write_bytes(b"def add(a, b):\r\n    return a + b\r\n\r\ndef mul(a, b):\r\n")
    with FakeBackend(reply="\n    x = a * b\n    return x") as fake:
        r = complete(f"{path}:4:15", "--backend", fake.url, "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["items"][0]["text"] == "\r\n    x = a * b\r\n    return x"


def test_explain_sources_have_1_based_lines(tmp_path):
    """Like LINE:COL and the items' positions, the lines of --explain's sources are 1-based (were 0-based)."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "lib.py").write_text("\n\ndef helper(x):\n    return x + 1\n")
    path = tmp_path / "use.py"
    path.write_text("from lib import helper\n\nx = 1\ny = helper(")
    with FakeBackend(reply="x)") as fake:
        r = complete(f"{path}:4:12", "--backend", fake.url, "--json", "--explain", timeout=120)
    assert r.returncode == 0, r.stderr
    sources = {s["kind"]: s for s in json.loads(r.stdout)["explain"]["sources"]}
    assert (sources["prefix"]["start_line"], sources["prefix"]["end_line"]) == (1, 4)
    assert (sources["definition"]["start_line"], sources["definition"]["end_line"]) == (3, 4)


def test_closed_stdout_is_no_traceback(buffer):
    """`copilot-ls complete ... --explain | head -1`: the reader leaves early; that printed a BrokenPipeError
    traceback."""
    with FakeBackend(reply="x)") as fake:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "copilot_ls.cli",
                "complete",
                f"{buffer}:{LAST_LINE}:{END_COL}",
                "--backend",
                fake.url,
                "--explain",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        proc.stdout.close()  # before anything is written
        err = proc.stderr.read()
        proc.wait(timeout=120)
    assert fake.requests and "Traceback" not in err and "BrokenPipe" not in err, err


def test_utf8_bom_is_not_a_character_of_line_1(tmp_path):
    """A file saved with a UTF-8 BOM: columns of line 1 counted the BOM (editors do not show it) and the prompt
    carried it."""
    path = tmp_path / "bom.py"
    path.write_bytes(b"\xef\xbb\xbfx = f(")
    with FakeBackend(reply="1)") as fake:
        r = complete(f"{path}:1:7", "--backend", fake.url, "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    assert fake.requests[0]["prompt"].endswith("\nx = f(") and "\ufeff" not in fake.requests[0]["prompt"]


def test_stdin_that_is_not_utf8_exits_2():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "copilot_ls.cli",
            "complete",
            "-:2:5",
            "--language",
            "python",
            "--backend",
            "http://127.0.0.1:9",
        ],
        cwd=REPO,
        input=b'x = "caf\xe9"\ny = ',
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 2 and b"stdin is not UTF-8 text" in r.stderr, r.stderr


@pytest.mark.e2e
def test_common_prefix_completion(buffer, backend_url):
    r = complete(f"{buffer}:{LAST_LINE}:{END_COL}", "--backend", backend_url, "--max-tokens", "24")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()  # what the editor would show
    assert "\n" not in r.stdout.strip()  # a single line: the cursor is inside a call


@pytest.mark.e2e
def test_json_explain_and_stdin(backend_url):
    r = complete(
        f"-:{LAST_LINE}:{END_COL}",
        "--backend",
        backend_url,
        "--json",
        "--explain",
        "--n",
        "2",
        "--max-tokens",
        "16",
        "--language",
        "python",
        stdin=COMMON_PREFIX_BUFFER,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["line"], out["column"], out["language"]) == (LAST_LINE, END_COL, "python")
    assert 1 <= len(out["items"]) <= 2
    for item in out["items"]:
        assert item["text"] and item["start"] == {"line": LAST_LINE, "column": END_COL}
        assert isinstance(item["mean_logprob"], float)
    ex = out["explain"]
    assert ex["prompt"].endswith("    assert common_prefix(")  # the exact prompt sent
    assert any(s["kind"] == "prefix" for s in ex["sources"])
    assert ex["multiline"] is False and ex["raw"]


@pytest.mark.e2e
def test_explain_human_output(buffer, backend_url):
    r = complete(
        f"{buffer}:{LAST_LINE}:{END_COL}", "--backend", backend_url, "--explain", "--max-tokens", "16"
    )
    assert r.returncode == 0, r.stderr
    assert "=== prompt" in r.stdout and "=== sources ===" in r.stdout and "=== completion ===" in r.stdout
    assert "def test_common_prefix():" in r.stdout

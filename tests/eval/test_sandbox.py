"""The execution sandbox contains hostile programs and reports them as failures.

Every attack targets only canaries this test made itself (a world-writable temp dir, a loopback socket of
its own), never anything else of the machine's.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest

from copilot_ls.evaluation import sandbox
from copilot_ls.evaluation.sandbox import Limits, run_python

FAST = Limits(timeout_s=4, cpu_s=4)


def sandbox_processes() -> list[int]:
    """pids of processes owned by any sandbox uid (there must be none once a run returned)."""
    uids = range(sandbox.UID_BASE, sandbox.UID_BASE + sandbox.UID_SLOTS) if os.geteuid() == 0 else ()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid in uids:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                pass
    return pids


@pytest.fixture
def canary():
    """A directory outside the sandbox's temp dir that anybody could write to: only the sandbox stops it."""
    path = Path(tempfile.mkdtemp(prefix="copilot-ls-canary-"))
    (path / "keep.txt").write_text("canary")
    os.chmod(path, 0o777)
    os.chmod(path / "keep.txt", 0o666)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_correct_program_passes_and_wrong_one_fails():
    ok = run_python("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('ok')\n")
    assert ok.passed and ok.status == "passed" and ok.output == "ok\n"
    bad = run_python("def f(x):\n    return x\nassert f(1) == 2, 'wrong'\n")
    assert bad.status == "failed" and not bad.passed
    assert bad.summary() == "failed: AssertionError: wrong"


def test_program_may_write_inside_its_own_temp_dir():
    res = run_python(
        "import os\nopen('out.txt', 'w').write('x' * 1000)\nassert os.path.getsize('out.txt') == 1000\n"
    )
    assert res.passed, res.output


def test_fork_bomb_is_contained():
    start = time.monotonic()
    res = run_python(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        limits=FAST,
    )
    assert not res.passed and res.status in ("timeout", "failed")
    assert time.monotonic() - start < FAST.timeout_s + 5
    assert sandbox_processes() == []


def test_children_that_escape_the_process_group_are_killed_too():
    res = run_python(
        "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        os.setsid()\n"
        "        time.sleep(600)\nraise SystemExit(3)\n",
        limits=FAST,
    )
    assert res.status == "failed" and res.returncode == 3
    assert sandbox_processes() == []


def test_memory_bomb_is_contained():
    res = run_python(
        "x = []\nwhile True:\n    x.append(bytearray(64 * 2**20))\n",
        limits=Limits(timeout_s=20, cpu_s=20, memory_bytes=512 << 20),
    )
    assert res.status == "failed" and "MemoryError" in res.summary()


def test_infinite_loop_is_killed_at_the_wall_clock_timeout():
    start = time.monotonic()
    res = run_python("while True:\n    pass\n", limits=Limits(timeout_s=2, cpu_s=30))
    assert res.status == "timeout" and not res.passed and res.returncode is None
    assert 2 <= time.monotonic() - start < 6
    assert sandbox_processes() == []


def test_sleeping_program_is_killed_at_the_wall_clock_timeout():
    res = run_python("import time\ntime.sleep(600)\n", limits=Limits(timeout_s=2))
    assert res.status == "timeout"


def test_ten_gigabyte_file_is_stopped():
    res = run_python(
        "chunk = bytes(2**20)\nwith open('big', 'wb') as f:\n    for _ in range(10 * 1024):\n"
        "        f.write(chunk)\n",
        limits=FAST,
    )
    assert res.status == "failed" and "File too large" in res.output
    sparse = run_python("with open('sparse', 'wb') as f:\n    f.truncate(10 * 2**30)\n", limits=FAST)
    assert sparse.status == "failed"


def test_cannot_delete_or_write_a_directory_outside_its_temp_dir(canary):
    res = run_python(f"import shutil\nshutil.rmtree({str(canary)!r})\n", limits=FAST)
    assert res.status == "failed"
    res = run_python(f"open({str(canary / 'new.txt')!r}, 'w').write('x')\n", limits=FAST)
    assert res.status == "failed"
    res = run_python(f"open({str(canary / 'keep.txt')!r}, 'w').write('overwritten')\n", limits=FAST)
    assert res.status == "failed"
    assert sorted(p.name for p in canary.iterdir()) == ["keep.txt"]
    assert (canary / "keep.txt").read_text() == "canary"
    assert stat.S_IMODE(canary.stat().st_mode) == 0o777


def test_cannot_reach_the_network():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        res = run_python(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n", limits=FAST
        )
    assert res.status == "failed"


def test_environment_has_no_proxies_or_credentials(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-secret")
    res = run_python(
        "import os\nprint(sorted(os.environ))\n"
        "assert not any('PROXY' in k.upper() or 'SECRET' in k.upper() for k in os.environ)\n"
    )
    assert res.passed, res.output
    assert "canary-secret" not in res.output


@pytest.mark.skipif(os.geteuid() != 0, reason="the dedicated uid is used when the harness runs as root")
def test_runs_as_a_dedicated_unprivileged_uid():
    res = run_python("import os\nprint(os.getuid(), os.geteuid(), os.getgroups())\n")
    uid, euid = map(int, res.output.split()[:2])
    assert uid == euid and sandbox.UID_BASE <= uid < sandbox.UID_BASE + sandbox.UID_SLOTS


@pytest.mark.skipif(os.geteuid() != 0, reason="finds the program by its dedicated uid")
def test_program_dies_at_its_deadline_even_when_the_harness_is_killed():
    import subprocess
    import sys

    code = (
        "from copilot_ls.evaluation.sandbox import Limits, run_python\n"
        "run_python('import time\\ntime.sleep(600)\\n', limits=Limits(timeout_s=1, cpu_s=1), "
        f"interpreter={sandbox.default_interpreter()!r})\n"
    )
    harness = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 30
    while not sandbox_processes():  # the sleeper started
        assert time.monotonic() < deadline and harness.poll() is None
        time.sleep(0.05)
    harness.kill()
    harness.wait()
    deadline = time.monotonic() + 20  # launcher's alarm: timeout + 5 s
    while sandbox_processes():
        assert time.monotonic() < deadline, "sandboxed program outlived its deadline"
        time.sleep(0.2)


def test_sandbox_failures_are_errors_and_cannot_be_spoofed_by_the_program():
    spoof = run_python("import sys\nprint('copilot-ls sandbox: cannot start the program')\nsys.exit(125)\n")
    assert spoof.status == "failed" and spoof.returncode == 125  # a verdict on the program, not an error
    with pytest.raises(sandbox.SandboxError, match="cannot start the program.*No such file"):
        run_python("print(1)\n", interpreter="/nonexistent/python3")


@pytest.mark.skipif(os.geteuid() != 0, reason="leftovers are found through the uid lock")
def test_work_dirs_left_by_a_killed_harness_are_removed_by_the_next_run_of_that_uid():
    uids = range(sandbox.UID_BASE, sandbox.UID_BASE + sandbox.UID_SLOTS)
    stale = {uid: Path(tempfile.gettempdir(), f"copilot-ls-sbx-{uid}-stale-test") for uid in uids}
    try:
        for path in stale.values():
            path.mkdir()
            Path(f"{path}.out").write_text("old output")
        res = run_python("import os\nprint(os.getuid())\n")
        uid = int(res.output)
        assert not stale[uid].exists() and not Path(f"{stale[uid]}.out").exists()
    finally:
        for path in stale.values():
            shutil.rmtree(path, ignore_errors=True)
            Path(f"{path}.out").unlink(missing_ok=True)

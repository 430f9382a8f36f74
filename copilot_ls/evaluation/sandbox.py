"""Run untrusted, model-written Python in a sandbox and report passed / failed / timeout.

One call = one short-lived process tree::

    harness (this module, any thread)
      └─ launcher   `python -I -S sandbox.py --launch CONFIG`, its own session (process group)
           │        unshare(mount, net, pid, ipc, uts [+ user when not root]); whole tree read-only;
           │        only the temp dir is bind-mounted writable again
           └─ reaper   pid 1 of the new pid namespace; when it exits the kernel kills everything left in it
                └─ program   rlimits (CPU, address space, file size, processes, files, no core),
                             a dedicated unprivileged uid (62000 + slot) when we are root, no_new_privs,
                             an environment built from scratch (no proxies, no credentials), cwd = temp dir

The harness waits with a wall-clock timeout, then sends SIGTERM to the launcher, which SIGKILLs pid 1 of the
namespace and waits: the kernel kills every process in it, even those that called setsid(). Then the harness
SIGKILLs the launcher's whole process group anyway (and pid 1 dies with the launcher via PR_SET_PDEATHSIG).

Why a dedicated uid and not `nobody`: RLIMIT_NPROC counts the processes of the *real uid*, so a fork bomb run
as root is not stopped by it, and `nobody` may already own processes (or, on this machine, the disk's reserved
blocks). Each concurrent sandbox takes its own uid from a small range (a file lock per uid makes this safe
across processes), so one sample's fork bomb cannot starve its neighbours. See docs/evaluation.md.

This file imports only the standard library: the launcher runs it as a script with `-I -S`.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

UID_BASE = int(os.environ.get("COPILOT_LS_SANDBOX_UID_BASE", "62000"))
UID_SLOTS = 64
LOCK_DIR = Path(tempfile.gettempdir())
OUTPUT_TAIL = 2000

# Linux constants (include/uapi/linux/sched.h, mount.h, prctl.h); the syscall number of mount_setattr is the
# same on every architecture (442, added in 5.12).
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE = 442, -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


class SandboxError(RuntimeError):
    """The sandbox itself cannot run here (not a verdict on the code under test)."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock, then the whole process group is killed
    cpu_s: int = 10  # RLIMIT_CPU
    memory_bytes: int = 1 << 30  # RLIMIT_AS (address space)
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE (largest file it may write)
    nproc: int = 32  # RLIMIT_NPROC (processes + threads of its uid)
    nofile: int = 64  # RLIMIT_NOFILE


@dataclass(frozen=True)
class ExecResult:
    status: str  # "passed" | "failed" | "timeout"
    returncode: int | None  # exit code; 128 + N when killed by signal N; None on timeout
    output: str  # the last OUTPUT_TAIL characters of stdout + stderr
    elapsed_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def summary(self) -> str:
        """One line for samples.jsonl: 'passed', 'timeout', or 'failed: <last line of the error>'."""
        if self.status != "failed":
            return self.status
        lines = [ln for ln in self.output.strip().splitlines() if ln.strip()]
        if lines:
            return f"failed: {lines[-1][:200]}"
        if self.returncode and self.returncode > 128:
            try:
                return f"failed: killed by {signal.Signals(self.returncode - 128).name}"
            except ValueError:
                pass
        return f"failed: exit code {self.returncode}"


def sandbox_env(workdir: str) -> dict[str, str]:
    """The program's whole environment: nothing inherited (no proxies, tokens, cloud credentials)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }


def run_python(source: str, *, limits: Limits = Limits(), interpreter: str | None = None) -> ExecResult:
    """Run `source` as a Python program in the sandbox; exit code 0 within the limits = passed."""
    interp = interpreter or default_interpreter()
    with _uid_slot() as uid:
        return _run(source, uid=uid, limits=limits, interpreter=interp)


# ---------------------------------------------------------------------------------------------------------
# harness side


class _uid_slot:
    """Take a free uid from [UID_BASE, UID_BASE + UID_SLOTS) for this run (root only; else our own uid).

    A flock on a per-uid file makes the choice exclusive across threads and processes on this machine."""

    def __enter__(self) -> int:
        self._fd = None
        if os.geteuid() != 0:
            return os.getuid()
        for uid in range(UID_BASE, UID_BASE + UID_SLOTS):
            if _uid_is_named(uid):
                continue  # a real account: never borrow it
            fd = os.open(LOCK_DIR / f"copilot-ls-sandbox-{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._fd = fd
            _remove_leftovers(uid)
            return uid
        raise SandboxError(f"all {UID_SLOTS} sandbox uids from {UID_BASE} are busy")

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock


def _remove_leftovers(uid: int) -> None:
    """Work dirs of this uid that a killed harness left behind: stale, since we now hold the uid's lock."""
    for path in LOCK_DIR.glob(f"copilot-ls-sbx-{uid}-*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _uid_is_named(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _run(source: str, *, uid: int, limits: Limits, interpreter: str) -> ExecResult:
    workdir = tempfile.mkdtemp(prefix=f"copilot-ls-sbx-{uid}-", dir=LOCK_DIR)
    try:
        os.chmod(workdir, 0o700)
        program = Path(workdir, "program.py")
        program.write_text(source, encoding="utf-8")
        os.chown(workdir, uid, uid if os.geteuid() == 0 else os.getgid())
        config = {
            "workdir": workdir,
            "uid": uid,
            "interpreter": interpreter,
            "program": str(program),
            "limits": asdict(limits),
            "env": sandbox_env(workdir),
        }
        status_r, status_w = os.pipe()  # the launcher's own errors: a channel the program cannot write to
        config["status_fd"] = status_w
        argv = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), "--launch", json.dumps(config)]
        out_path = Path(workdir + ".out")  # outside the writable dir: it is our fd, capped by RLIMIT_FSIZE
        with open(out_path, "wb") as out:
            start = time.monotonic()
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=sandbox_env(workdir),
                    cwd=workdir,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=(status_w,),
                )
            finally:
                os.close(status_w)
            timed_out = False
            try:
                rc: int | None = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out, rc = True, None
                proc.send_signal(signal.SIGTERM)  # the launcher kills pid 1 and waits until the ns is empty
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            finally:
                _kill_group(proc.pid)  # also after a normal exit: strays that kept the group alive
                proc.wait()
            elapsed = time.monotonic() - start
        launcher_error = _read_all(status_r)
        output = _tail(out_path)
        out_path.unlink(missing_ok=True)
        if rc is not None and rc < 0:
            rc = 128 - rc
        if launcher_error:
            raise SandboxError(f"copilot-ls sandbox: {launcher_error}")
        status = "timeout" if timed_out else ("passed" if rc == 0 else "failed")
        return ExecResult(status=status, returncode=rc, output=output, elapsed_s=round(elapsed, 3))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _read_all(fd: int) -> str:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 65536).decode("utf-8", "replace").strip()
    except BlockingIOError:
        return ""
    finally:
        os.close(fd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4 * OUTPUT_TAIL))
        return f.read().decode("utf-8", "replace")[-OUTPUT_TAIL:]


_interp_lock = threading.Lock()
_interp: str | None = None


def default_interpreter() -> str:
    """The first Python the sandbox uid can actually run (ours may live under a private home dir)."""
    global _interp
    with _interp_lock:
        if _interp is None:
            candidates = [
                sys.executable,
                getattr(sys, "_base_executable", ""),
                "/usr/bin/python3",
                shutil.which("python3") or "",
            ]
            tried = []
            for cand in dict.fromkeys(c for c in candidates if c):
                try:
                    with _uid_slot() as uid:
                        res = _run(
                            "import sys; assert sys.version_info >= (3, 8)",
                            uid=uid,
                            limits=Limits(timeout_s=30),
                            interpreter=cand,
                        )
                except SandboxError as exc:
                    tried.append(f"{cand}: {exc}")
                    continue
                if res.passed:
                    _interp = cand
                    break
                tried.append(f"{cand}: {res.summary()}")
            else:
                raise SandboxError("no Python interpreter runs inside the sandbox: " + "; ".join(tried))
        return _interp


# ---------------------------------------------------------------------------------------------------------
# launcher side (runs as `python -I -S sandbox.py --launch CONFIG`)

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enc(s: str | None) -> bytes | None:
    return s.encode() if s is not None else None


def _mount(src: str | None, target: str, fstype: str | None, flags: int) -> None:
    _check(_libc.mount(_enc(src), _enc(target), _enc(fstype), ctypes.c_ulong(flags), None), f"mount {target}")


def _make_tree_read_only() -> None:
    """mount_setattr(/, AT_RECURSIVE, rdonly|nosuid): every mount in our namespace, submounts included."""

    class MountAttr(ctypes.Structure):
        _fields_ = [
            ("attr_set", ctypes.c_uint64),
            ("attr_clr", ctypes.c_uint64),
            ("propagation", ctypes.c_uint64),
            ("userns_fd", ctypes.c_uint64),
        ]

    attr = MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    ret = _libc.syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_int(AT_FDCWD),
        b"/",
        ctypes.c_uint(AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(ret, "mount_setattr / read-only (needs Linux >= 5.12)")


def _isolate(cfg: dict) -> None:
    """New namespaces; the whole file tree read-only except the work dir; no network at all."""
    workdir, root = cfg["workdir"], os.geteuid() == 0
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if not root:
        uid, gid = os.getuid(), os.getgid()
        _check(_libc.unshare(ctypes.c_int(flags | CLONE_NEWUSER)), "unshare (user namespaces)")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")  # same uid inside: no root in the ns either
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    else:
        _check(_libc.unshare(ctypes.c_int(flags)), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _make_tree_read_only()
    _mount(workdir, workdir, None, MS_BIND)
    _mount(None, workdir, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV)  # writable again


def _exec_program(cfg: dict) -> None:
    lim = cfg["limits"]
    for res, value in (
        (resource.RLIMIT_CPU, lim["cpu_s"]),
        (resource.RLIMIT_AS, lim["memory_bytes"]),
        (resource.RLIMIT_FSIZE, lim["file_bytes"]),
        (resource.RLIMIT_NPROC, lim["nproc"]),
        (resource.RLIMIT_NOFILE, lim["nofile"]),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(res, (value, value))
    os.chdir(cfg["workdir"])
    os.umask(0o077)
    if os.geteuid() == 0:
        uid = cfg["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
    interp = cfg["interpreter"]
    os.execve(interp, [interp, "-I", cfg["program"]], cfg["env"])


def _wait_status(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _report(cfg: dict, message: str) -> None:
    os.write(cfg["status_fd"], message.encode() + b"\n")


def launch(cfg: dict) -> int:
    os.set_inheritable(cfg["status_fd"], False)  # closed when the program is exec'd
    try:
        _isolate(cfg)
    except OSError as exc:
        _report(cfg, f"cannot isolate the program: {exc}")
        return 125
    reaper = os.fork()
    if reaper == 0:  # pid 1 of the new pid namespace
        try:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            child = os.fork()
            if child == 0:
                try:
                    _exec_program(cfg)
                except OSError as exc:
                    _report(cfg, f"cannot start the program: {exc}")
                    os._exit(125)
            os._exit(_wait_status(child))
        finally:
            os._exit(125)
    # On SIGTERM from the harness: kill pid 1; the kernel then kills every process of the namespace, and
    # our waitpid returns only once they are all gone. The alarm does the same if the harness itself died.
    for sig in (signal.SIGTERM, signal.SIGALRM):
        signal.signal(sig, lambda *_: os.kill(reaper, signal.SIGKILL))
    signal.alarm(int(cfg["limits"]["timeout_s"]) + 5)
    return _wait_status(reaper)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--launch":
    sys.exit(launch(json.loads(sys.argv[2])))

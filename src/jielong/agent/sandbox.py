"""The agent's Python sandbox: run a piece of code in a separate, limited Python process.

    out = run_python("print(sum(range(10)))")   # Ran(stdout="45\\n", returncode=0, …)

What it does, layer by layer (each one a kernel mechanism, except where it says not):
- a child process `python -I` (isolated mode: no user site-packages, no PYTHON* variables,
  the script's folder not on sys.path) with an empty environment, started in a fresh
  scratch folder (its working directory, removed afterwards);
- resource limits (setrlimit, before the child starts): CPU seconds (SIGXCPU then
  SIGKILL), address space (a memory bomb gets MemoryError), the size of any file it writes
  (stdout and stderr go to files, so they are bounded too), and the number of processes
  (RLIMIT_NPROC: Linux counts all of the user's processes against it, so the limit is set
  to those running now plus `processes`; it does nothing for root, whom the kernel exempts);
- a wall-clock timeout, after which the child and everything it started are killed;
- no network: with util-linux's `unshare` and user namespaces allowed (most Linux systems),
  the child runs in a new network namespace (only a loopback device, down) and a new PID
  namespace, so killing its first process kills every process it forked, even ones that
  left its session. Where `unshare` cannot run (macOS, a container that forbids
  namespaces) the child's `socket` module is replaced by one that refuses: that stops
  ordinary code, NOT code that means to get out (ctypes, a subprocess) — it is not a
  security boundary, and `Ran.network` says which of the two was used.

What it does not protect against (the README says so too): the child runs as your user
and can read, and write, every file your user can (absolute paths, your home folder); it
can use the CPU and memory up to its limits; without namespaces it can reach the network
through ctypes or another program; RLIMIT_NPROC does not bind root, so as root a fork bomb
is stopped only by the PID namespace (when there is one) and the timeout; kernel bugs. For
untrusted code use a container or a VM (gVisor, Firecracker, a throwaway cloud sandbox).
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MAX_OUTPUT = 20_000  # characters of stdout and of stderr kept for the model

# Run before the user's code when no network namespace is available: the socket layer
# refuses. A guard against accidents, not a boundary (ctypes reaches libc directly).
NO_SOCKETS = """\
import socket as _s, _socket as _ss
class _NoNetwork(_s.socket):
    def __init__(self, *a, **k):
        raise OSError("network access is disabled in the jielong sandbox")
_s.socket = _ss.socket = _NoNetwork
for _name in ("create_connection", "socketpair", "fromfd", "getaddrinfo"):
    setattr(_s, _name, lambda *a, **k: (_ for _ in ()).throw(
        OSError("network access is disabled in the jielong sandbox")))
del _s, _ss, _NoNetwork, _name
"""
RUN_MAIN = ("exec(compile(open('main.py', encoding='utf-8').read(), 'main.py', 'exec'), "
            "{'__name__': '__main__'})\n")


@dataclass
class Limits:
    timeout: float = 10.0  # seconds of wall-clock time
    cpu: int = 5  # seconds of CPU time
    memory_mb: int = 512  # address space
    file_mb: int = 16  # the largest file it may write (stdout and stderr included)
    processes: int = 32  # processes it may start (RLIMIT_NPROC, where the kernel applies it)


@dataclass
class Ran:
    stdout: str
    stderr: str
    returncode: int | None
    stopped: str | None  # why it was stopped: "timeout", "cpu", "memory", "file size", None
    network: str  # "namespace" (the kernel's) or "socket guard" (not a security boundary)
    seconds: float

    def report(self) -> str:
        """What the model reads: the output, and a line on how it ended when not cleanly."""
        parts = [self.stdout.rstrip("\n")] if self.stdout.strip() else []
        if self.stderr.strip():
            parts.append("stderr:\n" + self.stderr.rstrip("\n"))
        if self.stopped:
            parts.append(f"[stopped: {self.stopped} limit]")
        elif self.returncode:
            parts.append(f"[exit code {self.returncode}]")
        return "\n".join(parts) or "(no output)"


@functools.cache
def namespaces() -> list[str] | None:
    """The `unshare` command line that gives a new network and PID namespace, when it works
    here (tried once); None when it does not."""
    exe = shutil.which("unshare")
    if exe is None or not sys.platform.startswith("linux"):
        return None
    cmd = [exe, "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"]
    try:
        ok = subprocess.run([*cmd, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return None
    return cmd if ok else None


def own_processes() -> int:
    """How many processes this user runs now (RLIMIT_NPROC counts them all)."""
    uid, n = os.getuid(), 0
    for p in Path("/proc").glob("[0-9]*"):
        try:
            n += p.stat().st_uid == uid
        except OSError:
            pass
    return n


def limiter(limits: Limits):
    """The function the child runs before it starts Python: its resource limits."""
    nproc = own_processes() + limits.processes if Path("/proc").is_dir() else limits.processes
    mb = 1 << 20

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu, limits.cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * mb, limits.file_mb * mb))
        if hasattr(resource, "RLIMIT_NPROC"):
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return limit


def run_python(code: str, limits: Limits | None = None) -> Ran:
    """Run `code` as a script (`main.py` in a fresh scratch folder) under `limits`."""
    limits = limits or Limits()
    wrap = namespaces()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="jielong-sandbox-") as scratch, \
            tempfile.TemporaryDirectory(prefix="jielong-sandbox-out-") as out:
        Path(scratch, "main.py").write_text(code, encoding="utf-8")
        prelude = RUN_MAIN if wrap else NO_SOCKETS + RUN_MAIN
        cmd = [*(wrap or []), sys.executable, "-I", "-c", prelude]
        with open(Path(out, "stdout"), "wb") as so, open(Path(out, "stderr"), "wb") as se:
            child = subprocess.Popen(cmd, cwd=scratch, env={}, stdin=subprocess.DEVNULL,
                                     stdout=so, stderr=se, preexec_fn=limiter(limits),
                                     start_new_session=True)
            status, cpu, timed_out = wait(child, start + limits.timeout)
        stdout, stderr = (read_head(Path(out, name)) for name in ("stdout", "stderr"))
    stopped = stopped_by(stderr, cpu >= limits.cpu * 0.95, timed_out)
    if wrap and stopped:  # unshare's own complaint about the signal that ended its child
        stderr = "\n".join(ln for ln in stderr.splitlines() if not ln.startswith("unshare: "))
    return Ran(stdout, stderr, None if timed_out else status, stopped,
               "namespace" if wrap else "socket guard", time.monotonic() - start)


def wait(child: subprocess.Popen, deadline: float) -> tuple[int, float, bool]:
    """(exit code, CPU seconds it and the children it waited for used, timed out?): the
    child reaped by wait4, whose resource usage says whether the CPU limit ended it (unshare
    does not pass a signal's death on faithfully), killed with its session at `deadline`."""
    timed_out = False
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() >= deadline:
            timed_out = True
            kill_group(child.pid)
            pid, status, usage = os.wait4(child.pid, 0)
            break
        time.sleep(0.01)
    kill_group(child.pid)  # whatever it left behind in its session
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_utime + usage.ru_stime, timed_out


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def read_head(path: Path) -> str:
    with open(path, "rb") as f:
        data = f.read(MAX_OUTPUT * 4)
    text = data.decode("utf-8", errors="replace")
    if len(text) > MAX_OUTPUT or path.stat().st_size > len(data):
        text = text[:MAX_OUTPUT] + f"\n… ({path.stat().st_size:,} bytes in all, cut)"
    return text


def stopped_by(stderr: str, out_of_cpu: bool, timed_out: bool) -> str | None:
    """Which limit ended the run."""
    if timed_out:
        return "timeout"
    if out_of_cpu:
        return "cpu"
    tail = stderr[-2000:]
    if "MemoryError" in tail:
        return "memory"
    if "File too large" in tail:  # Python ignores SIGXFSZ, so the write raises
        return "file size"
    return None

"""The Python sandbox: output comes back; the network is refused; runaway code is stopped."""

import os
import socket
import time

import pytest

from jielong.agent.sandbox import Limits, namespaces, run_python

FAST = Limits(timeout=3, cpu=1, memory_mb=256, file_mb=1, processes=16)


def test_it_runs_code_in_a_scratch_folder_with_an_empty_environment(tmp_path):
    r = run_python("import os, sys\nprint('你好', 6 * 7)\nprint(sorted(os.environ))\n"
                   "print(os.listdir('.'), sys.flags.isolated)", FAST)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and r.stopped is None
    assert lines[0] == "你好 42"
    assert not set(eval(lines[1])) - {"LC_CTYPE"}  # nothing of ours (Python may set LC_CTYPE)
    assert lines[2] == "['main.py'] 1"  # a fresh folder, isolated mode
    assert "HOME" not in r.stdout and str(tmp_path) not in r.stdout


def test_an_exception_comes_back_as_text():
    r = run_python("1 / 0", FAST)
    assert r.returncode == 1 and "ZeroDivisionError" in r.report() and "[exit code 1]" in r.report()


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    yield srv
    srv.close()


def connected(srv) -> bool:
    try:
        srv.accept()[0].close()
        return True
    except OSError:
        return False


def test_the_network_is_refused(listener):
    port = listener.getsockname()[1]
    r = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                   "print('connected')", FAST)
    assert "connected" not in r.stdout and r.returncode != 0
    assert "OSError" in r.stderr or "unreachable" in r.stderr
    assert not connected(listener)


@pytest.mark.skipif(namespaces() is None, reason="no network namespace here (socket guard only)")
def test_code_that_goes_around_the_socket_module_is_refused_too(listener):
    # The socket guard alone would let this through (the C module directly): only the
    # network namespace stops it.
    port = listener.getsockname()[1]
    r = run_python(f"import _socket\ns = _socket.socket()\ns.settimeout(1)\n"
                   f"s.connect(('127.0.0.1', {port}))\nprint('connected')", FAST)
    assert r.network == "namespace"
    assert "connected" not in r.stdout and not connected(listener)


def test_an_endless_loop_is_stopped():
    start = time.monotonic()
    r = run_python("while True:\n    pass", Limits(timeout=2, cpu=1))
    assert time.monotonic() - start < 4
    assert r.stopped in ("cpu", "timeout") and "[stopped:" in r.report()


def test_a_sleeper_is_stopped_by_the_wall_clock():
    r = run_python("import time\ntime.sleep(60)", Limits(timeout=1))
    assert r.stopped == "timeout" and r.returncode is None and r.seconds < 3


def test_a_memory_bomb_gets_memory_error():
    r = run_python("x = bytearray(1 << 30)\nprint('allocated', len(x))", FAST)  # 1 GiB > 256 MiB
    assert "allocated" not in r.stdout and r.stopped == "memory"


def test_a_huge_file_is_cut_at_the_file_size_limit():
    r = run_python("with open('big', 'wb') as f:\n    f.write(b'x' * (8 << 20))\nprint('wrote')",
                   FAST)  # 8 MiB > 1 MiB
    assert "wrote" not in r.stdout and r.stopped == "file size"


def test_endless_output_is_bounded():
    r = run_python("while True:\n    print('x' * 1000)", FAST)
    assert r.stopped in ("file size", "cpu", "timeout")
    assert len(r.stdout) < 25_000  # what the model is given is cut


@pytest.mark.skipif(namespaces() is None, reason="no PID namespace here")
def test_a_fork_bomb_leaves_no_process_behind(tmp_path):
    # Each child leaves the session (setsid: out of reach of a process-group kill), sleeps,
    # then writes a file: any file written after the run ended is a process that survived.
    marker = tmp_path / "survivors"
    code = f"""
import os, time
for _ in range(40):
    try:
        if os.fork() == 0:
            os.setsid()
            time.sleep(1.5)
            open({str(marker)!r}, 'a').write('x')
            os._exit(0)
    except OSError:
        break
time.sleep(60)
"""
    r = run_python(code, Limits(timeout=1, processes=16))
    assert r.stopped == "timeout"
    time.sleep(1.2)
    assert not marker.exists(), "processes forked by the sandbox outlived it"


@pytest.mark.skipif(os.getuid() == 0, reason="RLIMIT_NPROC does not bind root")
def test_the_process_limit_refuses_forks():
    code = """
import os, time
n = 0
try:
    for _ in range(200):
        if os.fork() == 0:
            time.sleep(2)
            os._exit(0)
        n += 1
except OSError:
    print('refused after', n)
"""
    r = run_python(code, Limits(timeout=4, processes=8))
    assert r.stdout.startswith("refused after") and int(r.stdout.split()[-1]) <= 8

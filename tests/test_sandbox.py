"""The sandbox against hostile model output: the calculator tool and the program runner.

The program runner's tests attack it as a model could: each escape names what it tries, and the test checks what
the attack would have changed (files of the caller's, processes left behind, the caller itself) is unchanged.
"""

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from nanochat_pl import sandbox
from nanochat_pl.common import UserError
from nanochat_pl.sandbox import MAX_OUTPUT_BYTES, calculator, run_program

# ----------------------------------------------------------------------------------------------------------
# calculator


@pytest.mark.parametrize(
    "expr",
    [
        "1+2*3",
        "7/2",
        "6/3",
        "7//2",
        "-7//2",
        "7%3",
        "2**10",
        "2**-2",
        "(1+2)*(3-4.5)",
        "-(-3)",
        "+4",
        "0.1+0.2",
    ],
)
def test_calculator_matches_python(expr):
    assert calculator(expr) == str(eval(expr))  # the test's own trusted expression is the reference


def test_calculator_matches_python_on_random_arithmetic():
    rng = random.Random(0)

    def expression(depth):
        if depth == 0 or rng.random() < 0.3:
            return str(rng.choice([rng.randint(0, 999), round(rng.uniform(0, 100), 2)]))
        op = rng.choice(["+", "-", "*", "/", "//", "%"])
        return f"({expression(depth - 1)} {op} {expression(depth - 1)})"

    checked = 0
    for _ in range(500):
        expr = expression(4)
        try:
            expected = str(eval(expr))
        except ZeroDivisionError:
            assert calculator(expr) == "Error: division by zero"
            continue
        assert calculator(expr) == expected, expr
        checked += 1
    assert checked > 400


def test_calculator_strips_thousands_separators_and_counts_letters():
    assert calculator("1,234,567 + 1") == "1234568"
    assert calculator('"strawberry".count("r")') == "3"
    assert calculator('"a,b,c".count(",")') == "2"  # commas inside strings are kept


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('ls')",
        "import os",
        "().__class__.__bases__[0].__subclasses__()",
        "''.__class__",
        "open('/etc/passwd').read()",
        "x",
        "print(1)",
        "(lambda: 1)()",
        "[1, 2]",
        "'abc'.upper()",
        "'abc'.count",
        "'ab' * 1000000",
        "'a' + 'b'",
        "'abc'.count(1)",
        "1 if 1 else 2",
        "1 < 2",
        "f'{1}'",
        "b'x'.count(b'x')",
        "exec('1')",
    ],
)
def test_calculator_refuses_everything_else(expr):
    assert calculator(expr).startswith("Error: ")


@pytest.mark.parametrize("expr", ["9**9**9", "10**100000", "2**3000 * 2**3000", "(10**999)**10", "1e308 * 10"])
def test_calculator_bounds_huge_numbers_quickly(expr):
    start = time.perf_counter()
    assert calculator(expr).startswith("Error: ")
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize(
    "expr", ["1/0", "1 +", "-" * 900 + "1" + "(" * 999, "(" * 300 + "1" + ")" * 300, 42, "1" * 2000]
)
def test_calculator_never_raises(expr):
    assert calculator(expr).startswith("Error: ")


# ----------------------------------------------------------------------------------------------------------
# run_program: ordinary programs (sandboxed where the machine allows, else unconfined)


def run(code: str, **kwargs):
    """Sandboxed where the machine allows; elsewhere unconfined, which these harmless programs may be."""
    return run_program(code, allow_unconfined=True, **kwargs)


def test_normal_program_passes_with_stdlib():
    result = run("import collections, heapq, json\nprint(json.dumps(sorted(collections.Counter('aab'))))")
    assert (result.status, result.returncode, result.stdout) == ("passed", 0, '["a", "b"]\n')


def test_failures_are_reported_with_their_traceback():
    failed = run("assert 1 + 1 == 3, 'bad math'")
    assert failed.status == "failed" and "AssertionError: bad math" in failed.stderr
    assert run("import sys; sys.exit(3)").returncode == 3
    assert run("import sys; sys.exit(200)").returncode == 200
    assert run("def f(:\n").status == "failed"
    killed = run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert (killed.status, killed.returncode) == ("failed", -signal.SIGKILL) and "killed by SIGKILL" in killed.stderr


def test_infinite_loop_times_out_quickly():
    start = time.perf_counter()
    result = run("while True:\n    pass", timeout=1.0)
    assert result.status == "timeout"
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize(
    "code", ["x = bytearray(2**31)\nprint('allocated')", "x = []\nwhile True:\n    x.append(bytearray(10**7))"]
)
def test_memory_bomb_is_stopped(code):
    start = time.perf_counter()
    result = run(code, memory_mb=256)
    assert result.status == "failed" and "MemoryError" in result.stderr and "allocated" not in result.stdout
    assert time.perf_counter() - start < 5.0


def test_the_working_directory_is_the_programs_own():
    code = (
        "import os, tempfile\n"
        "open('notes.txt', 'w').write('hi')\n"
        "with tempfile.NamedTemporaryFile('w+', delete=False) as f:\n"
        "    f.write('there')\n"
        "print(open('notes.txt').read(), open(f.name).read(), sorted(os.listdir('.')) == sorted(['notes.txt', "
        "os.path.basename(f.name)]))"
    )
    assert run("import os; print(os.listdir('.'))").stdout == "[]\n"  # it starts empty
    result = run(code)
    assert (result.status, result.stdout) == ("passed", "hi there True\n")
    assert run("import os; print(os.listdir('.'))").stdout == "[]\n"  # and the next program's is new


def test_stdin_is_closed_and_environment_scrubbed(monkeypatch):
    monkeypatch.setenv("NANOCHAT_SECRET", "hunter2")
    result = run("import os\nprint(sorted(os.environ))\ninput()")
    assert "hunter2" not in result.stdout and "NANOCHAT_SECRET" not in result.stdout
    assert set(eval(result.stdout)) <= {"PATH", "HOME", "TMPDIR", "LC_ALL", "PWD", "LC_CTYPE"}
    assert result.status == "failed" and "EOFError" in result.stderr


def test_output_is_truncated():
    result = run("print('x' * 1_000_000)")
    assert result.status == "passed"
    assert len(result.stdout) < MAX_OUTPUT_BYTES + 100 and "truncated" in result.stdout


@pytest.mark.parametrize("code", [b"print(1)", "x" * (sandbox.MAX_PROGRAM_CHARS + 1), "print('\ud800')"])
def test_a_program_that_cannot_be_run_is_an_error_result(code):
    result = run(code)
    assert result.status == "error" and result.returncode is None and result.stderr


# ----------------------------------------------------------------------------------------------------------
# run_program: no sandbox


@pytest.fixture
def no_sandbox(monkeypatch):
    monkeypatch.setattr(sandbox, "_isolation_problem", lambda: "bubblewrap (bwrap) is not installed")


def test_without_a_sandbox_programs_are_refused_in_one_line(no_sandbox):
    with pytest.raises(UserError, match="bubblewrap") as refusal:
        run_program("print(1)")
    assert "\n" not in str(refusal.value)


def test_without_a_sandbox_unconfined_runs_are_explicit(no_sandbox):
    assert run_program("print(1)", allow_unconfined=True).stdout == "1\n"
    assert run_program("while True:\n    pass", timeout=0.5, allow_unconfined=True).status == "timeout"


# ----------------------------------------------------------------------------------------------------------
# run_program: escapes

NO_SANDBOX = sandbox._isolation_problem()
needs_sandbox = pytest.mark.skipif(NO_SANDBOX is not None, reason=f"no sandbox on this machine: {NO_SANDBOX}")
AS_ROOT = os.geteuid() == 0


@pytest.fixture
def outside(tmp_path):
    """A directory of the caller's, writable by everyone, holding `victim`, writable by everyone. Root's is one the
    sandbox sees, so that only the read-only mount stops writes to it; everywhere an ordinary user may write, the
    sandbox shows an empty directory instead."""
    directory = Path(tempfile.mkdtemp(prefix="nanochat-sandbox-test-", dir="/var/lib")) if AS_ROOT else tmp_path
    directory.chmod(0o777)
    (directory / "victim").write_text("original")
    (directory / "victim").chmod(0o666)
    yield directory
    if AS_ROOT:
        shutil.rmtree(directory)


def snapshot(directory: Path) -> dict:
    """Everything an attack could change in `directory`: names, contents, modes, times, extended attributes."""
    state = {}
    for path in sorted(directory.rglob("*")):
        stat = path.lstat()
        content = path.read_bytes() if path.is_file() else None
        state[path] = (stat.st_mode, stat.st_mtime_ns, content, sorted(os.listxattr(path, follow_symlinks=False)))
    return state


DIR_FD = "fd = os.open(OUTSIDE, os.O_RDONLY | os.O_DIRECTORY)\n"
FILE_ESCAPES = {
    # file calls relative to a directory descriptor
    "dir_fd create": DIR_FD + "os.close(os.open('planted', os.O_CREAT | os.O_WRONLY, dir_fd=fd))",
    "dir_fd delete": DIR_FD + "os.unlink('victim', dir_fd=fd)",
    "dir_fd open": DIR_FD
    + "open('victim', 'w', opener=lambda path, flags: os.open(path, flags, dir_fd=fd)).write('owned')",
    "dir_fd mkdir": DIR_FD + "os.mkdir('planted', dir_fd=fd)",
    "dir_fd rename": DIR_FD + "os.rename('victim', 'moved', src_dir_fd=fd, dst_dir_fd=fd)",
    # rebinding helpers a path check would call
    "rebound abspath": "import posixpath\nposixpath.abspath = posixpath.realpath = lambda p: '/tmp/x'\n"
    "open(OUTSIDE + '/planted', 'w').write('owned')",
    # library calls that write files without the audit events an in-process hook acts on
    "sqlite3": "import sqlite3\nsqlite3.connect(OUTSIDE + '/planted.db').execute('create table t (x)')",
    "setxattr": "os.setxattr(VICTIM, 'user.planted', b'1')",
    # the plain ones
    "append": "open(VICTIM, 'a').write('owned')",
    "truncate": "os.truncate(VICTIM, 0)",
    "chmod": "os.chmod(VICTIM, 0o777)",
    "utime": "os.utime(VICTIM, (0, 0))",
    "symlink": "os.symlink('/etc/passwd', OUTSIDE + '/planted')",
    "rmtree": "import shutil\nshutil.rmtree(OUTSIDE)",
}


@needs_sandbox
@pytest.mark.parametrize("escape", FILE_ESCAPES)
def test_files_outside_the_sandbox_cannot_be_changed(outside, escape):
    before = snapshot(outside)
    code = (
        f"import os\nOUTSIDE = {str(outside)!r}\nVICTIM = OUTSIDE + '/victim'\n{FILE_ESCAPES[escape]}\nprint('escaped')"
    )
    result = run_program(code)
    assert result.status == "failed" and "escaped" not in result.stdout, result.stderr
    assert snapshot(outside) == before


def processes_with(marker: str) -> list[int]:
    """Pids of the processes whose command line holds `marker`."""
    found = []
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker.encode() in Path(entry.path, "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


SLEEPER = "[sys.executable, '-c', 'import time; time.sleep(60)', MARKER]"
PROCESS_ESCAPES = {
    # processes meant to outlive the program, one of them by a module loaded under a name a hook would not block
    "subprocess": f"import subprocess\nsubprocess.Popen({SLEEPER})",
    "subprocess under another name": "import importlib.util\n"
    "spec = importlib.util.spec_from_file_location('innocent', importlib.util.find_spec('subprocess').origin)\n"
    f"hidden = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(hidden)\nhidden.Popen({SLEEPER})",
    "os.fork": f"if os.fork() == 0:\n    os.execv(sys.executable, {SLEEPER})",
    "os.posix_spawn": f"os.posix_spawn(sys.executable, {SLEEPER}, {{}})",
    "os.system": f"import shlex\nos.system(shlex.join({SLEEPER}) + ' &')",
    "daemon": "if os.fork() == 0:\n    os.setsid()\n"
    f"    if os.fork() == 0:\n        os.execv(sys.executable, {SLEEPER})\n    os._exit(0)",
}


@needs_sandbox
@pytest.mark.parametrize("outlive", ["past_timeout", "past_exit"])
@pytest.mark.parametrize("escape", PROCESS_ESCAPES)
def test_no_process_outlives_the_program(escape, outlive):
    marker = f"nanochat-sandbox-test-{uuid.uuid4().hex}"
    code = f"import os, sys, time\nMARKER = {marker!r}\n{PROCESS_ESCAPES[escape]}\n"
    code += "time.sleep(0.3)\nprint('spawned', flush=True)"
    timeout = 2.0 if outlive == "past_timeout" else 10.0
    start = time.perf_counter()
    result = run_program(code + "\ntime.sleep(60)" * (outlive == "past_timeout"), timeout=timeout)
    assert "spawned" in result.stdout, result.stderr  # the attack itself ran
    assert result.status == ("timeout" if outlive == "past_timeout" else "passed")
    assert time.perf_counter() - start < timeout + 2.0
    assert processes_with(marker) == []


@needs_sandbox
@pytest.mark.parametrize(
    "attack",
    [
        "os.kill(CALLER, signal.SIGKILL)",
        "os.kill(VICTIM, signal.SIGKILL)",
        "signal.pidfd_send_signal(os.pidfd_open(CALLER), signal.SIGKILL)",
        "signal.pidfd_send_signal(os.pidfd_open(VICTIM), signal.SIGKILL)",
        "os.killpg(os.getpgid(CALLER), signal.SIGKILL)",
    ],
)
def test_the_caller_cannot_be_signalled(attack):
    with subprocess.Popen(["sleep", "30"]) as victim:
        try:
            code = f"import os, signal\nCALLER, VICTIM = {os.getpid()}, {victim.pid}\n{attack}\nprint('sent')"
            result = run_program(code)
            assert result.status == "failed" and "ProcessLookupError" in result.stderr, result.stderr
            assert victim.poll() is None  # and this test, the caller, still runs
        finally:
            victim.kill()


@needs_sandbox
def test_every_process_of_a_fork_bomb_is_killed():
    code = (
        "import os\nprint(os.readlink('/proc/self/ns/pid'), flush=True)\n"
        "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    )
    start = time.perf_counter()
    result = run_program(code, timeout=1.0)
    assert result.status == "timeout" and time.perf_counter() - start < 3.0
    namespace = result.stdout.splitlines()[0]
    left = []
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and os.readlink(f"{entry.path}/ns/pid") == namespace:
                left.append(entry.name)
    assert left == []


@needs_sandbox
def test_the_callers_environment_is_unreadable(monkeypatch):
    monkeypatch.setenv("NANOCHAT_SECRET", "hunter2")
    code = (
        "import os, glob\nprint(dict(os.environ))\n"
        "for path in glob.glob('/proc/*/environ'):\n"
        "    try:\n        print(open(path, 'rb').read())\n    except OSError:\n        pass"
    )
    result = run_program(code)
    assert result.status == "passed" and "hunter2" not in result.stdout


@needs_sandbox
@pytest.mark.skipif(not AS_ROOT, reason="an ordinary caller's own files are its sandbox's to read")
def test_files_only_root_may_read_are_unreadable(outside):
    secret = outside / "secret"
    secret.write_text("hunter2")
    secret.chmod(0o600)
    for path in [secret, Path("/etc/shadow")]:
        code = f"import os\nprint(os.path.exists({str(path)!r}), flush=True)\nprint(open({str(path)!r}).read())"
        result = run_program(code)
        # it sees the file, so what stops it is being nobody
        assert result.stdout == "True\n" and "PermissionError" in result.stderr, (path, result)


@needs_sandbox
def test_only_the_working_directory_is_writable_and_the_host_is_hidden():
    hidden = [d for d in sandbox.HIDDEN_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    code = textwrap.dedent(f"""
        import os
        writable = []
        for path in {[*hidden, "/", "/etc", "/usr", "/dev", "/dev/shm", "/proc", "/sys"]!r}:
            try:
                open(path + "/planted", "w")
                writable.append(path)
            except OSError:
                pass
        processes = sorted(p for p in os.listdir("/proc") if p.isdigit())
        print((writable, {{d: os.listdir(d) for d in {hidden!r}}}, processes))
    """)
    result = run_program(code)
    assert result.status == "passed", result.stderr
    writable, listings, processes = eval(result.stdout)
    assert writable == []
    # empty, but for the way to this interpreter where it lives in one (pyenv's, under /root)
    prefix = os.path.realpath(sys.base_prefix)
    assert listings == {d: [prefix[len(d) + 1 :].split("/")[0]] if prefix.startswith(d + "/") else [] for d in hidden}
    assert processes == ["1", "2"]  # it sees its own processes only: bwrap's init and itself


@needs_sandbox
def test_network_is_unreachable():
    address = f"\0nanochat-sandbox-test-{uuid.uuid4().hex}"  # abstract sockets belong to a network namespace
    with socket.socket() as server, socket.socket(socket.AF_UNIX) as local:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        local.bind(address)
        local.listen()
        local.settimeout(0.5)
        port = server.getsockname()[1]
        for code in [
            f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)",
            f"import socket; socket.socket(socket.AF_UNIX).connect({address!r})",
            "import socket; socket.create_connection(('1.1.1.1', 443), timeout=1)",
        ]:
            result = run_program(code)
            assert result.status == "failed" and "Traceback" in result.stderr, code
        for listener in (server, local):
            with pytest.raises(TimeoutError):
                listener.accept()


@needs_sandbox
@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("with open('big', 'wb', buffering=0) as f:\n    while True:\n        f.write(b'x' * 2**20)", "File too large"),
        ("import sys\nwhile True:\n    sys.stdout.buffer.write(b'x' * 2**20)", "File too large"),
        ("for i in range(1000):\n    open(f'f{i}', 'wb').write(b'x' * 2**20)", "No space left"),
    ],
)
def test_huge_writes_are_stopped(code, error):
    start = time.perf_counter()
    result = run_program(code)
    assert result.status == "failed" and error in result.stderr, result.stderr
    assert time.perf_counter() - start < 5.0

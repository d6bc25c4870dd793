"""Where model-written code runs. Everything a model writes is treated as hostile.

- `calculator(expr)`: the chat tool behind `<|python_start|>…<|python_end|>`, a calculator as nanochat's (engine.py
  `use_calculator`: arithmetic, or a string literal's `.count(...)`). nanochat `eval`s a blacklisted string under an
  alarm; here only a whitelisted `ast` tree is evaluated, every number bounded, so nothing can hang or escape.
- `run_program(code)`: HumanEval-style programs in a fresh interpreter (as nanochat's execution.py: scrubbed env, temp
  cwd, closed stdin, rlimits, timeout), held by the operating system through bubblewrap (`bwrap`), since nothing in
  the program's own interpreter (an audit hook, a patched `os`) is beyond the program's reach:
  - user: uid 65534 in a new user namespace, no capabilities, no further user namespaces; started by root, bwrap
    first drops to the host's `nobody` (`setpriv`), else the program would be host root to the file system.
  - processes: a new PID namespace, whose PID 1 (bwrap's init) `run_program` kills and waits for when the program
    exits or the wall clock runs out: the kernel lets PID 1 go only after killing everything else in it.
  - files: a new mount namespace, `/` read-only; /root, /home, /run, /var/tmp, /mnt, /media and /srv empty; its own
    /proc and read-only /dev; the one writable place is /tmp, a 64 MiB tmpfs (cwd, HOME and TMPDIR).
  - network (loopback only), IPC, host name: new namespaces; environment: PATH, HOME, TMPDIR and LC_ALL only.
  - rlimits, set by a prelude before the program runs: address space, CPU seconds, file size, open files, processes,
    no core files.
  Not bounded: memory the kernel holds outside a process's address space (SysV shared memory, memfd files) is stopped
  by the wall clock only (a memory cgroup would need root or systemd delegation), and files outside the hidden
  directories stay as readable as they are to the host user the program runs as. Where bwrap is missing or fails its
  self-check, `run_program` refuses with a `UserError` unless `allow_unconfined=True`; the program then has the
  prelude's rlimits, the scrubbed environment, a temporary cwd and a process-group kill, nothing else.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
import math
import operator
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Literal

from nanochat_pl.common import UserError

# ----------------------------------------------------------------------------------------------------------
# calculator

MAX_EXPR_CHARS, MAX_RESULT_CHARS = 1_000, 1_000
# |int| < 2**3300 keeps every number under ~1000 decimal digits, so int->str never trips Python's 4300-digit
# guard and a product of two allowed ints costs microseconds.
MAX_INT_BITS = 3_300

_BINARY_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_BINARY_OPS |= {ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY_OPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# "1,234,567" -> "1234567": nanochat strips commas so GSM8K-style thousands separators parse.
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


class CalculatorError(Exception):
    """The expression is outside what the calculator accepts; the message is shown to the model."""


def _check_number(value: int | float) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError("number too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not finite")
    return value


def _evaluate(node: ast.AST) -> int | float | str:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, str):
        return node.value if isinstance(node.value, str) else _check_number(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        operand = _evaluate(node.operand)
        if isinstance(operand, str):
            raise CalculatorError("arithmetic on a string")
        return _UNARY_OPS[type(node.op)](operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(left, str) or isinstance(right, str):
            raise CalculatorError("arithmetic on a string")
        # bound a power's size before computing it: |base**exponent| has about exponent*log2|base| bits
        if isinstance(node.op, ast.Pow) and abs(left) > 1 and right > 0 and right * math.log2(abs(left)) > MAX_INT_BITS:
            raise CalculatorError("number too large")
        result = _BINARY_OPS[type(node.op)](left, right)
        if isinstance(result, complex):
            raise CalculatorError("complex result")
        return _check_number(result)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "count"
        and isinstance(node.func.value, ast.Constant)
        and isinstance(node.func.value.value, str)
        and len(node.args) == 1
        and not node.keywords
    ):
        needle = _evaluate(node.args[0])
        if not isinstance(needle, str):
            raise CalculatorError("count() takes a string")
        return node.func.value.value.count(needle)
    raise CalculatorError(f"{type(node).__name__} is not allowed")


def calculator(expr: str) -> str:
    """Evaluate arithmetic (+ - * / // % **, unary +/-, parentheses) or `"literal".count("x")`. Never raises: a
    refused or failing expression comes back as "Error: <why>", which the engine feeds to the model as any result."""
    if not isinstance(expr, str):
        return "Error: expression must be a string"
    if len(expr) > MAX_EXPR_CHARS:
        return f"Error: expression longer than {MAX_EXPR_CHARS} characters"
    if "'" not in expr and '"' not in expr:
        expr = _THOUSANDS_COMMA.sub("", expr)
    try:
        result = _evaluate(ast.parse(expr.strip(), mode="eval").body)
    except CalculatorError as e:
        return f"Error: {e}"
    except SyntaxError:
        return "Error: invalid syntax"
    except ZeroDivisionError:
        return "Error: division by zero"
    except (ArithmeticError, ValueError, RecursionError, MemoryError) as e:
        return f"Error: {type(e).__name__}"
    text = str(result)
    if len(text) > MAX_RESULT_CHARS:
        return f"Error: result longer than {MAX_RESULT_CHARS} characters"
    return text


# ----------------------------------------------------------------------------------------------------------
# run_program

MAX_PROGRAM_CHARS = 1_000_000
MAX_OUTPUT_BYTES = 16_384  # of stdout and of stderr kept in the result
MAX_FILE_BYTES = 16 * 2**20  # RLIMIT_FSIZE: largest file (stdout included) the program may write
MAX_OPEN_FILES = 64
MAX_PROCESSES = 8  # RLIMIT_NPROC: every process and thread of the sandbox's uid, bwrap's init among them
WORK_DIR = "/tmp"  # inside the sandbox: its only writable place
WORK_DIR_BYTES = 64 * 2**20  # all it may write there, together
SANDBOX_UID = 65534  # nobody
# Covered by empty read-only directories: people's files, and the sockets of the host's services.
HIDDEN_DIRS = ("/root", "/home", "/run", "/var/tmp", "/mnt", "/media", "/srv")


@dataclass(frozen=True)
class ExecResult:
    """How a program ended: passed (exit 0), failed (non-zero exit or killed), timeout, or error (not run)."""

    status: Literal["passed", "failed", "timeout", "error"]
    returncode: int | None
    stdout: str
    stderr: str


# Runs in the program's interpreter before the program; argv = [-c, memory_bytes, cpu_seconds, file_bytes,
# open_files, processes], and no core files. The program arrives on stdin; what is left of stdin is end of file, so
# input() raises EOFError, as in nanochat.
_PRELUDE = r"""
import resource as r, sys

source = sys.stdin.buffer.read()
limits = (r.RLIMIT_AS, r.RLIMIT_CPU, r.RLIMIT_FSIZE, r.RLIMIT_NOFILE, r.RLIMIT_NPROC, r.RLIMIT_CORE)
for limit, value in zip(limits, [*map(int, sys.argv[1:]), 0]):
    r.setrlimit(limit, (value, value))
sys.argv = ["program.py"]
exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""


def _python() -> list[str]:
    """This interpreter, isolated (no user site, no PYTHON* variables), the standard library only, no .pyc."""
    return [os.path.realpath(sys.executable), "-I", "-S", "-B", "-X", "utf8"]


def _environment(work_dir: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": work_dir, "TMPDIR": work_dir, "LC_ALL": "C.UTF-8"}


def _holds_interpreter(directory: str) -> bool:
    return os.path.realpath(sys.base_prefix).startswith(directory + os.sep)


def _hide(directory: str) -> list[str]:
    """bwrap arguments covering `directory` with an empty read-only tmpfs; the interpreter's installation stays
    visible at its own path if it lies inside (pyenv's, under /root)."""
    arguments = ["--tmpfs", directory]
    if _holds_interpreter(directory):
        prefix = os.path.realpath(sys.base_prefix)
        arguments += ["--ro-bind", prefix, prefix]
        # bwrap gives the mount point's new parents the host's modes (/root/.pyenv: 0700): open them to nobody
        parent = os.path.dirname(prefix)
        while parent != directory:
            arguments += ["--chmod", "0755", parent]
            parent = os.path.dirname(parent)
    return [*arguments, "--remount-ro", directory]


def _sandboxed(command: list[str], env: dict[str, str], info_fd: int | None = None) -> list[str]:
    """`command` wrapped in bwrap (see the module's docstring); bwrap writes its init's pid to `info_fd`."""
    bwrap = shutil.which("bwrap")
    hidden = [d for d in HIDDEN_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    sandbox = [
        bwrap,
        "--unshare-all",  # user, PID, mount, network, IPC, UTS and cgroup namespaces
        "--unshare-user",  # always, not "where possible": --disable-userns and --uid need it
        "--disable-userns",
        *("--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)),
        *("--cap-drop", "ALL"),
        "--die-with-parent",
        "--new-session",  # its own session: no TIOCSTI into the caller's terminal
        "--clearenv",
        *(argument for name, value in env.items() for argument in ("--setenv", name, value)),
        *("--ro-bind", "/", "/"),
        *("--proc", "/proc"),
        *("--dev", "/dev", "--remount-ro", "/dev"),  # its /dev/shm would be a tmpfs without a size limit
        *(argument for directory in hidden for argument in _hide(directory)),
        *("--size", str(WORK_DIR_BYTES), "--tmpfs", WORK_DIR, "--chdir", WORK_DIR),
        *(("--info-fd", str(info_fd)) if info_fd is not None else ()),
        "--",
        *command,
    ]
    if os.geteuid() != 0:
        return sandbox
    # Root first makes the interpreter reachable by nobody, in a mount namespace of its own, then becomes nobody;
    # an unprivileged bwrap then builds the sandbox, as for any other caller.
    reveal = [argument for directory in hidden if _holds_interpreter(directory) for argument in _hide(directory)]
    setpriv = [shutil.which("setpriv"), f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups"]
    return [bwrap, "--dev-bind", "/", "/", *reveal, "--die-with-parent", "--", *setpriv, "--", *sandbox]


@functools.cache
def _isolation_problem() -> str | None:
    """Why programs cannot be sandboxed here, in one line, or None; found once per process by running an empty
    program in the sandbox, since bwrap may be installed and still be refused user namespaces."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    env = _environment(WORK_DIR)
    try:
        probe = subprocess.run(
            _sandboxed([*_python(), "-c", ""], env), env=env, cwd="/", capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap failed its self-check: {e}"
    if probe.returncode != 0:
        lines = probe.stderr.decode("utf-8", errors="replace").strip().splitlines()
        return f"bwrap failed its self-check: {lines[-1] if lines else f'exit status {probe.returncode}'}"
    return None


def _sandbox_init(info_fd: int, timeout: float) -> int | None:
    """A pidfd of the sandbox's init, whose pid bwrap writes to `info_fd` once it has made the namespaces, before
    the program starts; None where bwrap stopped first."""
    data = b""
    while select.select([info_fd], [], [], timeout)[0] and (chunk := os.read(info_fd, 4096)):
        data += chunk
        with contextlib.suppress(ValueError, ProcessLookupError):  # not all of it yet, or the init has gone already
            return os.pidfd_open(json.loads(data)["child-pid"])
    return None


def _read_truncated(file) -> str:
    size = os.fstat(file.fileno()).st_size
    file.seek(0)
    text = file.read(MAX_OUTPUT_BYTES).decode("utf-8", errors="replace")
    if size > MAX_OUTPUT_BYTES:
        text += f"\n[... {size - MAX_OUTPUT_BYTES} more bytes truncated]"
    return text


def run_program(code: str, timeout: float = 5.0, memory_mb: int = 256, *, allow_unconfined: bool = False) -> ExecResult:
    """Run a Python program (as `__main__`, in an empty working directory) in a fresh, sandboxed interpreter and
    report how it ended; one that cannot be run (not a str, too long, not encodable) comes back as status "error".
    `timeout`: wall-clock seconds before every process it started is killed (CPU time is capped at ceil(timeout) + 1 s
    as a backstop); `memory_mb`: the address space of each of its processes. No sandbox: see the module docstring."""
    if not isinstance(code, str) or len(code) > MAX_PROGRAM_CHARS:
        return ExecResult("error", None, "", f"program must be a str of at most {MAX_PROGRAM_CHARS} chars")
    try:
        source = code.encode("utf-8")
    except UnicodeEncodeError as e:
        return ExecResult("error", None, "", f"program is not valid text: {e.reason} at character {e.start}")
    problem = _isolation_problem()
    if problem is not None and not allow_unconfined:
        raise UserError(
            f"refusing to run model-written code without a sandbox ({problem}): install bubblewrap as the "
            "README's Set up says, or allow unconfined runs explicitly (allow_unconfined=True)"
        )
    sandboxed = problem is None
    limits = (memory_mb * 2**20, math.ceil(timeout) + 1, MAX_FILE_BYTES, MAX_OPEN_FILES, MAX_PROCESSES)
    command = [*_python(), "-c", _PRELUDE, *map(str, limits)]
    with contextlib.ExitStack() as stack:
        stdout = stack.enter_context(tempfile.TemporaryFile())
        stderr = stack.enter_context(tempfile.TemporaryFile())
        if sandboxed:
            info_read, info_write = os.pipe()
            stack.callback(os.close, info_read)
            env = _environment(WORK_DIR)
            command, cwd, pass_fds = _sandboxed(command, env, info_write), "/", (info_write,)
        else:
            cwd = stack.enter_context(tempfile.TemporaryDirectory(prefix="nanochat-unconfined-"))
            env, pass_fds = _environment(cwd), ()
        try:
            # a new session: unconfined, its process group is what the timeout kills
            streams = dict(stdin=subprocess.PIPE, stdout=stdout, stderr=stderr)
            process = subprocess.Popen(command, cwd=cwd, env=env, pass_fds=pass_fds, start_new_session=True, **streams)
        except OSError as e:
            return ExecResult("error", None, "", f"could not start the interpreter: {e}")
        finally:
            if sandboxed:
                os.close(info_write)
        init = _sandbox_init(info_read, timeout) if sandboxed else None
        timed_out = False
        try:
            process.communicate(source, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        if init is not None:
            # kill the sandbox's init and wait until it has gone: as PID 1 of its namespace, it goes only once the
            # kernel has killed and reaped every other process in it (bwrap returns as soon as the program exits)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(init, signal.SIGKILL)
            select.select([init], [], [])  # a pidfd turns readable when its process has exited
            os.close(init)
        elif timed_out:  # unconfined, or bwrap never made the sandbox
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        returncode = process.returncode
        out, err = _read_truncated(stdout), _read_truncated(stderr)
    # bwrap reports a death by signal the shell's way, as 128 + the signal's number
    if sandboxed and returncode - 128 in signal.valid_signals():
        returncode = 128 - returncode
    if returncode < 0:
        err += f"\n[killed by {signal.Signals(-returncode).name}]"
    status = "timeout" if timed_out or returncode == -signal.SIGXCPU else "passed" if returncode == 0 else "failed"
    return ExecResult(status, returncode, out, err)

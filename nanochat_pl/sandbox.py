"""Where model-written code runs. Everything a model writes is treated as hostile.

Two doors, one per use:
- `calculator(expr)`: the chat tool behind `<|python_start|>…<|python_end|>`. nanochat's tool is a calculator,
  not a REPL (nanochat engine.py@dfc8833 `use_calculator`: arithmetic, or a string literal's `.count(...)`).
  nanochat `eval`s a blacklisted string under a 3 s alarm; here the expression is parsed with `ast` and only a
  whitelisted tree is evaluated, with every intermediate number bounded, so nothing can hang or escape.
- `run_program(code)`: HumanEval-style programs in a fresh interpreter (nanochat execution.py@f4f69f9 runs a
  fresh `python -c` with a scrubbed env, temp cwd, closed stdin, 256 MB rlimits and a 5 s timeout). Here the
  layers are: kernel (rlimits on memory/CPU/file size/processes, a new network namespace through `unshare`
  where the machine allows it, a killed process group on timeout) and Python (an audit hook, which user code
  cannot remove, refusing writes outside the temp dir, sockets, new processes, signals, ctypes and imports
  from outside the standard library; everything it uses is bound when it is made, so rebinding builtins or
  os.path does not blind it). The Python layer is best effort: audit hooks are no security boundary (CPython's
  docs say so), and as root RLIMIT_NPROC is not enforced and the file system is the root user's, so run
  untrusted code as an unprivileged user where that matters. Native code is kept out by refusing ctypes,
  _posixsubprocess and foreign extension modules, not by the kernel.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import math
import operator
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

# ----------------------------------------------------------------------------------------------------------
# calculator

MAX_EXPR_CHARS = 1_000
MAX_RESULT_CHARS = 1_000
# |int| < 2**3300 keeps every number under ~1000 decimal digits, so int->str never trips Python's 4300-digit
# guard and a product of two allowed ints costs microseconds.
MAX_INT_BITS = 3_300

_BINARY_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
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


def _power(base: int | float, exponent: int | float) -> int | float:
    # Bound the result's size before computing it: |base**exponent| has about exponent*log2|base| bits.
    if abs(base) > 1 and exponent > 0 and exponent * math.log2(abs(base)) > MAX_INT_BITS:
        raise CalculatorError("number too large")
    result = base**exponent
    if isinstance(result, complex):
        raise CalculatorError("complex result")
    return result


def _evaluate(node: ast.AST) -> int | float | str:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
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
        if isinstance(node.op, ast.Pow):
            return _check_number(_power(left, right))
        return _check_number(_BINARY_OPS[type(node.op)](left, right))
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
    """Evaluate arithmetic (+ - * / // % **, unary +/-, parentheses) or `"literal".count("x")`.

    Never raises: a refused or failing expression comes back as "Error: <why>", which the engine feeds to the
    model as the tool's output, as any other result.
    """
    if not isinstance(expr, str):
        return "Error: expression must be a string"
    if len(expr) > MAX_EXPR_CHARS:
        return f"Error: expression longer than {MAX_EXPR_CHARS} characters"
    if "'" not in expr and '"' not in expr:
        expr = _THOUSANDS_COMMA.sub("", expr)
    try:
        result = _evaluate(ast.parse(expr.strip(), mode="eval"))
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

Status = Literal["passed", "failed", "timeout", "error"]


@dataclass(frozen=True)
class ExecResult:
    """How a program ended: passed (exit 0), failed (non-zero exit or killed), timeout, or error (not run)."""

    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    elapsed_s: float


# Runs in the child before the program; argv = [-c, work_dir, memory_bytes, cpu_seconds, file_bytes, nofile].
# The program arrives on stdin, which is then replaced by /dev/null (input() raises EOFError, as in nanochat).
_PRELUDE = r"""
import os, resource, sys

work_dir = sys.argv[1]
memory_bytes, cpu_seconds, file_bytes, max_files = map(int, sys.argv[2:6])
source = sys.stdin.buffer.read().decode("utf-8")
null_fd = os.open(os.devnull, os.O_RDONLY)
os.dup2(null_fd, 0)
os.close(null_fd)
sys.stdin = open(0, closefd=False)

for limit, value in (
    (resource.RLIMIT_AS, memory_bytes),
    (resource.RLIMIT_CPU, cpu_seconds),
    (resource.RLIMIT_FSIZE, file_bytes),
    (resource.RLIMIT_NOFILE, max_files),
    (resource.RLIMIT_NPROC, 0),  # no fork, no threads (not enforced for root: the hook's best effort then)
    (resource.RLIMIT_CORE, 0),
):
    resource.setrlimit(limit, (value, value))

def make_guard(realpath, fsdecode, isdir, isinstance, set, any, PermissionError):
    # Everything the hook uses is bound here, when it is made: the program can rebind builtins and os.path
    # functions, and reach this module as sys.modules["__main__"], but not the hook's closure.
    stdlib_dirs = tuple(
        realpath(p) + os.sep for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    )
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    denied_prefixes = (
        "socket.", "subprocess.", "os.fork", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.kill",
        "os.killpg", "signal.pthread_kill", "ctypes.", "pty.", "os.unshare", "os.setns", "_thread.start",
    )
    # modules that start processes or call C without raising audit events of their own
    denied_modules = frozenset({"_posixsubprocess", "_ctypes", "ctypes", "_posixshmem", "_multiprocessing"})
    path_events = frozenset({
        "os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.chmod", "os.chown", "os.truncate", "os.utime",
        "os.link", "os.symlink", "os.mkfifo", "os.mknod", "shutil.rmtree", "shutil.copytree", "shutil.move",
    })
    root, inside_root, path_types = work_dir, work_dir + os.sep, (str, bytes, os.PathLike)

    def inside_work_dir(path):
        real = realpath(fsdecode(path))
        return real == root or real.startswith(inside_root)

    def is_path(value):
        return isinstance(value, path_types)

    def guard(event, args):
        if event.startswith(denied_prefixes):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open" and is_path(args[0]) and not inside_work_dir(args[0]):
            mode, flags = args[1] or "", args[2] or 0
            if flags & write_flags or set(mode) & set("wax+") or isdir(args[0]):
                raise PermissionError("sandbox: writing outside the working directory is not allowed")
        elif event in path_events and any(is_path(a) and not inside_work_dir(a) for a in args):
            raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")
        elif event == "import":
            if args[0] in denied_modules:
                raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
            if is_path(args[1]) and not realpath(fsdecode(args[1])).startswith(stdlib_dirs):
                raise PermissionError("sandbox: imports from outside the standard library are not allowed")

    return guard


sys.addaudithook(
    make_guard(os.path.realpath, os.fsdecode, os.path.isdir, isinstance, set, any, PermissionError)
)
del make_guard
sys.argv = ["program.py"]
exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""


@functools.cache
def _network_isolation() -> tuple[str, ...]:
    """The command prefix that starts the child in a fresh network namespace (no interfaces but a down
    loopback), or () where this machine does not allow it; probed once."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    prefix = (unshare, "--net") if os.geteuid() == 0 else (unshare, "--net", "--map-root-user")
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", ""], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if probe.returncode == 0 else ()


def _read_truncated(file) -> str:
    file.seek(0, os.SEEK_END)
    size = file.tell()
    file.seek(0)
    text = file.read(MAX_OUTPUT_BYTES).decode("utf-8", errors="replace")
    if size > MAX_OUTPUT_BYTES:
        text += f"\n[... {size - MAX_OUTPUT_BYTES} more bytes truncated]"
    return text


def run_program(code: str, timeout: float = 5.0, memory_mb: int = 256) -> ExecResult:
    """Run a Python program in a fresh, locked-down interpreter and report how it ended.

    Args:
        code: the program's source; it runs as `__main__` in an empty temporary working directory.
        timeout: wall-clock seconds before the whole process group is killed (CPU time is capped at
            ceil(timeout) + 1 s as a backstop).
        memory_mb: address-space limit of the process in MiB.
    """
    if not isinstance(code, str) or len(code) > MAX_PROGRAM_CHARS:
        return ExecResult("error", None, "", f"program must be a str of at most {MAX_PROGRAM_CHARS} chars", 0.0)
    with (
        tempfile.TemporaryDirectory(prefix="nanochat-sandbox-", ignore_cleanup_errors=True) as work_dir,
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
    ):
        work_dir = os.path.realpath(work_dir)
        limits = (memory_mb * 2**20, math.ceil(timeout) + 1, MAX_FILE_BYTES, MAX_OPEN_FILES)
        command = [
            *_network_isolation(),
            sys.executable,
            "-I",  # isolated: no user site, no PYTHON* env vars, script dir not on sys.path
            "-S",  # no site-packages: the standard library only
            "-B",  # write no .pyc files
            "-X",
            "utf8",
            "-c",
            _PRELUDE,
            work_dir,
            *map(str, limits),
        ]
        env = {"PATH": "/usr/bin:/bin", "HOME": work_dir, "TMPDIR": work_dir, "LC_ALL": "C.UTF-8"}
        start = time.perf_counter()
        try:
            process = subprocess.Popen(
                command,
                cwd=work_dir,
                env=env,
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # its own process group, killed as a whole on timeout
            )
        except OSError as e:
            return ExecResult("error", None, "", f"could not start the interpreter: {e}", 0.0)
        timed_out = False
        try:
            process.communicate(code.encode("utf-8"), timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        elapsed = time.perf_counter() - start
        returncode = process.returncode
        out, err = _read_truncated(stdout), _read_truncated(stderr)
    if returncode < 0:
        err += f"\n[killed by {signal.Signals(-returncode).name}]"
    if timed_out or returncode == -signal.SIGXCPU:
        status: Status = "timeout"
    else:
        status = "passed" if returncode == 0 else "failed"
    return ExecResult(status, returncode, out, err, elapsed)

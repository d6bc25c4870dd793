"""`nanochat-pl report`: the report card of the pipeline run in the data home (nanochat_pl/report.py)."""

from __future__ import annotations

from nanochat_pl.common import UserError


def report(hourly_rate: float | None = None, output: str | None = None) -> None:
    """Write the report card of the run in the data home: report.md and a PNG of each training stage's curves.

    The report says the machine, the code, each stage's figures and nanochat's summary table, read from the
    speedrun's state, or else from the newest run of each stage.

    Args:
        hourly_rate: What the machine costs per hour, in dollars (8×H100: about 24); the report estimates the run's
            cost from it. Default: the speedrun's hourly_rate, if it was given one.
        output: Directory for report.md and the plots; default: report/ in the data home.
    """
    from nanochat_pl.report import write_report

    if hourly_rate is not None and hourly_rate < 0:
        raise UserError(f"hourly_rate cannot be negative, got {hourly_rate}")
    path, summary = write_report(output, hourly_rate)
    print(summary)
    print(f"wrote {path}")

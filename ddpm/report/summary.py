"""The `summary` stage: every run of the grid as one row of summary.csv, and the headline
numbers as metrics.json for DVC."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ddpm.data.artefacts import SCOREBOARD_KEYS
from ddpm.pipeline.config import Config
from ddpm.plumbing.files import atomic_write_bytes, atomic_write_json, check_output_file
from ddpm.report.runs import COLUMNS, collect_runs


def scoreboard(rows: list[dict]) -> dict[str, dict[str, float]]:
    """The headline numbers of every scored run, by run id: numbers only, for DVC (those that
    evaluate.metrics leaves out are left out)."""
    keys = (*SCOREBOARD_KEYS, "fd_dinov2")
    return {
        r["run_id"]: {k: r[k] for k in keys if r.get(k) is not None}
        for r in rows
        if r.get("fid") is not None
    }


def write_summary(
    cfg: Config, runs_dir: str | Path, out: str | Path, metrics_out: str | Path
) -> list[dict]:
    """summary.csv (every column of every run) and metrics.json (the `scoreboard`)."""
    check_output_file(out)
    check_output_file(metrics_out)
    rows = collect_runs(cfg, runs_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out, buf.getvalue().encode())
    atomic_write_json(metrics_out, scoreboard(rows))
    return rows

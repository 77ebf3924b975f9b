"""Comparing the runs of a sweep. For now: one table (CSV) of every run's settings and scores;
the HTML report builds on `collect_runs`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ddpm.config import Config, expand_grid
from ddpm.diffusion import build_diffusion
from ddpm.files import atomic_write_bytes
from ddpm.schedules import terminal_stats

COLUMNS = [
    "run_id",
    "status",
    "T",
    "schedule",
    "objective",
    "sampler",
    "nfe_per_image",
    "alpha_bar_T",
    "terminal_snr",
    "parameters",
    "steps",
    "images_seen",
    "train_time_s",
    "train_images_per_s",
    "final_loss",
]
METRIC_KEYS = [
    "fid",
    "fid_reliable",
    "is_mean",
    "is_std",
    "kid_mean",
    "kid_std",
    "n_generated",
    "test_weights",
]
COLUMNS += METRIC_KEYS


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect_runs(cfg: Config, runs_dir: str | Path) -> list[dict]:
    """One row per run of the grid, whatever state its files are in (never silently dropped)."""
    rows = []
    for run in expand_grid(cfg):
        d = Path(runs_dir) / run.id
        train, sample, metrics = (
            _read(d / n) for n in ("train_summary.json", "sample_summary.json", "metrics.json")
        )
        dc = run.config.diffusion
        row = {
            "run_id": run.id,
            "T": dc.T,
            "schedule": dc.schedule,
            "objective": dc.objective,
            "sampler": run.config.sample.method,
            **terminal_stats(build_diffusion(dc).betas),
        }
        missing = [
            n
            for n, v in (("training", train), ("samples", sample), ("metrics", metrics))
            if v is None
        ]
        row["status"] = "ok" if not missing else "missing " + ", ".join(missing)
        if train:
            row.update(
                parameters=train["parameters"],
                steps=train["steps"],
                images_seen=train["images_seen"],
                train_time_s=train["wall_time_s"],
                train_images_per_s=train["images_per_s"],
                final_loss=train["final_loss"],
            )
        if sample:
            row["nfe_per_image"] = sample["nfe_per_image"]
        if metrics:
            row.update({k: metrics[k] for k in METRIC_KEYS})
        rows.append(row)
    return rows


def write_summary(cfg: Config, runs_dir: str | Path, out: str | Path) -> list[dict]:
    rows = collect_runs(cfg, runs_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out, buf.getvalue().encode())
    return rows

"""Every run of the grid as a row (every sampler variant of every network), read from what its
stages left on disk, whatever state its files are in: what the summary and the report show."""

from __future__ import annotations

from pathlib import Path

from ddpm.data.artefacts import METRIC_KEYS, read_json
from ddpm.diffusion.schedules import betas_of, terminal_stats
from ddpm.evaluation.names import DINOV2_KEYS
from ddpm.pipeline.config import Config
from ddpm.pipeline.layout import NetworkFiles, VariantFiles
from ddpm.pipeline.stages import plan
from ddpm.plumbing.errors import ArtefactError

COLUMNS = [
    "run_id",
    "network",
    "variant",
    "status",
    "T",
    "schedule",
    "objective",
    "sampler",
    "nfe_per_image",
    "sample_s_per_1000",
    "alpha_bar_T",
    "terminal_snr",
    "parameters",
    "steps",
    "images_seen",
    "train_time_s",
    "train_images_per_s",
    "final_loss",
]


EVALUATION_KEYS = ["fid_reliable", "test_weights", "features"]
SCORE_KEYS = [*METRIC_KEYS, *DINOV2_KEYS]  # those evaluate.metrics leaves out stay empty
COLUMNS += SCORE_KEYS + EVALUATION_KEYS


# The seed project's setting: T = 350 with betas rising linearly from 1e-4 to 2e-2.
SEED_SETTING = {"T": 350, "schedule": "linear", "beta_start": 1e-4, "beta_end": 2e-2}


def read_or_none(path: Path) -> dict | None:
    """A run's JSON file, or None while it is missing or unreadable (the row says so)."""
    try:
        return read_json(path)
    except ArtefactError:
        return None


def collect_runs(cfg: Config, runs_dir: str | Path) -> list[dict]:
    """One row per sampler variant of every network of the grid, whatever state its files are
    in (never silently dropped). `run_id` is the network id, followed by `/variant` when the
    grid has sampler variants."""
    the_plan = plan(cfg)
    rows = []
    runs = Path(runs_dir)
    for variant in the_plan.variants:
        net = NetworkFiles(runs / variant.network)
        var = VariantFiles(runs / variant.network / variant.id)
        train = read_or_none(net.summary)
        sample, metrics, evaluation = (
            read_or_none(var.summary),
            read_or_none(var.metrics),
            read_or_none(var.evaluation),
        )
        dc = variant.config.diffusion
        row = {
            **dict.fromkeys(COLUMNS),  # every column exists, None until a file provides it
            "device": None,
            "run_id": variant.key if the_plan.variant_axes else variant.network,
            "network": variant.network,
            "variant": variant.id,
            "params": {
                **next(n.params for n in the_plan.networks if n.id == variant.network),
                **variant.params,
            },
            "T": dc.T,
            "schedule": dc.schedule,
            "objective": dc.objective,
            "sampler": variant.config.sample.method,
            "seed_setting": all(getattr(dc, k) == v for k, v in SEED_SETTING.items()),
            **terminal_stats(betas_of(dc)),
        }
        _fill(row, train, sample, metrics, evaluation)
        rows.append(row)
    return rows


def _fill(row: dict, train, sample, metrics, evaluation) -> None:
    """A row's status and the columns its run's files provide (None: a file is missing)."""
    missing = [
        name
        for name, found in (
            ("training", train),
            ("samples", sample),
            ("metrics", metrics and evaluation),
        )
        if not found
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
            device=train.get("device"),
        )
    if sample:
        row["nfe_per_image"] = sample["nfe_per_image"]
        row["sample_s_per_1000"] = 1000 / sample["images_per_s"]
    if metrics and evaluation:
        row.update({k: metrics.get(k) for k in SCORE_KEYS})
        row.update({k: evaluation.get(k) for k in EVALUATION_KEYS})
        row["dinov2_weights"] = evaluation.get("dinov2")  # how FD_DINOv2 was computed, if it was

"""`dvc.yaml` for the same stages as the Snakemake workflow, with the same commands and paths.

The file is generated (`python -m ddpm dvc-yaml`) because its matrix axes follow the config's
grid keys. DVC itself reads the grid's values, the results folder and the stage parameters from
the config (`vars:`, `params:`), so both tools build the same run ids and paths from one file.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ddpm.config import Config, expand_grid, load_config

HEADER = (
    "# Generated from {config} by `python -m ddpm dvc-yaml --config {config} --out dvc.yaml`;\n"
    "# regenerate after changing the grid (a test checks that this file is current).\n"
)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):  # write shared lists out in full, not as &id001 anchors
        return True


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _axis(key: str, values: list) -> tuple[str, object]:
    """Matrix name and values of a grid axis: interpolated from the config when DVC can
    address the key, else written out (dotted keys, booleans)."""
    name = re.sub(r"\W", "_", key)
    if _IDENTIFIER.match(key) and not any(isinstance(v, bool) for v in values):
        return name, f"${{grid.{key}}}"
    return name, [str(v).lower() if isinstance(v, bool) else v for v in values]


def render_file(config_path: str | Path) -> str:
    """dvc.yaml for a config file; `config_path` as the commands should name it."""
    raw = yaml.safe_load(Path(config_path).read_text()) or {}
    return render(load_config(config_path), str(config_path), set(raw))


def render(cfg: Config, config_path: str, sections: set[str]) -> str:
    """The text of dvc.yaml for the config at `config_path` (relative to the repository);
    `sections` are the config file's top-level keys (DVC can only track those as params)."""

    def params(*names: str) -> dict:
        present = [n for n in names if n in sections]
        return {"params": [{config_path: present}]} if present else {}

    r = "${results_dir}"
    ddpm = f"python -m ddpm {{}} --config {config_path}"
    data, manifest = f"{r}/data/dataset.npy", f"{r}/data/dataset.json"
    weights = cfg.evaluate.inception_weights
    stages: dict[str, dict] = {}

    raw = [f"{r}/raw/{name}" for name in cfg.data.md5]
    if cfg.data.source == "flowers102":
        stages["download"] = {"cmd": ddpm.format("download") + f" --out {r}/raw", "outs": raw}
    stages["preprocess"] = {
        "cmd": ddpm.format("preprocess")
        + (f" --raw {r}/raw" if cfg.data.source == "flowers102" else "")
        + f" --out {data}",
        "deps": raw if cfg.data.source == "flowers102" else [],
        **params("data"),
        "outs": [data, manifest],
    }
    if not stages["preprocess"]["deps"]:
        del stages["preprocess"]["deps"]
    if cfg.evaluate.inception_source == "test":
        weights_cmd = f"python -m ddpm make-test-inception --out {weights}"
    else:
        weights_cmd = ddpm.format("fetch-weights") + f" --out {weights}"
    stages["inception_weights"] = {"cmd": weights_cmd, "outs": [weights]}
    reference = f"{r}/reference.pt"
    stages["reference_stats"] = {
        "cmd": ddpm.format("reference-stats")
        + f" --data {data} --weights {weights}"
        + f" --out {reference}",
        "deps": [data, weights],
        **params("evaluate"),
        "outs": [reference],
    }

    matrix = dict(_axis(k, v) for k, v in cfg.grid.items())
    run_id = (
        "_".join(f"{key}~${{item.{name}}}" for key, name in zip(cfg.grid, matrix, strict=True))
        or "default"
    )
    run_dir = f"{r}/runs/{run_id}"

    def per_run(stage: dict) -> dict:
        return {"matrix": matrix, **stage} if matrix else stage

    stages["train"] = per_run(
        {
            "cmd": ddpm.format("train") + f" --run {run_id} --data {data} --out {run_dir}",
            "deps": [data],
            **params("data", "model", "diffusion", "train"),
            "outs": [
                f"{run_dir}/final.pt",
                f"{run_dir}/train_summary.json",
                {f"{run_dir}/checkpoint.pt": {"persist": True}},
            ],  # kept for resuming
            "plots": [
                {
                    f"{run_dir}/train_log.csv": {
                        "cache": False,
                        "persist": True,
                        "x": "step",
                        "y": "loss",
                    }
                }
            ],
        }
    )
    stages["sample"] = per_run(
        {
            "cmd": ddpm.format("sample")
            + f" --run {run_id} --ckpt {run_dir}/final.pt"
            + f" --out {run_dir}",
            "deps": [f"{run_dir}/final.pt"],
            **params("sample"),
            "outs": [
                f"{run_dir}/samples.npz",
                f"{run_dir}/grid.png",
                f"{run_dir}/trajectory.png",
                {f"{run_dir}/sample_summary.json": {"cache": False}},
            ],
        }
    )
    stages["evaluate"] = per_run(
        {
            "cmd": ddpm.format("evaluate")
            + f" --samples {run_dir}/samples.npz"
            + f" --reference {reference} --weights {weights} --out {run_dir}/metrics.json",
            "deps": [f"{run_dir}/samples.npz", reference, weights],
            "metrics": [{f"{run_dir}/metrics.json": {"cache": False}}],
        }
    )
    summary = f"{r}/summary.csv"
    stages["summary"] = {
        "cmd": ddpm.format("summary") + f" --runs {r}/runs --out {summary}",
        "deps": [f"{r}/runs/{run.id}/metrics.json" for run in expand_grid(cfg)],
        "outs": [{summary: {"cache": False}}],
    }
    runs = [f"{r}/runs/{run.id}" for run in expand_grid(cfg)]
    stages["report"] = {
        "cmd": ddpm.format("report") + f" --runs {r}/runs --data {data} --out {r}/report.html",
        "deps": [data]
        + [
            f"{d}/{name}"
            for d in runs
            for name in ("metrics.json", "train_summary.json", "samples.npz", "trajectory.png")
        ],
        "outs": [{f"{r}/report.html": {"cache": False}}],
    }
    doc = {"vars": [f"{config_path}:grid,results_dir"], "stages": stages}
    text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000)
    return HEADER.format(config=config_path) + text

# Wiring shared by the rule files. All logic lives in the `ddpm` package; these helpers only
# turn the validated config into paths.
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # the ddpm package next to the Snakefile

from ddpm.config import config_from_dict, config_hash, expand_grid  # noqa: E402

CFG = config_from_dict(config)  # raises ConfigError naming the key before any job runs
RUNS = {run.id: run for run in expand_grid(CFG)}
RESULTS = CFG.results_dir
DDPM = f"PYTHONPATH={workflow.basedir} python -m ddpm"  # the command every rule runs


def _resolved_config_file():
    """The merged config (configfile + --configfile + --config) that every command reads."""
    path = Path(RESULTS) / "config.resolved.json"
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    if (
        not path.exists() or path.read_text() != text
    ):  # rewrite only on change: keeps mtimes
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(path)


CONFIG = _resolved_config_file()


def get_final_target():
    return f"{RESULTS}/summary.csv"


def get_report():
    return f"{RESULTS}/report.html"


def get_dataset():
    return f"{RESULTS}/data/dataset.npy"


def get_weights():
    return CFG.evaluate.inception_weights


def _without_workers(cfg):
    """The config minus data.workers, which changes how fast the dataset is built, not what."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, workers=0))


def get_run_hash(wildcards):
    """Changes when anything that defines this run changes, so Snakemake reruns its chain."""
    return config_hash(_without_workers(RUNS[wildcards.run].config))


def get_data_hash():
    """Changes when a data setting changes, so Snakemake rebuilds the dataset and all after it."""
    return config_hash(_without_workers(CFG).data)


def get_raw_inputs(wildcards):
    if CFG.data.source == "flowers102":
        return rules.download.output
    return []


def get_all(filename):
    return [f"{RESULTS}/runs/{run}/{filename}" for run in RUNS]


wildcard_constraints:
    run="|".join(map(lambda r: r.replace(".", r"\."), RUNS)) or "default",

"""`dvc.yaml`, rendered from the stage table (`ddpm.stages`) for one config file.

Every stage but the first reads a settings file and depends on it, exactly as under Snakemake;
the first stage, `settings`, writes those files from the config and the package's code (and
refuses to run when this file no longer matches the config). DVC compares files by content,
so a config or code edit reruns `settings`, and then exactly the stages whose settings file
changed, and what depends on their outputs.

Everything a later stage or the report needs is a cached output, so `dvc push` / `dvc pull`
carry it all: nothing needed lives only in an ignored, uncached file.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ddpm.config import Config, format_value, load_config
from ddpm.errors import PipelineError
from ddpm.stages import (
    DEFAULT_ID,
    Plan,
    Stage,
    command_args,
    expand,
    fill,
    plan,
    quote,
    settings_code,
    settings_path,
    table,
)

HEADER = (
    "# Generated from {config} by `python -m ddpm dvc-yaml --config {config} --out dvc.yaml`.\n"
    "# Regenerate it after changing the grid or results_dir: its first stage refuses to run\n"
    "# while it does not match the config.\n"
)
# Outputs that DVC shows as metrics: one small file of every run's headline numbers, so that
# `dvc metrics show` and `dvc exp show` stay readable (each variant's metrics.json and
# evaluation.json are plain cached outputs). Every other output is a plain cached out too.
METRICS = {("summary", "metrics")}


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):  # write shared lists out in full, not as &id001 anchors
        return True


def _matrix_name(key: str) -> str:
    return re.sub(r"\W", "_", key)


def _value(v):
    """A grid value as a matrix entry: scalars as they are (a bool as ids spell it), a bundle as
    its id text (the settings themselves reach the job through its settings file)."""
    return format_value(v) if isinstance(v, (bool, dict)) else v


def _id_expression(axes: list[str]) -> str:
    """The id of a network or variant as DVC interpolates it from `${item.<axis>}`."""
    return "_".join(f"{key}~${{item.{_matrix_name(key)}}}" for key in axes) or DEFAULT_ID


def _stage_entry(stage: Stage, cfg: Config, the_plan: Plan, config_path: str) -> dict:
    if stage.scope == "network":
        axes = the_plan.network_axes
        instance = _id_expression(axes)
    elif stage.scope == "variant":
        axes = the_plan.network_axes + the_plan.variant_axes
        instance = (
            f"{_id_expression(the_plan.network_axes)}/{_id_expression(the_plan.variant_axes)}"
        )
    else:
        axes, instance = [], ""

    def path(template: str) -> str:
        return fill(template, instance) if instance else template

    settings = settings_path(cfg, stage, instance)
    cmd = ["python", "-m", "ddpm", stage.command, "--settings", quote(settings)]
    if stage.tunes:
        cmd += ["--tune-from", quote(config_path)]
    cmd += command_args(stage, path)
    deps = [settings]
    for template in stage.deps.values():
        deps += expand(template, the_plan) if stage.scope == "all" else [path(template)]
    outs: list = [path(t) for name, t in stage.outs.items() if (stage.name, name) not in METRICS]
    outs += [{path(t): {"persist": True}} for t in stage.persist.values()]
    entry: dict = {}
    if axes:
        entry["matrix"] = {_matrix_name(k): [_value(v) for v in cfg.grid[k]] for k in axes}
    entry.update(cmd=" ".join(cmd), deps=list(dict.fromkeys(deps)), outs=outs)
    metrics = [path(t) for name, t in stage.outs.items() if (stage.name, name) in METRICS]
    if metrics:
        entry["metrics"] = metrics
    return entry


def render(cfg: Config, config_path: str) -> str:
    """The text of dvc.yaml for the config at `config_path` (relative to the repository)."""
    the_plan = plan(cfg)
    stages = table(cfg)
    settings_dir = f"{cfg.results_dir}/settings"
    code = sorted({c for s in stages.values() for c in s.code} | set(settings_code()))
    entries: dict[str, dict] = {
        "settings": {
            "cmd": f"python -m ddpm settings --config {quote(config_path)} --dvc-yaml dvc.yaml "
            f"--out {quote(settings_dir)}",
            "deps": [config_path] + [f"ddpm/{name}" for name in code],
            "outs": [settings_dir],
        }
    }
    for stage in stages.values():
        entries[stage.name] = _stage_entry(stage, cfg, the_plan, config_path)
    logs = expand(stages["train"].outs["log"], the_plan)
    doc = {
        "stages": entries,
        "plots": [
            {
                "Training loss": {
                    "template": "linear",
                    "x": "step",
                    "y": {log: "loss" for log in logs},
                }
            },
            {
                "FID against sampling cost": {
                    "template": "scatter",
                    "x": "nfe_per_image",
                    "y": {stages["summary"].outs["summary"]: "fid"},
                    "x_label": "network evaluations per image",
                    "y_label": "FID",
                }
            },
        ],
    }
    text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000)
    return HEADER.format(config=config_path) + text


def render_file(config_path: str | Path) -> str:
    """dvc.yaml for a config file; `config_path` as the commands should name it."""
    return render(load_config(config_path), str(config_path))


def check_current(config_path: str | Path, dvc_yaml: str | Path) -> None:
    """Refuse to go on when `dvc_yaml` was generated from another grid, results_dir or stage
    table than `config_path` now gives (DVC would run the wrong set of stages)."""
    expected = render_file(config_path)
    try:
        current = Path(dvc_yaml).read_text()
    except OSError as e:
        raise PipelineError(f"cannot read {dvc_yaml}: {e}") from None
    if current != expected:
        raise PipelineError(
            f"{dvc_yaml} does not match {config_path} (its grid, results_dir or the stage table "
            f"changed). Regenerate it with `python -m ddpm dvc-yaml --config {config_path} "
            f"--out {dvc_yaml}` and run `dvc repro` again."
        )

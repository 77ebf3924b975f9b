"""`dvc.yaml`, rendered from the stage table (`ddpm.pipeline.stages`) for one config file.

Every stage but the first reads a settings file and depends on it, exactly as under Snakemake;
the first stage, `settings`, writes those files from the config and the package's code (and
refuses to run when this file no longer matches the config). DVC compares files by content,
so a config or code edit reruns `settings`, and then exactly the stages whose settings file
changed, and what depends on their outputs.

Everything a later stage or the report needs is a cached output, so `dvc push` / `dvc pull`
carry it all: nothing needed lives only in an ignored, uncached file.

DVC's params file, `params.yaml` beside dvc.yaml, is written with it: every setting a stage
reads that the grid leaves to the config, at the config's values. It is a layer over the config
(the `settings` stage reads both, params.yaml winning), so `dvc exp run -S train.lr=3e-4`,
`dvc params diff` and `dvc exp show` work on plain keys, and DVC's rewriting of params.yaml
never touches the commented config. Each stage declares the params it reads (from the stage
table), so `dvc status` names the stages a params edit reaches. dvc.yaml records a digest of
params.yaml as generated: after an edit of the config's settings, dvc.yaml no longer matches,
and the `settings` stage asks for both files to be generated again, rather than letting the
older params.yaml silently win.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import yaml

from ddpm.pipeline.config import (
    Config,
    expand_grid,
    format_value,
    leaf_keys,
    load_config,
    resolve_key,
    to_dict,
)
from ddpm.pipeline.fingerprints import ACCEPTED
from ddpm.pipeline.stages import (
    DEFAULT_ID,
    Plan,
    Stage,
    command_args,
    expand,
    fill,
    plan,
    quote,
    read_keys,
    settings_code,
    settings_path,
    table,
)
from ddpm.plumbing.errors import PipelineError

HEADER = (
    "# Generated from {config} by `python -m ddpm dvc-yaml --config {config} --out dvc.yaml`,\n"
    "# with params.yaml (sha256 {digest}). Regenerate both after editing {config}: the first\n"
    "# stage refuses to run while they do not match it. Change settings for DVC in params.yaml\n"
    "# or with `dvc exp run -S key=value`.\n"
)
PARAMS = "params.yaml"  # DVC's default params file, beside dvc.yaml
PARAMS_HEADER = (
    "# DVC's settings, a layer over {config}: generated with dvc.yaml, from {config}'s values.\n"
    "# Vary them here or with `dvc exp run -S key=value`; Snakemake reads only {config}.\n"
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


# -- params.yaml -----------------------------------------------------------------------------


def grid_set_keys(cfg: Config) -> set[str]:
    """The settings that every run of the grid sets itself: the config's own value is unused."""
    per_run = []
    for run in expand_grid(cfg):
        keys = set()
        for key, value in run.params.items():  # a bundle sets several settings
            keys |= {resolve_key(k) for k in (value if isinstance(value, dict) else [key])}
        per_run.append(keys)
    return set.intersection(*per_run) if per_run else set()


def params_document(cfg: Config) -> dict[str, dict]:
    """params.yaml: every setting some stage reads and the grid leaves to the config, at the
    config's value, by section (settings are `section.key`)."""
    read = {k for stage in table(cfg).values() for k in read_keys(stage)}
    values, unused = to_dict(cfg), grid_set_keys(cfg)
    document: dict[str, dict] = {}
    for key in leaf_keys():
        if key in read and key not in unused:
            section, name = key.split(".")
            document.setdefault(section, {})[name] = values[section][name]
    return document


def render_params(cfg: Config) -> str:
    return yaml.dump(params_document(cfg), Dumper=_Dumper, sort_keys=False, width=1000)


def _stage_params(stage: Stage, document: dict[str, dict]) -> list[str]:
    """The params a stage reads: a section name where it reads all of the section's params."""
    mine = set(read_keys(stage))
    out = []
    for section, names in document.items():
        keys = [f"{section}.{name}" for name in names if f"{section}.{name}" in mine]
        out += [section] if keys and len(keys) == len(names) else keys
    return out


# -- dvc.yaml ------------------------------------------------------------------------------------


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
    entry.update(cmd=" ".join(cmd), deps=list(dict.fromkeys(deps)))
    params = _stage_params(stage, params_document(cfg))
    if params:
        entry["params"] = params
    entry["outs"] = outs
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
            "cmd": f"python -m ddpm settings --config {quote(config_path)} --params {PARAMS} "
            f"--dvc-yaml dvc.yaml --out {quote(settings_dir)}",
            "deps": [config_path, str(ACCEPTED)] + [f"ddpm/{name}" for name in code],
            "params": [{PARAMS: None}],  # all of it
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
    digest = hashlib.sha256(render_params(cfg).encode()).hexdigest()[:16]
    return HEADER.format(config=config_path, digest=digest) + text


def render_files(config_path: str | Path) -> tuple[str, str]:
    """dvc.yaml and params.yaml for a config file; `config_path` as the commands name it."""
    cfg = load_config(config_path)
    header = PARAMS_HEADER.format(config=config_path)
    return render(cfg, str(config_path)), header + render_params(cfg)


def check_current(config_path: str | Path, dvc_yaml: str | Path) -> None:
    """Refuse to go on when `dvc_yaml` was generated from another grid, results_dir, stage table
    or settings than `config_path` now gives (DVC would run the wrong set of stages, or the
    params.yaml written with it would override the config's edit with the older values)."""
    expected = render_files(config_path)[0]
    try:
        current = Path(dvc_yaml).read_text()
    except OSError as e:
        raise PipelineError(f"cannot read {dvc_yaml}: {e}") from None
    if current != expected:
        raise PipelineError(
            f"{dvc_yaml} does not match {config_path} (its grid, results_dir, settings or the "
            f"stage table changed). Regenerate it and {PARAMS} with `python -m ddpm dvc-yaml "
            f"--config {config_path} --out {dvc_yaml}` and run `dvc repro` again."
        )

"""The stage table: every stage of the pipeline, the settings it reads, the code it runs and the
files it reads and writes, declared once. Snakemake's rules (`workflow/rules/*.smk`, through
`common.smk`) and `dvc.yaml` (`ddpm.dvcfile`) are both derived from it, and so is every "is this
stale?" decision:

    config  ->  settings/<stage>[/<network>[/<variant>]].json  ->  the stage's job  ->  outputs

Each settings file holds exactly the settings its stage reads (resolved, defaults included) and
a fingerprint of the stage's code, and the job reads its settings from that file and nowhere
else (`Unread` makes any other setting raise). So a setting change rewrites exactly the settings
files of the stages that read it, a code change those of the stages whose code changed, and
both tools rerun exactly those stages and what depends on their outputs.

A grid axis that only sampling or evaluation reads makes sampler *variants* of one trained
*network*: `runs/<network>/` holds the network, `runs/<network>/<variant>/` each variant.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ddpm.config import (
    Config,
    ConfigError,
    GridValue,
    bundle_keys,
    expand_grid,
    leaf_keys,
    resolve_key,
    restricted_config,
    run_id,
    to_dict,
)
from ddpm.files import atomic_write_bytes

PACKAGE = Path(__file__).resolve().parent

Scope = Literal["once", "network", "variant", "all"]

# Settings that cannot change any output, only how fast it is made: the preprocessing processes
# (tested byte-identical), and batch sizes of sampling (sample i depends only on (seed, i)) and
# of Inception. A stage takes them from the live config (`--tune`), never from its settings
# file, so changing them reruns nothing.
TUNING = ("data.workers", "sample.batch_size", "evaluate.batch_size")
# Where files live, not what is in them: the paths themselves are the stages' inputs/outputs.
LOCATIONS = ("results_dir", "evaluate.inception_weights")
EVERYTHING = "*"


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline. Path templates may hold `{network}` and `{variant}`; a stage
    of scope `all` depends on its templates expanded over every network / variant."""

    name: str  # the rule / DVC stage; the command is `python -m ddpm <name with - for _>`
    scope: Scope  # runs once, once per network, once per sampler variant, or over all of them
    reads: tuple[str, ...]  # settings: dotted keys, sections ("train"), "grid", or "*" (all)
    code: tuple[str, ...]  # package files whose content decides the outputs; [0] is the entry
    outs: dict[str, str]  # output name -> path template
    args: tuple[tuple[str, str], ...]  # the command's options after --settings: (flag, template)
    deps: dict[str, str] = field(default_factory=dict)  # input name -> path template
    tunes: tuple[str, ...] = ()  # the TUNING settings the command takes
    persist: dict[str, str] = field(default_factory=dict)  # kept across reruns (resume state)
    flags: tuple[str, ...] = ()  # options the pipeline always passes
    # Modules the entry imports whose code cannot change the declared outputs (training's
    # preview images use the sampler); a test checks the rest of the import closure is in `code`.
    side_code: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")


def _stages(cfg: Config) -> list[Stage]:
    r = cfg.results_dir
    raw = {"raw_" + re.sub(r"\W", "_", name): f"{r}/raw/{name}" for name in cfg.data.md5}
    dataset, manifest = f"{r}/data/dataset.npy", f"{r}/data/dataset.json"
    weights = cfg.evaluate.inception_weights
    reference = f"{r}/reference.pt"
    net, var = f"{r}/runs/{{network}}", f"{r}/runs/{{network}}/{{variant}}"
    flowers = cfg.data.source == "flowers102"
    stages = []
    if flowers:
        stages.append(
            Stage(
                "download",
                "once",
                reads=("data.base_url", "data.md5"),
                code=("data.py",),
                outs=raw,
                args=(("--out", f"{r}/raw"),),
                side_code=("dataset.py",),  # its error type only
            )
        )
    stages += [
        Stage(
            "preprocess",
            "once",
            reads=("data",),
            code=("data.py", "dataset.py"),
            deps=raw if flowers else {},
            outs={"data": dataset, "manifest": manifest},
            args=((("--raw", f"{r}/raw"),) if flowers else ()) + (("--out", dataset),),
            tunes=("data.workers",),
        ),
        Stage(
            "inception_weights",
            "once",
            reads=(
                "evaluate.inception_source",
                "evaluate.weights_url",
                "evaluate.weights_sha256_prefix",
            ),
            code=("metrics.py", "features.py", "data.py"),
            outs={"weights": weights, "sidecar": weights + ".json"},
            args=(("--out", weights),),
            side_code=("dataset.py", "devices.py"),
        ),
        Stage(
            "reference_stats",
            "once",
            reads=(
                "evaluate.weights_sha256_prefix",
                "evaluate.device",
                "evaluate.kid_subset_size",
                "evaluate.kid_subsets",
                "evaluate.reference_max_images",
                "evaluate.seed",
            ),
            code=("metrics.py", "features.py", "dataset.py", "devices.py"),
            deps={"data": dataset, "manifest": manifest, "weights": weights},
            outs={"reference": reference},
            args=(("--data", dataset), ("--weights", weights), ("--out", reference)),
            tunes=("evaluate.batch_size",),
            side_code=("data.py",),  # the flower generator, which only trains the features
        ),
        Stage(
            "train",
            "network",
            reads=("model", "diffusion", "train"),
            code=(
                "train.py",
                "model.py",
                "unet.py",
                "diffusion.py",
                "schedules.py",
                "ema.py",
                "dataset.py",
                "devices.py",
            ),
            deps={"data": dataset, "manifest": manifest},
            outs={
                "final": f"{net}/final.pt",
                "summary": f"{net}/train_summary.json",
                "log": f"{net}/train_log.csv",
            },
            persist={"checkpoint": f"{net}/checkpoint.pt"},
            args=(("--data", dataset), ("--out", net)),
            flags=("--restart-if-changed",),
            side_code=("sampling.py", "images.py"),
        ),
        Stage(
            "sample",
            "variant",
            reads=("sample",),
            code=(
                "sampling.py",
                "model.py",
                "unet.py",
                "diffusion.py",
                "schedules.py",
                "devices.py",
                "images.py",
            ),
            deps={"final": f"{net}/final.pt"},
            outs={
                "samples": f"{var}/samples.npz",
                "grid": f"{var}/grid.png",
                "trajectory": f"{var}/trajectory.png",
                "summary": f"{var}/sample_summary.json",
            },
            args=(("--ckpt", f"{net}/final.pt"), ("--out", var)),
            tunes=("sample.batch_size",),
        ),
        Stage(
            "evaluate",
            "variant",
            reads=(
                "evaluate.weights_sha256_prefix",
                "evaluate.device",
                "evaluate.kid_subset_size",
                "evaluate.kid_subsets",
                "evaluate.is_splits",
                "evaluate.fid_halves",
                "evaluate.seed",
            ),
            code=("metrics.py", "features.py", "devices.py"),
            deps={"samples": f"{var}/samples.npz", "reference": reference, "weights": weights},
            outs={"metrics": f"{var}/metrics.json", "evaluation": f"{var}/evaluation.json"},
            args=(
                ("--samples", f"{var}/samples.npz"),
                ("--reference", reference),
                ("--weights", weights),
                ("--out", var),
            ),
            tunes=("evaluate.batch_size",),
            side_code=("dataset.py", "data.py"),
        ),
    ]
    per_run = {
        "train_summary": f"{net}/train_summary.json",
        "sample_summary": f"{var}/sample_summary.json",
        "metrics": f"{var}/metrics.json",
        "evaluation": f"{var}/evaluation.json",
    }
    stages += [
        Stage(
            "summary",
            "all",
            # The grid's runs and their settings; not how the report is drawn.
            reads=("grid", "data", "model", "diffusion", "train", "sample", "evaluate"),
            code=("report.py", "schedules.py", "diffusion.py"),
            deps=per_run,
            outs={"summary": f"{r}/summary.csv"},
            args=(("--runs", f"{r}/runs"), ("--out", f"{r}/summary.csv")),
            side_code=("dataset.py", "images.py"),
        ),
        Stage(
            "report",
            "all",
            reads=(EVERYTHING,),
            code=(
                "report.py",
                "templates/report.html.j2",
                "schedules.py",
                "diffusion.py",
                "images.py",
                "dataset.py",
            ),
            deps={
                **per_run,
                "train_log": f"{net}/train_log.csv",
                "samples": f"{var}/samples.npz",
                "trajectory": f"{var}/trajectory.png",
                "data": dataset,
                "manifest": manifest,
            },
            outs={"report": f"{r}/report.html"},
            args=(("--runs", f"{r}/runs"), ("--data", dataset), ("--out", f"{r}/report.html")),
        ),
    ]
    return stages


def table(cfg: Config) -> dict[str, Stage]:
    """The stages of the pipeline for `cfg`, in order (download only for Flowers-102)."""
    return {s.name: s for s in _stages(cfg)}


def get_stage(name: str, cfg: Config | None = None) -> Stage:
    stages = table(cfg or Config())
    if name not in stages:
        raise ConfigError(f"this config has no stage '{name}'; its stages: {', '.join(stages)}")
    return stages[name]


# -- what a stage reads --------------------------------------------------------------------------


def read_keys(stage: Stage) -> list[str]:
    """The dotted settings a stage's job reads from its settings file (`grid` for `*`)."""
    leaves = leaf_keys()
    if EVERYTHING in stage.reads:
        keys = ["grid", *leaves]
    else:
        keys = ["grid"] if "grid" in stage.reads else []
        for pattern in (p for p in stage.reads if p != "grid"):
            matched = [k for k in leaves if k == pattern or k.startswith(pattern + ".")]
            assert matched, f"stage {stage.name} reads unknown settings {pattern!r}"
            keys += matched
    return [k for k in keys if k not in TUNING and k not in LOCATIONS]


def _pick(tree: dict, keys: list[str]) -> dict:
    """The nested sub-dict of `tree` holding only the dotted `keys`."""
    out: dict = {}
    for key in keys:
        node, src = out, tree
        *parents, leaf = key.split(".")
        for p in parents:
            node, src = node.setdefault(p, {}), src[p]
        node[leaf] = src[leaf]
    return out


def settings_of(stage: Stage, cfg: Config) -> dict:
    """The settings `stage` reads, from the resolved config of one of its instances."""
    return _pick(to_dict(cfg), read_keys(stage))


def code_files(stage: Stage) -> list[Path]:
    return [PACKAGE / name for name in stage.code]


def code_fingerprint(stage: Stage) -> str:
    """sha256 over the stage's code files (name and content): changes when its code does."""
    h = hashlib.sha256()
    for path in code_files(stage):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def job_config(stage: Stage, settings: dict, tuning: dict[str, Any] | None = None) -> Config:
    """The config a job runs with: its settings, the tuning it takes, and `Unread` elsewhere."""
    raw = json.loads(json.dumps(settings))
    for key, value in (tuning or {}).items():
        if key not in stage.tunes:
            raise ConfigError(
                f"--tune {key}: stage '{stage.name}' takes only {', '.join(stage.tunes) or 'none'}"
            )
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return restricted_config(raw, set(read_keys(stage)) | set(stage.tunes), stage.name)


def tuning_of(stage: Stage, cfg: Config) -> dict[str, Any]:
    """The tuning settings `stage` takes, read from a (live) config."""
    tree = to_dict(cfg)
    out = {}
    for key in stage.tunes:
        section, leaf = key.split(".")
        out[key] = tree[section][leaf]
    return out


# -- networks and sampler variants ----------------------------------------------------------------


@dataclass(frozen=True)
class Network:
    """A trained network: its id (its grid values) and the config it is trained with."""

    id: str
    params: dict[str, GridValue]
    config: Config


@dataclass(frozen=True)
class Variant:
    """A sampler / evaluation variant of a network; lives in `runs/<network>/<id>/`."""

    network: str
    id: str
    params: dict[str, GridValue]
    config: Config

    @property
    def key(self) -> str:
        return f"{self.network}/{self.id}"


@dataclass(frozen=True)
class Plan:
    networks: list[Network]
    variants: list[Variant]
    network_axes: list[str]  # grid keys (as written) that make networks
    variant_axes: list[str]  # grid keys that make variants of each network


DEFAULT_ID = run_id({})


def _axis_kind(key: str, values: list, stages: dict[str, Stage]) -> Literal["network", "variant"]:
    """Whether a grid axis changes what is trained or only how it is sampled / evaluated; a
    bundle axis must do one or the other with all its settings."""
    bundle = bundle_keys(key, values)
    if bundle is not None:
        kinds = {_setting_kind(dotted, f"grid.{key}.{k}", stages) for k, dotted in bundle.items()}
        if len(kinds) > 1:
            raise ConfigError(
                f"grid.{key}: a bundle's settings must all be read by training or all only by "
                "sampling and evaluation; split it into two axes"
            )
        return kinds.pop()
    return _setting_kind(resolve_key(key), f"grid.{key}", stages)


def _setting_kind(
    dotted: str, where: str, stages: dict[str, Stage]
) -> Literal["network", "variant"]:
    key = where.removeprefix("grid.")
    if dotted in TUNING or dotted in LOCATIONS:
        raise ConfigError(
            f"grid.{key}: {dotted} cannot change a result, so it cannot be a grid axis"
        )
    readers = [s for s in stages.values() if s.scope != "all" and dotted in read_keys(s)]
    once = [s.name for s in readers if s.scope == "once"]
    if once:
        raise ConfigError(
            f"grid.{key}: {dotted} is read by {', '.join(once)}, which runs once for every "
            "run of the grid; it cannot vary across runs. Set it outside the grid."
        )
    if any(s.scope == "network" for s in readers):
        return "network"
    if readers:
        return "variant"
    raise ConfigError(
        f"grid.{key}: {dotted} is read by no training, sampling or evaluation stage, so varying "
        "it would only repeat the same runs"
    )


def plan(cfg: Config) -> Plan:
    """The networks to train and the sampler variants of each, from `cfg`'s grid.

    Network ids join the training axes (`T~1000_schedule~cosine`), variant ids the sampling /
    evaluation axes (`method~ddim_steps~50`); `default` where there are none."""
    stages = table(Config())  # what each stage reads does not depend on the config
    kinds = {key: _axis_kind(key, values, stages) for key, values in cfg.grid.items()}
    network_axes = [k for k in cfg.grid if kinds[k] == "network"]
    variant_axes = [k for k in cfg.grid if kinds[k] == "variant"]
    networks: dict[str, Network] = {}
    variants: dict[str, Variant] = {}
    for run in expand_grid(cfg):
        net_params = {k: run.params[k] for k in network_axes}
        var_params = {k: run.params[k] for k in variant_axes}
        net_id = run_id(net_params)
        var_id = run_id(var_params)
        if net_id not in networks:  # training reads none of the variant axes
            networks[net_id] = Network(net_id, net_params, run.config)
        variants[f"{net_id}/{var_id}"] = Variant(net_id, var_id, var_params, run.config)
    return Plan(
        networks=sorted(networks.values(), key=lambda n: n.id),
        variants=sorted(variants.values(), key=lambda v: v.key),
        network_axes=network_axes,
        variant_axes=variant_axes,
    )


def instances(stage: Stage, cfg: Config, the_plan: Plan | None = None) -> dict[str, Config]:
    """The instances of a stage ('' for a stage that runs once) and each one's config."""
    the_plan = the_plan or plan(cfg)
    if stage.scope == "network":
        return {n.id: n.config for n in the_plan.networks}
    if stage.scope == "variant":
        return {v.key: v.config for v in the_plan.variants}
    return {"": cfg}


def fill(template: str, instance: str) -> str:
    """A path template of a stage filled in for one instance ('network' or 'network/variant')."""
    network, _, variant = instance.partition("/")
    return template.format(network=network, variant=variant)


def expand(template: str, the_plan: Plan) -> list[str]:
    """A template over every network (if it names `{network}` only) or every variant."""
    if "{variant}" in template:
        return [fill(template, v.key) for v in the_plan.variants]
    if "{network}" in template:
        return [fill(template, n.id) for n in the_plan.networks]
    return [template]


# -- settings files ------------------------------------------------------------------------------


def settings_name(stage: Stage, instance: str = "") -> str:
    """`train/T~1000`: where an instance's settings live under `<results>/settings/`."""
    return f"{stage.name}/{instance}" if instance else stage.name


def settings_path(cfg: Config, stage: Stage, instance: str = "") -> str:
    return f"{cfg.results_dir}/settings/{settings_name(stage, instance)}.json"


def settings_document(stage: Stage, instance: str, instance_cfg: Config) -> dict:
    return {
        "stage": stage.name,
        "instance": instance,
        "code": code_fingerprint(stage),
        "settings": settings_of(stage, instance_cfg),
    }


def all_settings(cfg: Config) -> dict[str, str]:
    """Every settings file of the pipeline: name (see `settings_name`) -> text."""
    the_plan = plan(cfg)
    out = {}
    for stage in table(cfg).values():
        for instance, instance_cfg in instances(stage, cfg, the_plan).items():
            document = settings_document(stage, instance, instance_cfg)
            text = json.dumps(document, indent=2, sort_keys=True) + "\n"
            out[settings_name(stage, instance)] = text
    return out


def write_all_settings(cfg: Config, folder: str | Path) -> list[str]:
    """Write every settings file of `cfg` under `folder`; returns their names."""
    texts = all_settings(cfg)
    for name, text in texts.items():
        atomic_write_bytes(Path(folder) / f"{name}.json", text.encode())
    return sorted(texts)


class SettingsError(ConfigError):
    pass


def read_settings(path: str | Path, stage: Stage) -> dict:
    """A settings file written by the pipeline, checked to belong to `stage`."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(
            f"settings file {path} does not exist; the pipeline writes it (or run the stage "
            "with --config CONFIG instead of --settings)"
        ) from None
    except (OSError, ValueError) as e:
        raise SettingsError(
            f"settings file {path} is unreadable ({e}); delete it and rerun"
        ) from None
    if not isinstance(document, dict) or document.get("stage") != stage.name:
        raise SettingsError(
            f"{path} holds the settings of stage {document.get('stage')!r}"
            if isinstance(document, dict)
            else f"{path} is not a settings file"
        )
    return document


def find_instance(stage: Stage, cfg: Config, run: str | None) -> tuple[str, Config]:
    """The instance of `stage` that `--run` names (a network id, or network/variant)."""
    options = instances(stage, cfg)
    if stage.scope in ("once", "all"):
        if run:
            raise ConfigError(f"stage '{stage.name}' runs once for the whole grid; drop --run")
        return "", cfg
    if run is None and len(options) == 1:
        return next(iter(options.items()))
    if run in options:
        return run, options[run]
    if stage.scope == "variant" and run is not None and f"{run}/{DEFAULT_ID}" in options:
        return f"{run}/{DEFAULT_ID}", options[f"{run}/{DEFAULT_ID}"]
    what = "network" if stage.scope == "network" else "network/variant"
    raise ConfigError(
        f"--run {run}: not a {what} of this grid; choose one of: {', '.join(options)}"
    )


def prepare(name: str, cfg: Config, run: str | None = None) -> tuple[Config, dict]:
    """What a stage's job gets from a whole config (by hand, or in tests): the config it runs
    with and its settings document, exactly as the pipeline's settings file would give them."""
    stage = get_stage(name, cfg)
    instance, instance_cfg = find_instance(stage, cfg, run)
    document = settings_document(stage, instance, instance_cfg)
    return job_config(stage, document["settings"], tuning_of(stage, cfg)), document


# -- the command a tool runs ---------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z0-9_./~+=:@%,${}-]+$")  # needs no quoting in a shell command


def quote(path: str) -> str:
    """A path as a shell word: as it is when it is plain (ids hold `~`, templates `{}`/`${}`)."""
    return path if _PLAIN.match(path) else shlex.quote(path)


def command_args(stage: Stage, fmt) -> list[str]:
    """The options after `--settings S`, each path template passed through `fmt`."""
    out = list(stage.flags)
    for flag, template in stage.args:
        out += [flag, quote(fmt(template))]
    return out

"""The stage table: every stage of the pipeline, the settings it reads, the code it runs and the
files it reads and writes, declared once (`STAGES`). Snakemake's rules (`workflow/rules/*.smk`,
through `common.smk`) and `dvc.yaml` (`ddpm.pipeline.dvcfile`) are both derived from it, and so
is every "is this stale?" decision:

    config  ->  settings/<stage>[/<network>[/<variant>]].json  ->  the stage's job  ->  outputs

Each settings file holds exactly the settings its stage reads (resolved, defaults included) and
a fingerprint of the stage's code, and the job reads its settings from that file and nowhere
else (`Unread` makes any other setting raise). So a setting change rewrites exactly the settings
files of the stages that read it, a code change those of the stages whose code changed, and
both tools rerun exactly those stages and what depends on their outputs (`reruns` says which).

A stage's code is its entry module (one per stage, named after it) and the package modules it
imports, outside the pipeline layer and the plumbing: computed from the imports, never listed
by hand, and fingerprinted by what the code does (`ddpm.pipeline.fingerprints`).

A grid axis that only sampling or evaluation reads makes sampler *variants* of one trained
*network*: `runs/<network>/` holds the network, `runs/<network>/<variant>/` each variant.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ddpm.data.artefacts import settings_digest
from ddpm.pipeline.config import (
    LOCATIONS,
    TUNING,
    Config,
    ConfigError,
    Run,
    bundle_keys,
    expand_grid,
    leaf_keys,
    load_config,
    resolve_key,
    restricted_config,
    run_id,
    to_dict,
)
from ddpm.pipeline.fingerprints import (
    ACCEPTED,
    PACKAGE,
    AcceptanceError,
    accept,
    effective,
    fingerprint,
    import_closure,
    read_accepted,
    recorded_code,
)
from ddpm.pipeline.layout import NetworkFiles, PipelineFiles, VariantFiles
from ddpm.plumbing.files import atomic_write_bytes

Scope = Literal["once", "network", "variant", "all"]
EVERYTHING = "*"
# Path placeholders: filled from the config by `table`, and per instance by `fill`.
RESULTS = PipelineFiles(Path("{results}"))
WEIGHTS = "{weights}"  # evaluate.inception_weights
DINOV2 = "{dinov2}"  # evaluate.dinov2_weights
PATH_SETTINGS = {WEIGHTS: "evaluate.inception_weights", DINOV2: "evaluate.dinov2_weights"}
RAW_FILE = "{results}/raw/{raw}"  # one output per file of data.md5
NET = NetworkFiles(RESULTS.runs / "{network}")
VAR = VariantFiles(RESULTS.runs / "{network}" / "{variant}")


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline. Path templates may hold `{network}` and `{variant}`; a stage
    of scope `all` depends on its templates expanded over every network / variant."""

    name: str  # the rule / DVC stage; the command is `python -m ddpm <name with - for _>`
    scope: Scope  # runs once, once per network, once per sampler variant, or over all of them
    reads: tuple[str, ...]  # settings: dotted keys, sections ("train"), "grid", or "*" (all)
    entry: str  # the stage's own module (package-relative); its import closure is its code
    outs: dict[str, str]  # output name -> path template
    args: tuple[tuple[str, str], ...]  # the command's options after --settings: (flag, template)
    deps: dict[str, str] = field(default_factory=dict)  # input name -> path template
    tunes: tuple[str, ...] = ()  # the TUNING settings the command takes
    persist: dict[str, str] = field(default_factory=dict)  # kept across reruns (resume state)
    flags: tuple[str, ...] = ()  # options the pipeline always passes
    assets: tuple[str, ...] = ()  # package files besides modules that decide the outputs
    # (dotted setting, value): the stage exists only when the setting is, or lists, the value
    when: tuple[str, Any] | None = None

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    @property
    def code(self) -> tuple[str, ...]:
        """The package files whose content decides the outputs: the entry's import closure
        and the assets."""
        return import_closure(self.entry) + self.assets


# The settings that scoring images reads, for the reference and for every variant alike.
SCORING = (
    "evaluate.weights_sha256_prefix",
    "evaluate.device",
    "evaluate.kid_subset_size",
    "evaluate.kid_subsets",
    "evaluate.seed",
)
PER_RUN = {  # what the summary and the report read of every run
    "train_summary": str(NET.summary),
    "sample_summary": str(VAR.summary),
    "metrics": str(VAR.metrics),
    "evaluation": str(VAR.evaluation),
}

STAGES: tuple[Stage, ...] = (
    Stage(
        "download",
        "once",
        reads=("data.base_url", "data.md5"),
        entry="data/download.py",
        outs={"raw": RAW_FILE},
        args=(("--out", str(RESULTS.raw)),),
        when=("data.source", "flowers102"),
    ),
    Stage(
        "preprocess",
        "once",
        reads=("data",),
        entry="data/preprocess.py",
        deps={"raw": RAW_FILE},
        outs={"data": str(RESULTS.dataset), "manifest": str(RESULTS.manifest)},
        args=(("--raw", str(RESULTS.raw)), ("--out", str(RESULTS.dataset))),
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
        entry="evaluation/inception_weights.py",
        outs={"weights": WEIGHTS, "sidecar": WEIGHTS + ".json"},
        args=(("--out", WEIGHTS),),
    ),
    Stage(
        "reference_stats",
        "once",
        reads=(*SCORING, "evaluate.reference_max_images"),
        entry="evaluation/reference_stats.py",
        deps={"data": str(RESULTS.dataset), "manifest": str(RESULTS.manifest), "weights": WEIGHTS},
        outs={"reference": str(RESULTS.reference)},
        args=(
            ("--data", str(RESULTS.dataset)),
            ("--weights", WEIGHTS),
            ("--out", str(RESULTS.reference)),
        ),
        tunes=("evaluate.batch_size",),
    ),
    Stage(
        "dinov2_weights",
        "once",
        reads=(
            "evaluate.dinov2_source",
            "evaluate.dinov2_url",
            "evaluate.dinov2_sha256_prefix",
        ),
        entry="evaluation/dinov2_weights.py",
        outs={"weights": DINOV2, "sidecar": DINOV2 + ".json"},
        args=(("--out", DINOV2),),
        when=("evaluate.metrics", "fd_dinov2"),
    ),
    Stage(
        "dinov2_reference",
        "once",
        reads=(
            "evaluate.device",
            "evaluate.reference_max_images",
            "evaluate.seed",
        ),
        entry="evaluation/dinov2_reference.py",
        deps={"data": str(RESULTS.dataset), "manifest": str(RESULTS.manifest), "weights": DINOV2},
        outs={"reference": str(RESULTS.dinov2_reference)},
        args=(
            ("--data", str(RESULTS.dataset)),
            ("--weights", DINOV2),
            ("--out", str(RESULTS.dinov2_reference)),
        ),
        tunes=("evaluate.batch_size",),
        when=("evaluate.metrics", "fd_dinov2"),
    ),
    Stage(
        "train",
        "network",
        reads=("model", "diffusion", "train"),
        entry="training/train.py",
        deps={"data": str(RESULTS.dataset), "manifest": str(RESULTS.manifest)},
        outs={
            "final": str(NET.final),
            "summary": str(NET.summary),
            "log": str(NET.log),
            "snapshot_index": str(NET.snapshot_index),
        },
        # Resume state, and the snapshots so far: a rerun must not lose them.
        persist={"checkpoint": str(NET.checkpoint), "snapshots": str(NET.snapshots)},
        args=(("--data", str(RESULTS.dataset)), ("--out", str(NET.folder))),
        flags=("--restart-if-changed",),
    ),
    Stage(
        "progress",
        "network",
        reads=("progress", "evaluate.weights_sha256_prefix"),
        entry="evaluation/progress.py",
        deps={
            # The index lists the snapshots (files in train's persistent folder, which Snakemake
            # cannot take as an input); final.pt changes with every new training.
            "snapshot_index": str(NET.snapshot_index),
            "final": str(NET.final),
            "reference": str(RESULTS.reference),
            "weights": WEIGHTS,
        },
        outs={"progress": str(NET.progress)},
        args=(
            ("--snapshots", str(NET.snapshot_index)),
            ("--ckpt", str(NET.final)),
            ("--reference", str(RESULTS.reference)),
            ("--weights", WEIGHTS),
            ("--out", str(NET.progress)),
        ),
        tunes=("progress.batch_size",),
    ),
    Stage(
        "sample",
        "variant",
        reads=("sample",),
        entry="sampling/sample.py",
        deps={"final": str(NET.final)},
        outs={
            "samples": str(VAR.samples),
            "grid": str(VAR.grid),
            "trajectory": str(VAR.trajectory),
            "summary": str(VAR.summary),
        },
        args=(("--ckpt", str(NET.final)), ("--out", str(VAR.folder))),
        tunes=("sample.batch_size",),
    ),
    Stage(
        "evaluate",
        "variant",
        reads=(
            *SCORING,
            "evaluate.is_splits",
            "evaluate.fid_halves",
            "evaluate.metrics",
        ),
        entry="evaluation/evaluate.py",
        # The DINOv2 files only where their stages exist (evaluate.metrics lists fd_dinov2).
        deps={
            "samples": str(VAR.samples),
            "reference": str(RESULTS.reference),
            "weights": WEIGHTS,
            "dinov2_reference": str(RESULTS.dinov2_reference),
            "dinov2_weights": DINOV2,
        },
        outs={"metrics": str(VAR.metrics), "evaluation": str(VAR.evaluation)},
        args=(
            ("--samples", str(VAR.samples)),
            ("--reference", str(RESULTS.reference)),
            ("--weights", WEIGHTS),
            ("--dinov2-reference", str(RESULTS.dinov2_reference)),
            ("--dinov2-weights", DINOV2),
            ("--out", str(VAR.folder)),
        ),
        tunes=("evaluate.batch_size",),
    ),
    Stage(
        "summary",
        "all",
        # The grid's runs and their settings; not how the report is drawn.
        reads=("grid", "data", "model", "diffusion", "train", "sample", "evaluate"),
        entry="report/summary.py",
        deps=PER_RUN,
        outs={"summary": str(RESULTS.summary), "metrics": str(RESULTS.metrics)},
        args=(
            ("--runs", str(RESULTS.runs)),
            ("--out", str(RESULTS.summary)),
            ("--metrics", str(RESULTS.metrics)),
        ),
    ),
    Stage(
        "report",
        "all",
        reads=(EVERYTHING,),
        entry="report/report.py",
        deps={
            **PER_RUN,
            "train_log": str(NET.log),
            "progress": str(NET.progress),
            "samples": str(VAR.samples),
            "trajectory": str(VAR.trajectory),
            "data": str(RESULTS.dataset),
            "manifest": str(RESULTS.manifest),
            "accepted": str(ACCEPTED),  # its provenance lists the accepted code changes
        },
        outs={"report": str(RESULTS.report)},
        args=(
            ("--runs", str(RESULTS.runs)),
            ("--data", str(RESULTS.dataset)),
            ("--accepted", str(ACCEPTED)),
            ("--out", str(RESULTS.report)),
        ),
        assets=("report/templates/report.html.j2",),
    ),
)
BY_NAME = {s.name: s for s in STAGES}


# -- the table for one config --------------------------------------------------------------------


def _applies(stage: Stage, cfg: Config) -> bool:
    if stage.when is None:
        return True
    key, value = stage.when
    current = _value_of(cfg, key)
    return value in current if isinstance(current, tuple) else current == value


def _absent(cfg: Config) -> set[str]:
    """The path templates of stages this config does not have: a stage that reads one of them
    reads it only where it exists."""
    return {t for s in STAGES if not _applies(s, cfg) for t in s.outs.values()} - {RAW_FILE}


def _value_of(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _downloads(cfg: Config) -> bool:
    """Whether this config downloads its data (then preprocessing reads the raw folder)."""
    return _applies(BY_NAME["download"], cfg)


def _bind(template: str, cfg: Config) -> str:
    template = template.replace("{results}", cfg.results_dir)
    for placeholder, key in PATH_SETTINGS.items():
        template = template.replace(placeholder, _value_of(cfg, key))
    return template


def _bind_paths(templates: dict[str, str], cfg: Config) -> dict[str, str]:
    """Templates with `{results}` and `{weights}` filled in; the `{raw}` template becomes one
    entry per downloaded file (none when the data is not downloaded)."""
    out = {}
    absent = _absent(cfg)
    for name, template in templates.items():
        if template in absent:
            continue
        if template != RAW_FILE:
            out[name] = _bind(template, cfg)
        elif _downloads(cfg):
            for file in cfg.data.md5:
                out[name + "_" + re.sub(r"\W", "_", file)] = _bind(template, cfg).replace(
                    "{raw}", file
                )
    return out


def bind(stage: Stage, cfg: Config) -> Stage:
    """`stage` with its path templates filled in for `cfg` (networks and variants still open)."""
    raw_dir = str(RESULTS.raw)
    absent = _absent(cfg) | (set() if _downloads(cfg) else {raw_dir})
    return dataclasses.replace(
        stage,
        outs=_bind_paths(stage.outs, cfg),
        deps=_bind_paths(stage.deps, cfg),
        persist=_bind_paths(stage.persist, cfg),
        args=tuple((flag, _bind(t, cfg)) for flag, t in stage.args if t not in absent),
    )


def table(cfg: Config) -> dict[str, Stage]:
    """The stages of the pipeline for `cfg`, in order, with its paths filled in."""
    return {s.name: bind(s, cfg) for s in STAGES if _applies(s, cfg)}


def check_results_dir(cfg: Config) -> None:
    """Refuse a results_dir that cannot hold the pipeline's folders, before any job runs."""
    path = Path(cfg.results_dir)
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(
            f"results_dir: {cfg.results_dir!r} cannot be a folder, because {blocker} is a file; "
            "move the file or choose another results_dir"
        )


def get_stage(name: str, cfg: Config | None = None) -> Stage:
    cfg = cfg or Config()
    if name not in BY_NAME:
        raise ConfigError(f"there is no stage '{name}'; the stages: {', '.join(BY_NAME)}")
    stage = BY_NAME[name]
    if not _applies(stage, cfg):
        key, value = stage.when
        current = _value_of(cfg, key)
        verb = "lists" if isinstance(current, tuple) else "is"
        raise ConfigError(
            f"stage '{name}' runs only when {key} {verb} {value!r}; this config's {key} is "
            f"{list(current) if isinstance(current, tuple) else current!r}"
        )
    return bind(stage, cfg)


# -- the code a stage runs -----------------------------------------------------------------------


def code_files(stage: Stage) -> list[Path]:
    return [PACKAGE / name for name in stage.code]


def code_fingerprint(stage: Stage, accepted: list[dict] = ()) -> str:
    """The fingerprint of the stage's code (`fingerprints.fingerprint`), or, where a change to
    it was accepted as result-neutral (`accepted`), the one its results were made with."""
    return effective(stage.name, fingerprint(stage.code), list(accepted))


def settings_code() -> tuple[str, ...]:
    """The modules that decide what the settings files hold: the config, the stage table, and
    everything they import (the `settings` step's own code)."""
    return import_closure("pipeline/dvcfile.py", whole=True)


# -- what a stage reads, and what a change reruns ------------------------------------------------


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


def _downstream(names: set[str]) -> set[str]:
    """`names` and every stage that reads, directly or not, what they write."""
    templates = {s.name: set(s.outs.values()) | set(s.persist.values()) for s in STAGES}
    found = set(names)
    changed = True
    while changed:
        changed = False
        for s in STAGES:
            if s.name not in found and any(
                d in templates[f] for f in found for d in s.deps.values()
            ):
                found.add(s.name)
                changed = True
    return found


def readers(key: str) -> list[str]:
    """The stages whose settings or files a change to setting `key` changes: those that read
    it (none for a tuning setting), or for a location, those whose files it names."""
    if key in TUNING:
        return []
    if key == "results_dir":
        return [s.name for s in STAGES]
    if key in LOCATIONS:  # a weights file: a path in the table
        placeholder = next(p for p, k in PATH_SETTINGS.items() if k == key)
        return [s.name for s in STAGES if any(placeholder in t for t in s.outs.values())]
    return [s.name for s in STAGES if key in read_keys(s)]


def reruns(key: str) -> list[str]:
    """The stages that rerun when setting `key` changes: its readers and every stage after
    them (an output that comes out byte-identical can stop that chain early)."""
    found = _downstream(set(readers(key)))
    return [s.name for s in STAGES if s.name in found]


# -- networks and sampler variants ----------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A sampler / evaluation variant of a network; lives in `runs/<network>/<id>/`."""

    network: str
    id: str
    params: dict[str, Any]
    config: Config

    @property
    def key(self) -> str:
        return f"{self.network}/{self.id}"


@dataclass(frozen=True)
class Plan:
    networks: list[Run]  # each network's id, the grid values that make it, its config
    variants: list[Variant]
    network_axes: list[str]  # grid keys (as written) that make networks
    variant_axes: list[str]  # grid keys that make variants of each network


DEFAULT_ID = run_id({})


def _axis_kind(key: str, values: list) -> Literal["network", "variant"]:
    """Whether a grid axis changes what is trained or only how it is sampled / evaluated; a
    bundle axis must do one or the other with all its settings."""
    bundle = bundle_keys(key, values)
    if bundle is not None:
        kinds = {_setting_kind(dotted, f"grid.{key}.{k}") for k, dotted in bundle.items()}
        if len(kinds) > 1:
            raise ConfigError(
                f"grid.{key}: a bundle's settings must all be read by training or all only by "
                "sampling and evaluation; split it into two axes"
            )
        return kinds.pop()
    return _setting_kind(resolve_key(key), f"grid.{key}")


def _setting_kind(dotted: str, where: str) -> Literal["network", "variant"]:
    key = where.removeprefix("grid.")
    if dotted in TUNING or dotted in LOCATIONS:
        raise ConfigError(
            f"grid.{key}: {dotted} cannot change a result, so it cannot be a grid axis"
        )
    readers = [s for s in STAGES if s.scope != "all" and dotted in read_keys(s)]
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
    kinds = {key: _axis_kind(key, values) for key, values in cfg.grid.items()}
    network_axes = [k for k in cfg.grid if kinds[k] == "network"]
    variant_axes = [k for k in cfg.grid if kinds[k] == "variant"]
    networks: dict[str, Run] = {}
    variants: dict[str, Variant] = {}
    for run in expand_grid(cfg):
        net_params = {k: run.params[k] for k in network_axes}
        var_params = {k: run.params[k] for k in variant_axes}
        net_id = run_id(net_params)
        var_id = run_id(var_params)
        if net_id not in networks:  # training reads none of the variant axes
            networks[net_id] = Run(net_id, net_params, run.config)
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


def settings_name(stage: Stage, instance: str = "") -> str:
    """`train/T~1000`: where an instance's settings live under `<results>/settings/`."""
    return f"{stage.name}/{instance}" if instance else stage.name


def settings_path(cfg: Config, stage: Stage, instance: str = "") -> str:
    return _bind(f"{RESULTS.settings}/{settings_name(stage, instance)}.json", cfg)


def settings_document(
    stage: Stage, instance: str, instance_cfg: Config, code: str | None = None
) -> dict:
    """What a job reads: its stage and instance, its code's fingerprint, its settings, and for
    a variant the network it must be given (id and training settings' digest, checked against
    the network's final.pt)."""
    document = {
        "stage": stage.name,
        "instance": instance,
        "code": code or code_fingerprint(stage, read_accepted()),
        "settings": settings_of(stage, instance_cfg),
    }
    # A job given a network's weights, or the samples of one, knows which network it must be.
    if stage.scope == "variant" or str(NET.final) in BY_NAME[stage.name].deps.values():
        network = instance.partition("/")[0]
        trained = settings_of(BY_NAME["train"], instance_cfg)
        document["network"] = {"id": network, "settings_digest": settings_digest(trained)}
    return document


def all_settings(cfg: Config, root: str | Path = ".") -> dict[str, str]:
    """Every settings file of the pipeline: name (see `settings_name`) -> text. `root` is the
    project, whose `config/accepted-code.yaml` says which code changes were accepted."""
    the_plan = plan(cfg)
    accepted = read_accepted(Path(root) / ACCEPTED)
    out = {}
    for stage in table(cfg).values():
        code = code_fingerprint(stage, accepted)
        for instance, instance_cfg in instances(stage, cfg, the_plan).items():
            document = settings_document(stage, instance, instance_cfg, code)
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


# -- what a job runs with ------------------------------------------------------------------------


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
    return {key: _value_of(cfg, key) for key in stage.tunes}


def prepare(name: str, cfg: Config, run: str | None = None) -> tuple[Config, dict]:
    """What a stage's job gets from a whole config (by hand, or in tests): the config it runs
    with and its settings document, exactly as the pipeline's settings file would give them."""
    stage = get_stage(name, cfg)
    instance, instance_cfg = find_instance(stage, cfg, run)
    document = settings_document(stage, instance, instance_cfg)
    return job_config(stage, document["settings"], tuning_of(stage, cfg)), document


def load_job(
    name: str,
    *,
    settings: str | None = None,
    config: str | None = None,
    run: str | None = None,
    overrides: dict[str, Any] | None = None,
    tune: dict[str, Any] | None = None,
    tune_from: str | None = None,
) -> tuple[Config, dict]:
    """The config a stage command runs with, and its settings document: from `settings` (what
    the pipeline passes: the file the job was fingerprinted with) or from `config` and `run` by
    hand, computed the same way. Tuning settings (which cannot change a result) come from
    `tune`, from the `tune_from` config file, or from `config` itself."""
    if bool(settings) == bool(config):
        raise ConfigError(
            "give either --settings FILE (as the pipeline does) or --config FILE [--run ID]"
        )
    if settings:
        if overrides or run:
            raise ConfigError("--set and --run go with --config, not with --settings")
        stage = get_stage(name)
        document = read_settings(settings, stage)
        tuning = tuning_of(stage, load_config(tune_from)) if tune_from else {}
    else:
        cfg = load_config(config, overrides)
        stage = get_stage(name, cfg)
        _, document = prepare(name, cfg, run)
        tuning = tuning_of(stage, cfg)
    tuning.update(tune or {})
    return job_config(stage, document["settings"], tuning), document


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


# -- accepting a code change as result-neutral ---------------------------------------------------


def accept_code(
    cfg: Config, names: list[str], reason: str, path: str | Path = ACCEPTED
) -> list[str]:
    """Accept the current code of the stages `names` as making the results they hold: each keeps
    the fingerprint its settings files record (`fingerprints.accept`). Returns lines to print:
    one per stage, and the stages whose code also moved and will rerun unless accepted too."""
    if not reason.strip():
        raise AcceptanceError("say why the change cannot alter a result: --reason TEXT")
    settings_dir = Path(_bind(str(RESULTS.settings), cfg))
    accepted = read_accepted(path)
    lines = []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        stage = get_stage(name, cfg)
        current = fingerprint(stage.code)
        made_with = recorded_code(settings_dir, stage.name)
        if not made_with:
            raise AcceptanceError(
                f"stage {stage.name}: no settings file under {settings_dir}/ records the code "
                "its results were made with (it has not run), so there is nothing to keep"
            )
        if len(made_with) > 1:
            raise AcceptanceError(
                f"stage {stage.name}: its results were made by {len(made_with)} versions of its "
                f"code ({', '.join(sorted(made_with))}); run the pipeline to bring them to one"
            )
        (old,) = made_with
        if effective(stage.name, current, accepted) == old:
            lines.append(f"{stage.name}: its results were made with this code; nothing to accept")
            continue
        entry = accept(stage.name, old, current, reason, path)
        accepted.append(entry)
        lines.append(f"{stage.name}: code {current} accepted as {old}; its results stand")
    moved = [
        s.name
        for s in table(cfg).values()
        if (made := recorded_code(settings_dir, s.name))
        and code_fingerprint(s, accepted) not in made
    ]
    if moved:
        lines.append(
            f"the code of {', '.join(moved)} changed too: they rerun unless accepted as well"
        )
    lines.append(f"recorded in {path}; commit it with the change")
    return lines

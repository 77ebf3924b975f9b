"""The typed configuration: the only code that reads the YAML config.

`load_config(path)` returns a frozen `Config`; every key is declared once below with its type,
default, allowed range, a one-line doc and its effect: whether changing it changes results (and
training must start over), changes results while a checkpoint stays valid (`resumable`), only
changes how fast results are made (`tuning`), or only where files live (`location`). The JSON
schema and config/README.md are generated from these declarations (`ddpm.pipeline.docs`).

The experiment grid (`grid:`) maps config keys to lists of values; `expand_grid` turns it into
runs with stable ids such as `T~1000_schedule~cosine`, each with its fully resolved config.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ddpm.diffusion.presets import PRESETS
from ddpm.diffusion.schedules import RENAMED, SCHEDULES
from ddpm.plumbing.errors import PipelineError


class ConfigError(PipelineError, ValueError):
    """A user's mistake in the config: the message names the dotted key, the value and the fix."""


# What changing a setting does; each setting declares one (see `setting`).
Effect = Literal["result", "resumable", "tuning", "location"]
EFFECTS: dict[str, str] = {
    "result": "changes results: the stages that read it rerun from scratch",
    "resumable": "changes results, but a training checkpoint stays valid: training resumes",
    "tuning": "changes only how fast results are made: nothing reruns",
    "location": "says where files live: the stages whose files move rerun",
}


def setting(
    default: Any,
    doc: str,
    *,
    ge=None,
    gt=None,
    le=None,
    lt=None,
    effect: Effect = "result",
) -> Any:
    """Declare a config key: its default, a one-line doc, (for numbers) its allowed range, and
    what changing it does (`EFFECTS`)."""
    bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    meta = {"doc": doc, "effect": effect, **{k: v for k, v in bounds.items() if v is not None}}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


FLOWERS_URL = "https://thor.robots.ox.ac.uk/flowers/102"
FLOWERS_MD5 = {
    "102flowers.tgz": "52808999861908f626f3c1f4e79d11fa",
    "imagelabels.mat": "e0620be6f572b9609742df49c70aed4d",
    "setid.mat": "a5357ecc9cb78c4bef273ce3793fc85c",
}
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
# What evaluate.metrics may list: scores of the Inception features, and FD_DINOv2.
Score = Literal["fid", "is", "kid", "prdc", "fd_dinov2"]

# Values that meant something else once: the error for them says what to write instead.
RENAMED_VALUES = {"diffusion.schedule": RENAMED}

Device = Literal["auto", "cpu", "cuda"]
# The diffusion's modes; `ddpm.diffusion` checks its arguments against these same names.
Objective = Literal["eps", "x0", "v"]
LossWeighting = Literal["uniform", "min_snr"]
Variance = Literal["beta_tilde", "beta"]
Method = Literal["ddpm", "ddim", "dpmpp-2m", "dpmpp-3m"]
Spacing = Literal["linspace", "leading", "trailing"]
DdimTarget = Literal["next", "stride"]
Precision = Literal["bf16", "fp16", "fp32"]
Compile = Literal["auto"] | bool


@dataclass(frozen=True)
class DataConfig:
    source: Literal["flowers102", "folder", "synthetic"] = setting(
        "flowers102", "where images come from: Oxford 102 Flowers, a folder, or built-in synthetic"
    )
    base_url: str = setting(
        FLOWERS_URL, "base URL holding 102flowers.tgz, imagelabels.mat, setid.mat"
    )
    md5: dict[str, str] = setting(FLOWERS_MD5, "expected md5 of each downloaded file")
    splits: tuple[Literal["train", "val", "test"], ...] = setting(
        ("train", "val", "test"), "Flowers-102 splits to use (all three: 8,189 images)"
    )
    image_size: int = setting(64, "side of the square training images in pixels", ge=8, le=1024)
    skip_corrupt: bool = setting(False, "skip (and list) unreadable images instead of failing")
    resample: Literal["bilinear", "bicubic", "lanczos"] = setting(
        "bilinear",
        "antialiased resize filter: bilinear (torchvision's Resize default), or the sharper and "
        "slower bicubic / lanczos",
    )
    folder: str | None = setting(None, "image folder, searched recursively (source: folder)")
    synthetic_count: int = setting(4096, "number of images (source: synthetic)", ge=1)
    synthetic_seed: int = setting(0, "seed of the synthetic dataset (source: synthetic)", ge=0)
    workers: int = setting(
        0, "preprocessing processes; 0 means one per CPU core", ge=0, effect="tuning"
    )


@dataclass(frozen=True)
class ModelConfig:
    preset: Literal[tuple(PRESETS)] = setting(  # type: ignore[valid-type]
        "base",
        "U-Net size: tiny (1.1M, CPU demos), ddpm (38.3M, the DDPM paper's layout), base (59.8M)",
    )
    base_channels: int | None = setting(
        None, "width of the first level (overrides the preset)", ge=8
    )
    channel_mults: tuple[int, ...] | None = setting(
        None, "width multiplier per resolution level (overrides the preset)"
    )
    num_res_blocks: int | None = setting(
        None, "residual blocks per level (overrides the preset)", ge=1
    )
    attention_resolutions: tuple[int, ...] | None = setting(
        None, "feature-map sides (px) that get self-attention (overrides the preset)"
    )
    dropout: float | None = setting(
        None, "dropout in residual blocks (overrides the preset)", ge=0.0, lt=1.0
    )


@dataclass(frozen=True)
class DiffusionConfig:
    T: int = setting(1000, "number of diffusion steps", ge=2, le=100_000)
    schedule: Literal[tuple(SCHEDULES)] = setting(  # type: ignore[valid-type]
        "linear", "beta schedule (one function each in ddpm/diffusion/schedules.py)"
    )
    beta_start: float = setting(1.0e-4, "first beta of the linear schedules", gt=0.0, lt=1.0)
    beta_end: float = setting(2.0e-2, "last beta of the linear schedules", gt=0.0, lt=1.0)
    cosine_s: float = setting(0.008, "offset s of the cosine schedule", ge=0.0, lt=1.0)
    objective: Objective = setting("eps", "what the network predicts")
    loss_weighting: LossWeighting = setting(
        "uniform", "uniform (L_simple) or min-SNR-gamma weighting"
    )
    min_snr_gamma: float = setting(5.0, "gamma of min-SNR weighting", gt=0.0)


@dataclass(frozen=True)
class TrainConfig:
    device: Device = setting("auto", "auto = CUDA when present, else CPU", effect="resumable")
    precision: Precision = setting("bf16", "autocast precision on CUDA (CPU always trains in fp32)")
    compile: Compile = setting(
        "auto", "torch.compile the network; auto = on CUDA only", effect="resumable"
    )
    batch_size: int = setting(128, "images per optimiser step", ge=1)
    gpus: int = setting(
        1,
        "processes that train the network together, one per GPU (on the CPU when there is no "
        "GPU), each on train.batch_size / gpus of every batch; the same experiment as one",
        ge=1,
        effect="resumable",
    )
    lr: float = setting(2.0e-4, "peak AdamW learning rate", gt=0.0, lt=1.0)
    weight_decay: float = setting(0.0, "AdamW weight decay", ge=0.0)
    warmup_steps: int = setting(1000, "linear learning-rate warmup", ge=0)
    grad_clip: float = setting(1.0, "max global gradient norm; 0 disables clipping", ge=0.0)
    steps: int = setting(
        50_000, "optimiser steps (ignored when epochs is set)", ge=1, effect="resumable"
    )
    epochs: float | None = setting(
        None,
        "train this many passes over the data instead of steps",
        gt=0.0,
        effect="resumable",
    )
    max_minutes: float | None = setting(
        None, "stop (and checkpoint) after this wall time", gt=0.0, effect="resumable"
    )
    ema_decay: float = setting(0.9999, "EMA decay of the weights used for sampling", ge=0.0, lt=1.0)
    ema_warmup: bool = setting(True, "ramp the EMA decay up as (1 + n) / (10 + n)")
    checkpoint_every: int = setting(2000, "steps between checkpoints", ge=1, effect="resumable")
    log_every: int = setting(100, "steps between rows of train_log.csv", ge=1, effect="resumable")
    preview_every: int = setting(
        5000, "steps between preview grids; 0 disables them", ge=0, effect="resumable"
    )
    seed: int = setting(0, "seed of batches, flips, timesteps and noise", ge=0)
    hflip: bool = setting(True, "random horizontal flips")
    snapshot_every: int = setting(
        0,
        "steps between EMA snapshots, whose FID the progress stage measures (0: none). Chosen "
        "before training: a snapshot cannot be made afterwards",
        ge=0,
    )


@dataclass(frozen=True)
class SampleConfig:
    method: Method = setting(
        "ddpm",
        "ancestral DDPM over all T steps; DDIM; or DPM-Solver++ (Lu et al. 2022), multistep, "
        "second (2m) or third (3m) order",
    )
    steps: int | None = setting(
        None, "network calls of DDIM or DPM-Solver++ (null: all T); DDPM always takes T", ge=1
    )
    spacing: Spacing = setting(
        "linspace",
        "where DDIM and DPM-Solver++ call the network among the T timesteps, as diffusers' "
        "DDIMScheduler places them: linspace (evenly from T-1 to 0), leading (multiples of "
        "T // steps from 0) or trailing (from T-1 down in strides of T / steps)",
    )
    call_at_zero: bool = setting(
        True,
        "linspace and leading spacing: the last network call is at t = 0, where diffusers' "
        "DDIMScheduler places it; false places steps + 1 points and drops t = 0, so the chain "
        "steps from its lowest call straight to the clean sample, as diffusers' "
        "DPMSolverMultistepScheduler does (needs steps < T; trailing never calls at t = 0 "
        "unless steps = T)",
    )
    ddim_target: DdimTarget = setting(
        "next",
        "where each DDIM step lands: next, the chain's next call (Song et al. 2021); stride, "
        "t - T // steps, as diffusers' DDIMScheduler does, which is the same for leading "
        "spacing but for linspace lands between calls, and for trailing when steps does not "
        "divide T may end at t = 0 instead of the clean sample",
    )
    lower_order_final: bool = setting(
        True,
        "DPM-Solver++ under 15 steps: at most second order at the second-to-last step (the "
        "last, to t = 0, is always first order), as diffusers does",
    )
    eta: float = setting(0.0, "DDIM stochasticity: 0 deterministic, 1 DDPM-like", ge=0.0, le=1.0)
    variance: Variance = setting(
        "beta_tilde", "DDPM reverse variance: posterior beta_tilde or beta (Ho et al. sec. 3.2)"
    )
    clip_denoised: bool = setting(True, "clip the predicted x0 to [-1, 1] at each step")
    num_images: int = setting(
        10_000, "images to sample for evaluation (FID's covariance needs 2 or more)", ge=2
    )
    batch_size: int = setting(256, "images per network call", ge=1, effect="tuning")
    seed: int = setting(0, "sample i depends only on (seed, i)", ge=0)
    device: Device = setting("auto", "auto = CUDA when present, else CPU")
    precision: Precision = setting("bf16", "autocast precision on CUDA")
    compile: Compile = setting("auto", "torch.compile the network; auto = on CUDA only")
    trajectory_images: int = setting(6, "samples shown in trajectory.png", ge=1)
    trajectory_points: int = setting(8, "columns of trajectory.png, from x_T to the sample", ge=2)


@dataclass(frozen=True)
class EvaluateConfig:
    inception_weights: str = setting(
        "results/weights/inception-2015-12-05.pth",
        "FID Inception weights file (torch-fidelity's)",
        effect="location",
    )
    inception_source: Literal["download", "synthetic", "test", "test-small"] = setting(
        "download",
        "download the real Inception weights; or train features on the synthetic flowers' "
        "attributes (offline demo; not comparable with published FIDs); or build random "
        "Inception weights, or a small random feature network (tests only: they do not rank "
        "quality)",
    )
    weights_url: str = setting(INCEPTION_URL, "where the inception-weights stage downloads them")
    weights_sha256_prefix: str = setting(
        "6726825d", "leading hex digits of the weights' sha256 (torch hub convention)"
    )
    batch_size: int = setting(64, "images per Inception forward pass", ge=1, effect="tuning")
    device: Device = setting("auto", "auto = CUDA when present, else CPU")
    kid_subset_size: int = setting(1000, "KID subset size (capped at the number of images)", ge=2)
    kid_subsets: int = setting(100, "KID subsets averaged (their spread is KID's +-)", ge=2)
    is_splits: int = setting(10, "Inception Score splits", ge=1)
    fid_halves: int = setting(
        20, "random halves of the generated images whose FIDs give FID's +- (0: none)", ge=0
    )
    reference_max_images: int | None = setting(
        None, "use at most this many real images for reference statistics (null: all)", ge=4
    )
    seed: int = setting(0, "seed of KID subsets and the real-vs-real split", ge=0)
    metrics: tuple[Score, ...] = setting(
        ("fid", "is", "kid", "prdc", "fd_dinov2"),
        "scores to compute: fid (always), is, kid, prdc (precision, recall, density, coverage), "
        "fd_dinov2 (Frechet distance of DINOv2 ViT-L/14 features, as EDM2 reports; ~1 s an image "
        "on a CPU)",
    )
    dinov2_weights: str = setting(
        "results/weights/dinov2_vitl14_pretrain.pth",
        "DINOv2 ViT-L/14 weights file (Meta's original), when metrics lists fd_dinov2",
        effect="location",
    )
    dinov2_source: Literal["download", "test", "test-small"] = setting(
        "download",
        "download Meta's DINOv2 ViT-L/14 weights; or build random ones of that architecture, or "
        "of a 2-block ViT of its family (tests only: they rank nothing)",
    )
    dinov2_url: str = setting(DINOV2_URL, "where the dinov2-weights stage downloads them")
    dinov2_sha256_prefix: str = setting(
        "",
        "leading hex digits of the DINOv2 weights' sha256; empty: not pinned (no checksum is "
        "published), then the file's size and architecture are checked and its sha256 recorded",
    )


@dataclass(frozen=True)
class ProgressConfig:
    steps: int = setting(20, "deterministic DDIM steps per snapshot's samples", ge=1)
    num_images: int = setting(
        2500, "images sampled per snapshot (FID needs more than 2,048 for full rank)", ge=2
    )
    fid_halves: int = setting(10, "random halves of the images whose FIDs give FID's +-", ge=2)
    seed: int = setting(0, "sample i depends only on (seed, i); also seeds the halves", ge=0)
    batch_size: int = setting(
        250, "images per network call and per Inception pass", ge=1, effect="tuning"
    )
    device: Device = setting("auto", "auto = CUDA when present, else CPU")
    precision: Precision = setting("bf16", "autocast precision of sampling on CUDA")


@dataclass(frozen=True)
class ReportConfig:
    title: str = setting("DDPM sweep", "heading of the HTML report")
    grid_images: int = setting(
        36, "samples per run shown in the report (same seeds for all runs)", ge=1
    )
    memorisation_samples: int = setting(
        4, "samples per run matched to their nearest training images", ge=0
    )
    nearest_neighbours: int = setting(3, "training images shown per memorisation sample", ge=1)
    metric: Literal["fid", "fd_dinov2"] = setting(
        "fid", "the score the verdict ranks settings by (one that evaluate.metrics lists)"
    )
    smallest_effect: float = setting(
        1.0,
        "the smallest difference of report.metric that matters: undecided comparisons say what "
        "would resolve it, and FID over training is flat when it changes less per 10% of training",
        gt=0.0,
    )


Scalar = str | int | float | bool
# A grid value is one setting's value, or for a bundle axis (see `bundle_keys`) a mapping of
# several settings that vary together: {sample.method: ddim, sample.steps: 50}.
GridValue = Scalar | dict[str, Scalar | None]


@dataclass(frozen=True)
class Config:
    results_dir: str = setting("results", "where the pipeline writes everything", effect="location")
    grid: dict[str, list[GridValue]] = setting({}, "experiment axes: config key -> list of values")
    data: DataConfig = field(default_factory=DataConfig, metadata={"doc": "the dataset"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "the U-Net"})
    diffusion: DiffusionConfig = field(
        default_factory=DiffusionConfig, metadata={"doc": "the diffusion process"}
    )
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"doc": "the training loop"})
    sample: SampleConfig = field(default_factory=SampleConfig, metadata={"doc": "sampling"})
    evaluate: EvaluateConfig = field(
        default_factory=EvaluateConfig, metadata={"doc": "FID / IS / KID"}
    )
    progress: ProgressConfig = field(
        default_factory=ProgressConfig,
        metadata={"doc": "FID over training: how each snapshot of train.snapshot_every is scored"},
    )
    report: ReportConfig = field(default_factory=ReportConfig, metadata={"doc": "the HTML report"})


@dataclass(frozen=True)
class Run:
    """One point of the grid: its id, the values that define it, and its resolved config."""

    id: str
    params: dict[str, GridValue]
    config: Config


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with errors that name the dotted key.


@functools.cache
def fields_of(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def describe_type(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe_type(a) for a in args)
    if origin is tuple:
        item = args[0]
        if typing.get_origin(item) is Literal:
            return "a list, each " + describe_type(item)
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(item, "items")
    if origin in (dict, list):
        return "a mapping" if origin is dict else "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _coerce(value: Any, tp, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def bad(extra: str = "") -> ConfigError:
        return ConfigError(f"{key}: {value!r} is not {describe_type(tp)}{extra}")

    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise bad()
    if origin is Literal:
        if value not in args:
            raise bad(
                f"; use {RENAMED_VALUES[key][value]}"
                if value in RENAMED_VALUES.get(key, {})
                else ""
            )
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad()
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)) or not value:
            raise bad(" (a non-empty list)")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    return _coerce_scalar(value, tp, key, bad)


def _coerce_scalar(value: Any, tp, key: str, bad) -> Any:
    """`value` as the scalar type `tp` (bool, int, float, str), or `bad()` raised."""
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str):
                hint = " (write floats with a decimal point, e.g. 1.0e-4: YAML reads 1e-4 as text)"
            raise bad(hint)
        if not math.isfinite(value):  # .inf and .nan: no setting means anything by them
            raise ConfigError(f"{key}: {value!r} is not a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    raise TypeError(f"unsupported config type {tp} at {key}")  # a bug in this module


def _check_bounds(value: Any, meta: dict, key: str) -> None:
    if value is None:
        return
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        for op, ok, word in (
            ("ge", lambda a, b: a >= b, ">="),
            ("gt", lambda a, b: a > b, ">"),
            ("le", lambda a, b: a <= b, "<="),
            ("lt", lambda a, b: a < b, "<"),
        ):
            if op in meta and not ok(v, meta[op]):
                raise ConfigError(f"{key}: {value!r} is out of range; it must be {word} {meta[op]}")


def _build(cls, data: dict, prefix: str):
    fields = fields_of(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key '{where}{unknown[0]}'{_did_you_mean(str(unknown[0]), list(fields))}; "
            f"valid keys{' in ' + prefix if prefix else ''}: " + ", ".join(fields)
        )
    kwargs = {}
    for name, (f, tp) in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(data[name], tp, key)
            _check_bounds(kwargs[name], f.metadata, key)
    return cls(**kwargs)


def _check_consistency(cfg: Config) -> None:
    """Checks that involve more than one key."""
    d = cfg.diffusion
    if d.schedule in ("linear", "rescaled_linear") and d.beta_start >= d.beta_end:
        raise ConfigError(
            f"diffusion.beta_start ({d.beta_start}) must be smaller than "
            f"diffusion.beta_end ({d.beta_end})"
        )
    s = cfg.sample
    if s.steps is not None and s.steps > d.T:
        raise ConfigError(f"sample.steps: {s.steps} exceeds diffusion.T ({d.T})")
    dropped_zero = s.method != "ddpm" and not s.call_at_zero and s.spacing != "trailing"
    if dropped_zero and (s.steps or d.T) >= d.T:
        raise ConfigError(
            f"sample.call_at_zero: false places sample.steps + 1 points among the T = {d.T} "
            f"timesteps, so sample.steps must be under {d.T} (it is {s.steps or d.T})"
        )
    if s.method == "ddpm" and s.steps not in (None, d.T):
        raise ConfigError(
            f"sample.steps: {s.steps} is only meaningful with sample.method ddim or dpmpp-* "
            "(ancestral DDPM sampling always takes all T steps); set it to null or use ddim"
        )
    if cfg.evaluate.inception_source == "synthetic" and cfg.data.source != "synthetic":
        raise ConfigError(
            "evaluate.inception_source: 'synthetic' features only describe the synthetic "
            f"flowers, not data.source '{cfg.data.source}'; use 'download' (the real Inception)"
        )
    # Checked where a job reads them, and together where it reads both (the whole config).
    metrics, ranked = _declared(cfg, "evaluate.metrics"), _declared(cfg, "report.metric")
    if metrics is not None and "fid" not in metrics:
        raise ConfigError(
            f"evaluate.metrics: {list(metrics)} must list fid (FID over training, the report's "
            "floors and the scores' feature pass all rest on it)"
        )
    if metrics is not None and ranked is not None and ranked not in metrics:
        raise ConfigError(
            f"report.metric: {ranked!r} ranks the verdict, so evaluate.metrics must list it too "
            f"(it lists {list(metrics)})"
        )
    if cfg.train.batch_size % cfg.train.gpus:
        raise ConfigError(
            f"train.batch_size: {cfg.train.batch_size} images cannot be split evenly among "
            f"train.gpus = {cfg.train.gpus} processes; make it a multiple of {cfg.train.gpus}"
        )
    if cfg.data.source == "folder" and not cfg.data.folder:
        raise ConfigError("data.folder: must name a directory when data.source is 'folder'")
    if not cfg.data.splits:
        raise ConfigError("data.splits: name at least one of 'train', 'val', 'test'")
    from ddpm.diffusion.presets import resolve_unet_config

    try:
        resolve_unet_config(cfg.model, cfg.data.image_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _declared(cfg: Config, dotted: str) -> Any:
    """A setting's value, or None where the job's restricted config leaves it unread."""
    value: Any = cfg
    for part in dotted.split("."):
        if isinstance(value, Unread):
            return None
        value = getattr(value, part)
    return None if isinstance(value, Unread) else value


class UndeclaredSettingError(RuntimeError):
    """A stage used a setting that its entry in `ddpm.pipeline.stages` does not declare (a bug)."""


class Unread:
    """Stands in for a setting that a stage does not declare: any use of it raises, so a stage
    can never silently run on a default instead of the setting it should have declared."""

    def __init__(self, key: str, stage: str):
        self._key, self._stage = key, stage

    def _refuse(self, *args, **kwargs):
        raise UndeclaredSettingError(
            f"stage '{self._stage}' used the setting {self._key}, which its entry in "
            "ddpm/pipeline/stages.py does not declare; add it to the stage's `reads`"
        )

    def __repr__(self) -> str:
        return f"<unread {self._key}>"

    __getattr__ = __bool__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse
    __hash__ = __int__ = __float__ = __index__ = __iter__ = __len__ = __format__ = _refuse
    __str__ = __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
    __truediv__ = __rtruediv__ = __floordiv__ = __mod__ = __pow__ = __neg__ = _refuse
    __getitem__ = __contains__ = _refuse


# ---------------------------------------------------------------------------------------------
# Dotted keys, the grid, loading.


@functools.cache
def leaf_keys(cls=Config, prefix: str = "") -> tuple[str, ...]:
    """Every setting's dotted key (`grid` excluded), in declaration order."""
    keys: list[str] = []
    for name, (_, tp) in fields_of(cls).items():
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            keys += leaf_keys(tp, key + ".")
        elif name != "grid":
            keys.append(key)
    return tuple(keys)


def declaration(key: str) -> dataclasses.Field:
    """The field that declares a dotted setting (its default, doc, range and effect)."""
    cls = Config
    *parents, leaf = key.split(".")
    for name in parents:
        cls = fields_of(cls)[name][1]
    return fields_of(cls)[leaf][0]


def keys_with_effect(effect: Effect) -> tuple[str, ...]:
    """The settings that declare `effect`, in declaration order."""
    return tuple(k for k in leaf_keys() if declaration(k).metadata["effect"] == effect)


# Derived from the declarations, for the code that decides what reruns and what may resume.
TUNING = keys_with_effect("tuning")  # taken from the live config, never fingerprinted
LOCATIONS = keys_with_effect("location")  # the paths themselves are the stages' inputs/outputs
RESUMABLE = keys_with_effect("resumable")  # may differ between a checkpoint and its resume


def _did_you_mean(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def resolve_key(key: str) -> str:
    """Full dotted path of a grid or override key; a unique leaf name (`T`) is accepted too."""
    leaves = leaf_keys()
    if key in leaves:
        return key
    matches = [k for k in leaves if k.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"key '{key}' is ambiguous; write one of: {', '.join(matches)}")
    names = list(leaves) + sorted({k.rsplit(".", 1)[-1] for k in leaves})
    suggestion = _did_you_mean(key, names)
    raise ConfigError(f"unknown key '{key}'{suggestion or '; see config/README.md for every key'}")


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for p in parents:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{p}: expected a mapping of settings, got {child!r}")
        node = child
    node[leaf] = value


_ID_SAFE = re.compile(r"^[A-Za-z0-9.+-]+$")


def format_value(v: GridValue | None) -> str:
    """A grid value as run ids (and paths) spell it."""
    if isinstance(v, dict):  # a bundle: its values joined, `ddim-50`
        return "-".join(format_value(x) for x in v.values())
    if v is None:
        return "null"
    return str(v).lower() if isinstance(v, bool) else str(v)


def bundle_keys(key: str, values: list) -> dict[str, str] | None:
    """For a bundle axis, a grid key that names no setting and whose values are mappings of
    settings that vary together, the dotted setting of each of its keys; None for a plain axis."""
    if not any(isinstance(v, dict) for v in values):
        return None
    try:
        resolve_key(key)
        names_a_setting = True
    except ConfigError:
        names_a_setting = False
    if names_a_setting or not _ID_SAFE.match(key):
        raise ConfigError(
            f"grid.{key}: a list of mappings makes a bundle axis, whose name must not be a "
            "setting and may use letters, digits, '.', '+' and '-' (for example `sampler`)"
        )
    if not all(isinstance(v, dict) and v for v in values):
        raise ConfigError(f"grid.{key}: every value of a bundle axis must be a mapping of settings")
    return {k: resolve_key(k) for v in values for k in v}


def run_id(params: dict[str, GridValue]) -> str:
    """`T~1000_schedule~cosine`: grid values joined in grid order; `default` for none."""
    parts = []
    for key, v in params.items():
        text = format_value(v)
        if not _ID_SAFE.match(text):
            raise ConfigError(
                f"grid.{key}: value {v!r} cannot appear in a run id "
                "(use letters, digits, '.', '+' and '-')"
            )
        parts.append(f"{key}~{text}")
    return "_".join(parts) if parts else "default"


def with_value(cfg, dotted: str, value: Any, prefix: str = ""):
    """A copy of a config with one setting replaced, validated like the YAML's values. Other
    settings are kept as they are (an `Unread` stays unread)."""
    head, _, rest = dotted.partition(".")
    f, tp = fields_of(type(cfg))[head]
    key = prefix + head
    if rest:
        return dataclasses.replace(
            cfg, **{head: with_value(getattr(cfg, head), rest, value, key + ".")}
        )
    coerced = _coerce(value, tp, key)
    _check_bounds(coerced, f.metadata, key)
    return dataclasses.replace(cfg, **{head: coerced})


def expand_grid(cfg: Config) -> list[Run]:
    """Every combination of the grid's values, validated, sorted by id (`{}`: one run)."""
    axes = list(cfg.grid.items())
    base = dataclasses.replace(cfg, grid={})
    runs = []
    for values in itertools.product(*(vals for _, vals in axes)):
        params = dict(zip((k for k, _ in axes), values, strict=True))
        run_cfg = base
        for key, v in params.items():
            for dotted, value in v.items() if isinstance(v, dict) else [(key, v)]:
                run_cfg = with_value(run_cfg, resolve_key(dotted), value)
        _check_consistency(run_cfg)
        runs.append(Run(run_id(params), params, run_cfg))
    ids = [r.id for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"grid: values give duplicate run ids: {sorted(ids)}")
    return sorted(runs, key=lambda r: r.id)


def config_from_dict(raw: dict | None, overrides: dict[str, Any] | None = None) -> Config:
    """Validate a plain dict (as read from YAML) into a `Config`, grid runs included."""
    raw = json.loads(json.dumps(raw or {}))  # a deep copy that also rejects non-JSON values
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of sections, got {raw!r}")
    for key, value in (overrides or {}).items():
        _set_dotted(raw, resolve_key(key) if key != "grid" else key, value)
    for key, values in (raw.get("grid") or {}).items():
        if bundle_keys(key, values if isinstance(values, list) else []) is None:
            resolve_key(key)
    cfg = _build(Config, raw, "")
    _check_consistency(cfg)
    expand_grid(cfg)  # every run of the grid must be valid too
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping (PyYAML would keep the
    last silently: a second `train:` section replaced the first)."""

    def construct_mapping(self, node, deep=False):
        lines: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = lines.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key; the base class explains that one
                continue
            if first != key_node.start_mark.line + 1:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: key {key!r} is written twice in one "
                    f"mapping (first on line {first}); YAML would silently keep the last one. "
                    "Merge them into one."
                )
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> Any:
    """A YAML file's content: UTF-8, no key written twice; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give a YAML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except ConfigError as e:
        raise ConfigError(f"{path}, {e}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        hint = " (YAML indents with spaces, never tabs)" if "\\t" in problem else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}{hint}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def load_config(
    path: str | Path, overrides: dict[str, Any] | None = None, layer: str | Path | None = None
) -> Config:
    """Read and validate a YAML config; `overrides` maps dotted keys to values. `layer` is a
    YAML file of sections of settings (DVC's params.yaml) whose values replace the config's."""
    path = Path(path)
    raw = load_yaml(path)
    if raw is None:
        raise ConfigError(
            f"{path} is empty; write at least the settings that differ from the defaults (an "
            "empty file is far more often a mistake than a wish for every default)"
        )
    overrides = {**layer_values(layer), **(overrides or {})} if layer else overrides
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}{f' with {layer}' if layer else ''}: {e}") from None


def layer_values(path: str | Path) -> dict[str, Any]:
    """The settings of a layer file (`section: {key: value}`) as dotted keys, each checked."""
    raw = load_yaml(path) or {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(f"{path}: expected sections of settings (`train: {{lr: ...}}`)")
    values = {}
    for section, settings in raw.items():
        for key, value in settings.items():
            dotted = f"{section}.{key}"
            if dotted not in leaf_keys():
                suggestion = _did_you_mean(dotted, list(leaf_keys()))
                raise ConfigError(f"{path}: unknown setting '{dotted}'{suggestion or ''}")
            values[dotted] = value
    return values


def to_dict(cfg, skip_unread: bool = False) -> dict:
    """A JSON-ready dict of a config (tuples become lists). A stage's config holds `Unread`
    settings; with `skip_unread` they are left out, otherwise they raise."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value, skip_unread)
        elif isinstance(value, Unread):
            if not skip_unread:
                value._refuse()
        else:
            out[f.name] = json.loads(json.dumps(value))
    return out


def config_hash(cfg) -> str:
    text = json.dumps(to_dict(cfg, skip_unread=True), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def restricted_config(raw: dict, allowed: set[str], stage: str) -> Config:
    """A `Config` from a partial dict (a stage's settings), validated key by key, in which every
    setting outside `allowed` (dotted keys; `grid` included) is an `Unread`."""

    def poison(obj, prefix: str):
        changes = {}
        for f in dataclasses.fields(obj):
            key = f"{prefix}{f.name}"
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                changes[f.name] = poison(value, key + ".")
            elif key not in allowed:
                changes[f.name] = Unread(key, stage)
        return dataclasses.replace(obj, **changes)

    return poison(_build(Config, json.loads(json.dumps(raw)), ""), "")


def diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb, key = a.get(k), b.get(k), f"{prefix}{k}"
        if isinstance(va, dict) and isinstance(vb, dict) and k not in ("md5", "grid"):
            keys += diff_keys(va, vb, key + ".")
        elif va != vb:
            keys.append(key)
    return keys

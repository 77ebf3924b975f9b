"""Where every file of the pipeline lives, and one reader for each format the stages share.

    <results>/raw/                       download: the Flowers-102 files and jpg/
    <results>/data/dataset.npy, .json    preprocess: the uint8 images and their manifest
    <results>/reference.pt               reference_stats: real-image features
    <results>/runs/<network>/            train: `NetworkFiles` (and progress: FID of its snapshots)
    <results>/runs/<network>/<variant>/  sample and evaluate: `VariantFiles`
    <results>/settings/                  what each job read (its logs: workflow/rules/*.smk)
    <results>/summary.csv, metrics.json, report.html   the comparison

The stage table (`ddpm.pipeline.stages`) declares its inputs and outputs with these names, the
stages write them, and the report reads them back, so a file's name is written here alone. Each
artefact that a later stage reads carries a record of what it was made from (network, dataset,
image size), and its reader checks that record against what the reading job expects: a file
from another run is refused, never silently used.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddpm.plumbing.errors import PipelineError
from ddpm.plumbing.files import atomic_write_bytes, load_torch


class ArtefactError(PipelineError):
    """A file that is missing, damaged, or made for another run than the one reading it."""


@dataclass(frozen=True)
class PipelineFiles:
    """The files made once per pipeline, under `results_dir`."""

    results: Path

    @property
    def raw(self) -> Path:
        return self.results / "raw"

    @property
    def dataset(self) -> Path:
        return self.results / "data" / "dataset.npy"

    @property
    def manifest(self) -> Path:
        return manifest_path(self.dataset)

    @property
    def reference(self) -> Path:
        return self.results / "reference.pt"

    @property
    def runs(self) -> Path:
        return self.results / "runs"

    @property
    def settings(self) -> Path:
        return self.results / "settings"

    @property
    def summary(self) -> Path:
        return self.results / "summary.csv"

    @property
    def metrics(self) -> Path:
        """Every variant's headline numbers in one small file (`SCOREBOARD_KEYS`, keyed by run
        id): DVC's declared metrics, so `dvc metrics show` and `dvc exp show` stay readable."""
        return self.results / "metrics.json"

    @property
    def report(self) -> Path:
        return self.results / "report.html"


@dataclass(frozen=True)
class NetworkFiles:
    """The files of one trained network, in its folder."""

    folder: Path

    @property
    def final(self) -> Path:
        """EMA weights and the record sampling needs (`read_final`)."""
        return self.folder / "final.pt"

    @property
    def checkpoint(self) -> Path:
        """Everything to resume training exactly (`read_checkpoint`)."""
        return self.folder / "checkpoint.pt"

    @property
    def stale_checkpoint(self) -> Path:
        """A checkpoint of other settings, set aside when training starts over."""
        return self.folder / "checkpoint.stale.pt"

    @property
    def log(self) -> Path:
        """One row per `train.log_every` steps (`LOG_FIELDS`, `read_log`)."""
        return self.folder / "train_log.csv"

    @property
    def summary(self) -> Path:
        return self.folder / "train_summary.json"

    def preview(self, step: int) -> Path:
        return self.folder / "previews" / f"step_{step:07d}.png"

    @property
    def live(self) -> Path:
        """TensorBoard's event files: the live view of the log and previews
        (`ddpm.training.view`)."""
        return self.folder / "tensorboard"

    @property
    def snapshots(self) -> Path:
        """EMA weights at every `train.snapshot_every` steps, each in final.pt's format. Kept
        across reruns like the checkpoint: a resumed training cannot make them again. A
        finished training leaves it, empty when it took no snapshot."""
        return self.folder / "snapshots"

    def snapshot(self, step: int) -> Path:
        return self.snapshots / f"step_{step:07d}.pt"

    @property
    def snapshot_index(self) -> Path:
        """The snapshots of the finished training (`SNAPSHOT_KEYS` per entry), written with
        final.pt: what the progress stage depends on."""
        return self.folder / "snapshots.json"

    @property
    def progress(self) -> Path:
        """FID over training: one point per snapshot and the final weights (`POINT_KEYS`)."""
        return self.folder / "progress.json"


@dataclass(frozen=True)
class VariantFiles:
    """The files of one sampler variant of a network, in its folder."""

    folder: Path

    @property
    def samples(self) -> Path:
        """uint8 images and their record (`write_samples`, `read_samples`)."""
        return self.folder / "samples.npz"

    @property
    def grid(self) -> Path:
        return self.folder / "grid.png"

    @property
    def trajectory(self) -> Path:
        return self.folder / "trajectory.png"

    @property
    def summary(self) -> Path:
        return self.folder / "sample_summary.json"

    @property
    def metrics(self) -> Path:
        """The numbers only (`METRIC_KEYS`); summary gathers them (`PipelineFiles.metrics`)."""
        return self.folder / "metrics.json"

    @property
    def evaluation(self) -> Path:
        """How the metrics were computed: extractor, weights, notes, timing."""
        return self.folder / "evaluation.json"


def weights_sidecar(weights: str | Path) -> Path:
    """The JSON beside a weights file that says what it holds (`kind`: real Inception, random
    test weights or flower features) and how it was made."""
    weights = Path(weights)
    return weights.with_name(weights.name + ".json")


def manifest_path(dataset: str | Path) -> Path:
    """The manifest beside a preprocessed dataset file (count, sizes, sha256 of the tensor)."""
    return Path(dataset).with_suffix(".json")


# -- formats -------------------------------------------------------------------------------------

# train_log.csv's columns; a resumed run may change only the timing ones.
LOG_FIELDS = (
    "step",
    "loss",
    "loss_q1",
    "loss_q2",
    "loss_q3",
    "loss_q4",
    "lr",
    "grad_norm",
    "images_per_s",
    "elapsed_s",
)
TIMING_FIELDS = ("images_per_s", "elapsed_s")
# metrics.json's keys, written by `ddpm.evaluation.evaluate.evaluate` and read by the report.
FIDELITY_SCORES = ("precision", "recall", "density", "coverage")
METRIC_KEYS = (
    "fid",
    "fid_std",
    "is_mean",
    "is_std",
    "kid_mean",
    "kid_std",
    "n_generated",
    "n_real",
    "floor_fid",
    "floor_kid_mean",
    # fidelity and diversity apart (`ddpm.evaluation.fidelity`), each with its spread
    *(key for name in FIDELITY_SCORES for key in (name, f"{name}_std")),
)
SCOREBOARD_KEYS = ("fid", "fid_std", "kid_mean", "is_mean")  # per run in <results>/metrics.json

# snapshots.json: {"network": id, "snapshots": [one mapping of these keys per snapshot]}.
SNAPSHOT_KEYS = ("step", "images_seen", "file")
# progress.json: {"network", "points": [...], how they were made}; a point has these keys.
POINT_KEYS = ("step", "images_seen", "fid", "fid_std", "n_images")


def read_json(path: str | Path) -> dict:
    """A JSON object that a stage wrote."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArtefactError(f"{path} does not exist") from None
    except (OSError, ValueError) as e:
        raise ArtefactError(f"{path} is unreadable ({e})") from None
    if not isinstance(value, dict):
        raise ArtefactError(f"{path} does not hold a JSON object")
    return value


def log_text(rows: list[dict]) -> str:
    """train_log.csv's text for `rows` (the header included)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, LOG_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def read_log(path: str | Path) -> list[dict[str, float]]:
    """The rows of a train_log.csv, every value a float."""
    try:
        with open(path, newline="") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except FileNotFoundError:
        raise ArtefactError(f"{path} does not exist") from None
    except (OSError, ValueError, TypeError) as e:
        raise ArtefactError(f"{path} is not a training log ({e})") from None


def settings_digest(settings: dict) -> str:
    """A short fingerprint of a settings mapping (order-independent)."""
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- final.pt and checkpoint.pt ------------------------------------------------------------------

FINAL_KEYS = ("network", "settings", "code", "dataset_sha256", "image_size", "step", "ema")
CHECKPOINT_KEYS = ("network", "settings", "code", "dataset_sha256", "step", "model", "ema")
CHECKPOINT_KEYS += ("optimizer", "scaler", "log", "rng")


def _read_state(path: str | Path, keys: tuple[str, ...], what: str, damaged: str) -> dict:
    state = load_torch(
        path, ArtefactError, missing="it is made by `python -m ddpm train`", damaged=damaged
    )
    if not isinstance(state, dict) or not set(keys) <= set(state):
        raise ArtefactError(
            f"{path} is not a {what} written by this version of ddpm-pipeline; {damaged}"
        )
    return state


def read_final(path: str | Path, expected: dict | None = None) -> dict:
    """A network's final.pt: its EMA weights and the record of what it was trained from. With
    `expected` (`network` id and/or `settings_digest` of its training settings), a file of
    another network is refused."""
    state = _read_state(
        path, FINAL_KEYS, "final.pt", "train the network again (or restore it, e.g. `dvc pull`)"
    )
    expected = expected or {}
    if expected.get("network") not in (None, state["network"]):
        raise ArtefactError(
            f"{path} is network {state['network']}, not {expected['network']}; give the "
            f"final.pt of {expected['network']}"
        )
    digest = expected.get("settings_digest")
    if digest is not None and digest != settings_digest(state["settings"]):
        raise ArtefactError(
            f"{path} was trained with other training settings than this config gives network "
            f"{state['network']}; train it again with this config (or give that network's own "
            "file)"
        )
    return state


def read_checkpoint(path: str | Path) -> dict:
    """A training checkpoint (`ddpm.training.train.TrainLoop.state_dict` and its record)."""
    return _read_state(
        path,
        CHECKPOINT_KEYS,
        "training checkpoint",
        "restore it (e.g. `dvc pull`) or delete it to train this run from scratch",
    )


# -- samples.npz ---------------------------------------------------------------------------------


def write_samples(path: str | Path, images, record: dict) -> None:
    """uint8 images [N x 3 x S x S] and their record (network, variant, dataset, seed, ...)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.asarray(images), record=np.array(json.dumps(record)))
    atomic_write_bytes(path, buf.getvalue())


def read_samples(path: str | Path, limit: int | None = None) -> tuple[np.ndarray, dict]:
    """(uint8 images [N x 3 x H x W] as a numpy array, the record) from a samples.npz; the
    record is {} for a file made elsewhere. Anything but uint8 images is refused rather than
    guessed at: float images could be in [-1, 1], [0, 1] or [0, 255], and a wrong guess gives a
    meaningless FID without any error."""
    path = Path(path)
    if not path.exists():
        raise ArtefactError(f"samples {path} not found; run `python -m ddpm sample` first")
    try:
        # Open the file ourselves: np.load leaves it open when the zip inside is damaged.
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            if "images" not in f:
                raise ArtefactError(
                    f"{path} has no `images` array (it holds: {', '.join(f.files) or 'nothing'}); "
                    "write samples with `python -m ddpm sample`"
                )
            images = f["images"][:limit] if limit is not None else f["images"]
            record = json.loads(str(f["record"])) if "record" in f else {}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ArtefactError(
            f"{path} is not a readable .npz file ({type(e).__name__}); sample again"
        ) from None
    if images.dtype != np.uint8:
        raise ArtefactError(
            f"{path}: images are {images.dtype} (values {images.min():.4g}..{images.max():.4g}), "
            "expected uint8 in 0..255; convert them yourself, e.g. from [-1, 1] with "
            "((x.clip(-1, 1) + 1) * 127.5).round().astype('uint8')"
        )
    if images.ndim != 4 or images.shape[1] != 3 or (limit is None and images.shape[0] < 2):
        raise ArtefactError(
            f"{path}: expected images [N x 3 x H x W] with N >= 2, got {images.shape}"
        )
    return images, record

"""The files the stages hand each other, as they are written and read: train_log.csv, final.pt
and checkpoint.pt, samples.npz, and the keys of the JSON records (metrics, snapshots, FID over
training). Each artefact that a later stage reads carries a record of what it was made from
(network, dataset, image size), and its reader checks that record against what the reading job
expects: a file from another run is refused, never silently used. Where the files live is
`ddpm.pipeline.layout`'s; how they are written is here, in every stage's code that uses it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from ddpm.plumbing.errors import ArtefactError
from ddpm.plumbing.files import atomic_write_bytes, load_torch

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


FINAL_KEYS = ("network", "settings", "code", "dataset_sha256", "image_size", "step", "ema")


CHECKPOINT_KEYS = (
    *("network", "settings", "code", "dataset_sha256", "step"),
    *("model", "ema", "optimizer", "scaler", "log", "rng"),
)


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

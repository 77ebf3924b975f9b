"""Where every file of the pipeline lives: its name and folder, written here alone.

    <results>/raw/                       download: the Flowers-102 files and jpg/
    <results>/data/dataset.npy, .json    preprocess: the uint8 images and their manifest
    <results>/reference.pt               reference_stats: real-image features
    <results>/reference_dinov2.pt        dinov2_reference: FD_DINOv2's real side
    <results>/runs/<network>/            train: `NetworkFiles` (and progress: FID of its snapshots)
    <results>/runs/<network>/<variant>/  sample and evaluate: `VariantFiles`
    <results>/settings/                  what each job read (its logs: workflow/rules/*.smk)
    <results>/summary.csv, metrics.json, report.html   the comparison

The stage table (`ddpm.pipeline.stages`) declares its inputs and outputs with these names, the
stages write them, and the report reads them back. How each file is written and read is
`ddpm.data.artefacts`'s: that is stage code, and a change to it reruns what uses it; a file's
name and place are the pipeline's, like the stage table's wiring.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
    def dinov2_reference(self) -> Path:
        return self.results / "reference_dinov2.pt"

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


# -- final.pt and checkpoint.pt ------------------------------------------------------------------


# -- samples.npz ---------------------------------------------------------------------------------

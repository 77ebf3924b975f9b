"""The live view of training: preview grids of the EMA weights, and TensorBoard event files in
each network's folder, written as the log rows and preview grids are, so that

    tensorboard --logdir results/runs

shows every network of a sweep while it trains (offline: nothing but files is needed to write
them). The scalars are train_log.csv's columns, grouped as loss (total and per quarter of the
timesteps), optimisation (learning rate, gradient norm) and speed (images/s); the images are the
preview grids. train_log.csv stays the record that the report and DVC read; these files are a
view of it and are not versioned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddpm.diffusion.devices import autocast
from ddpm.pipeline.config import Config
from ddpm.pipeline.layout import NetworkFiles
from ddpm.plumbing.files import atomic_write_bytes
from ddpm.sampling.images import grid, png_bytes
from ddpm.sampling.samplers import ddim_sample, to_uint8

# TensorBoard tag of each log column (`ddpm.pipeline.layout.LOG_FIELDS`); the prefix names the
# section it is drawn in.
TAGS = {
    "loss": "loss/total",
    "loss_q1": "loss/t in 1st quarter",
    "loss_q2": "loss/t in 2nd quarter",
    "loss_q3": "loss/t in 3rd quarter",
    "loss_q4": "loss/t in 4th quarter",
    "lr": "optimisation/learning rate",
    "grad_norm": "optimisation/gradient norm",
    "images_per_s": "speed/images per s",
}
PREVIEW_TAG = "samples/EMA preview (DDIM)"


class LiveView:
    """One training's event files in `folder`. A fresh training removes the event files of an
    earlier one; a resumed one continues them, and TensorBoard drops what the earlier run
    logged after `start` (the step it resumes from), so every step is shown once."""

    def __init__(self, folder: Path, start: int):
        from torch.utils.tensorboard import SummaryWriter

        if start == 0 and folder.is_dir():
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
        # The checkpoint of step `start` was written after that step's row and preview.
        self.writer = SummaryWriter(str(folder), purge_step=start + 1 if start else None)

    def row(self, row: dict) -> None:
        for key, tag in TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], row["step"])
        self.writer.flush()  # rows are minutes apart on a long training: show each at once

    def preview(self, step: int, grid: np.ndarray) -> None:
        """A preview grid, uint8 H x W x 3."""
        self.writer.add_image(PREVIEW_TAG, grid, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TrainingView:
    """What the train command shows of a training (`ddpm.training.train.train`'s `view`): every
    `train.preview_every` steps a preview grid in `previews/`, and the live view of the rows
    and previews. Training's results do not depend on it: the previews draw their noise from
    their own seed, and the weights are only read."""

    def __init__(self, files: NetworkFiles, start: int, cfg: Config):
        self.files, self.cfg = files, cfg
        self.live = LiveView(files.live, start)

    def row(self, row: dict) -> None:
        self.live.row(row)

    def step(self, step: int, ema_model, diffusion, device, size: int) -> bool:
        every = self.cfg.train.preview_every
        if not every or step % every:
            return False
        path = self.files.preview(step)
        canvas = _preview(
            ema_model, diffusion, self.cfg, device, size, path, self.cfg.train.seed + 1
        )
        self.live.preview(step, canvas)
        return True

    def close(self) -> None:
        self.live.close()


@torch.no_grad()
def _preview(model, diffusion, cfg: Config, device, size: int, path: Path, seed: int) -> np.ndarray:
    """16 DDIM samples of the EMA weights from fixed noise, as a grid in `path`; returns it."""
    model.eval()
    with autocast(device, cfg.train.precision):
        result = ddim_sample(
            model,
            diffusion,
            seed,
            range(16),
            (3, size, size),
            steps=min(50, diffusion.T),
            device=device,
        )
    canvas = grid(to_uint8(result.images), nrow=4)
    atomic_write_bytes(path, png_bytes(canvas))
    return canvas

"""The live view of training: TensorBoard event files in each network's folder, written as the
log rows and preview grids are, so that

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

# TensorBoard tag of each log column (`ddpm.layout.LOG_FIELDS`); the prefix names the section
# it is drawn in.
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

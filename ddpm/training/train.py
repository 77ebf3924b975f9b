"""The training loop: AdamW with warmup, EMA, mixed precision, atomic checkpoints, exact resume.

Every random number of a run (batch indices, flips, timesteps, noise) comes from one seeded
generator whose state is checkpointed with the model, the EMA, the optimiser, the gradient
scaler and the global RNGs (dropout). The checkpoint also carries the log rows written so far and
the losses gathered since the last row. Resuming therefore continues the very same run: after a
crash or an interrupt and a restart, the weights, `train_log.csv` (apart from its timing columns)
and the summary equal those of an uninterrupted run.

A checkpoint belongs to one training identity: the training settings, the training code's
fingerprint and the dataset. Only the settings declared `resumable` may differ on resume.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import torch

from ddpm import __version__
from ddpm.data.artefacts import LOG_FIELDS, log_text, read_checkpoint
from ddpm.data.dataset import load_dataset
from ddpm.diffusion.devices import autocast, configure_cuda, select_device
from ddpm.diffusion.model import MEMORY_FORMAT, build, compile_, wants_compile
from ddpm.diffusion.unet import count_parameters
from ddpm.pipeline.config import RESUMABLE, Config, diff_keys
from ddpm.pipeline.layout import NetworkFiles
from ddpm.plumbing.errors import PipelineError
from ddpm.plumbing.files import (
    atomic_write_bytes,
    atomic_write_json,
    check_output_dir,
    save_torch,
)
from ddpm.training.ema import EMA
from ddpm.training.ranks import SINGLE, Ranks


class TrainingError(PipelineError):
    """A checkpoint of another training, or a non-finite loss (summed over the processes)."""

    every_process = True


class Interrupted(PipelineError):
    """SIGTERM / SIGINT: a checkpoint was written; rerunning the command resumes."""

    every_process = True  # a signal that reached one process stops them all (`Ranks.agree`)

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "killed by signal N"


# -- checkpoints ---------------------------------------------------------------------------------


def stale_reasons(state: dict, identity: dict, total: int) -> list[str]:
    """Why a checkpoint cannot be resumed under `identity` (empty when it can)."""
    reasons = [
        f"{key} changed"
        for key in diff_keys(state["settings"], identity["settings"])
        if key not in RESUMABLE
    ]
    if state.get("code") != identity["code"]:
        reasons.append("the training code changed")
    if state.get("dataset_sha256") != identity["dataset_sha256"]:
        reasons.append("the dataset changed")
    if int(state["step"]) > total:
        reasons.append(f"it is at step {state['step']}, beyond the {total} steps now asked for")
    return reasons


def total_steps(cfg: Config, num_images: int) -> int:
    t = cfg.train
    if t.epochs is not None:
        return max(1, math.ceil(t.epochs * num_images / t.batch_size))
    return t.steps


def get_lr(cfg: Config, step: int) -> float:
    """The learning rate of optimiser step `step` (0-based)."""
    tc = cfg.train
    # Linear warmup over warmup_steps, then constant (Ho et al. 2020).
    if tc.warmup_steps and step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    return tc.lr


# -- the log -------------------------------------------------------------------------------------


class LossLog:
    """Losses since the last log row (per step, and per quarter of t), and the rows so far.

    Everything here goes into checkpoints, so a resumed run writes the same rows as an
    uninterrupted one: a row is written every `log_every` steps and at the last step, never at an
    interruption."""

    def __init__(self, device: torch.device, ranks: Ranks = SINGLE):
        self.ranks = ranks
        self.rows: list[dict] = []
        self.losses: list[float] = []  # checked for finiteness
        self._unchecked: list[torch.Tensor] = []  # on the device, not yet synchronised
        self.quarter_sum = torch.zeros(4, device=device, dtype=torch.float64)
        self.quarter_count = torch.zeros(4, device=device, dtype=torch.float64)

    def add(self, loss: torch.Tensor, per_example: torch.Tensor, t: torch.Tensor, T: int) -> None:
        """A step's mean loss and its per-example losses, of this process's share of the batch:
        summed over the processes at once, so every process holds the whole batch's numbers."""
        quarter = (t * 4 // T).clamp(max=3)
        step = torch.zeros(9, device=loss.device, dtype=torch.float64)
        step[0] = loss.detach().double()
        step[1:5].index_add_(0, quarter, per_example.detach().double())
        step[5:].index_add_(0, quarter, torch.ones_like(quarter, dtype=torch.float64))
        self.ranks.sum_(step)
        self.quarter_sum += step[1:5]
        self.quarter_count += step[5:]
        self._unchecked.append(step[0] / self.ranks.world)  # equal shares: the batch's mean

    def sync(self, step: int) -> int | None:
        """Bring the pending losses to the host; the step of the first non-finite one, if any."""
        if not self._unchecked:
            return None
        new = torch.stack(self._unchecked).cpu().tolist()
        self._unchecked.clear()
        first = step - len(new) + 1
        for i, value in enumerate(new):
            if not math.isfinite(value):
                return first + i
        self.losses += new
        return None

    def row(self, step: int, lr: float, grad_norm: float, ips: float, elapsed: float) -> dict:
        q = (self.quarter_sum / self.quarter_count.clamp(min=1)).tolist()
        row = {
            "step": step,
            "loss": sum(self.losses) / len(self.losses),
            **{f"loss_q{i + 1}": q[i] for i in range(4)},
            "lr": lr,
            "grad_norm": grad_norm,
            "images_per_s": ips,
            "elapsed_s": elapsed,
        }
        self.rows.append(row)
        self.losses.clear()
        self.quarter_sum.zero_()
        self.quarter_count.zero_()
        return row

    def state_dict(self) -> dict:
        assert not self._unchecked, "sync before saving"
        return {
            "rows": self.rows,
            "losses": self.losses,
            "quarter_sum": self.quarter_sum.cpu(),
            "quarter_count": self.quarter_count.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])
        self.losses = list(state["losses"])
        self.quarter_sum.copy_(state["quarter_sum"])
        self.quarter_count.copy_(state["quarter_count"])


class _StopFlag:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# -- the loop ------------------------------------------------------------------------------------


class TrainLoop:
    """Everything one optimiser step reads and changes: the network and its diffusion, the EMA,
    the optimiser, the gradient scaler, the run's generator and the loss log. `run_step` is the
    step that `train` takes (and that `benchmarks/bench_gpu.py` times); `state_dict` and
    `load_state_dict` are what a checkpoint holds of it."""

    def __init__(
        self,
        cfg: Config,
        data: torch.Tensor,
        device: torch.device,
        memory_format: torch.memory_format = MEMORY_FORMAT,
        compile_backend: str = "inductor",
        ranks: Ranks = SINGLE,
    ):
        tc = cfg.train
        self.cfg, self.data, self.device, self.ranks = cfg, data, device, ranks
        # Another layout or compiler backend than the defaults: for benchmarks.
        self.memory_format = memory_format
        torch.manual_seed(tc.seed)  # the network's initial weights and dropout
        nets = build(cfg.model, cfg.diffusion, data.shape[-1], device, memory_format=memory_format)
        if wants_compile(tc.compile, device):
            nets = compile_(
                nets,
                tc.batch_size // ranks.world,
                tc.precision,
                train=True,
                memory_format=memory_format,
                backend=compile_backend,
            )
        self.nets = nets
        self.model, self.diffusion = nets.model, nets.diffusion
        # What a step runs: the network (compiled or not), under DistributedDataParallel when
        # several processes train it (compiled first, as torch's documentation advises).
        self.net = ranks.wrap(nets.net, device)
        self.ema = EMA(self.model, tc.ema_decay, tc.ema_warmup)
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=tc.lr,
            weight_decay=tc.weight_decay,
            fused=device.type == "cuda",
        )
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=device.type == "cuda" and tc.precision == "fp16"
        )
        self.gen = torch.Generator(device).manual_seed(tc.seed)
        self.log = LossLog(device, ranks)
        self.grad_norm = torch.zeros((), device=device)

    def get_batch(self) -> torch.Tensor:
        """A batch [B x 3 x S x S] in [-1, 1]: seeded indices, random horizontal flips."""
        tc = self.cfg.train
        idx = torch.randint(
            0, self.data.shape[0], (tc.batch_size,), device=self.device, generator=self.gen
        )
        x = self.data[idx].float().div_(127.5).sub_(1.0)
        if tc.hflip:
            flip = torch.rand(tc.batch_size, device=self.device, generator=self.gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x.contiguous(memory_format=self.memory_format)

    def run_step(self, step: int) -> None:
        """Optimiser step `step` (0-based): batch, loss, backward, clipping, AdamW, EMA.

        The whole batch's images, timesteps and noise are drawn in every process, each of which
        keeps its share: the numbers are the single-process run's, whatever the processes."""
        tc = self.cfg.train
        for group in self.opt.param_groups:
            group["lr"] = get_lr(self.cfg, step)
        self.model.train()
        x = self.get_batch()
        t = torch.randint(0, self.diffusion.T, (len(x),), device=self.device, generator=self.gen)
        noise = torch.randn(x.shape, device=self.device, dtype=x.dtype, generator=self.gen)
        x, t, noise = (self.ranks.shard(v) for v in (x, t, noise))
        with autocast(self.device, tc.precision):
            out = self.diffusion.training_loss(self.net, x, t, noise)
        loss = out["loss"].mean()
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        # max_norm = inf measures the norm without clipping
        self.grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), tc.grad_clip or float("inf")
        )
        self.scaler.step(self.opt)
        self.scaler.update()
        self.ema.update(self.model)
        self.log.add(loss, out["loss"], out["t"], self.diffusion.T)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "log": self.log.state_dict(),
            "rng": {
                "generator": self.gen.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device)
                if self.device.type == "cuda"
                else None,
            },
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.log.load_state_dict(state["log"])
        self.gen.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)


class _NoView:
    """What shows a training when nothing watches it (and on every process but the first)."""

    def row(self, row: dict) -> None:
        pass

    def step(self, step: int, ema_model, diffusion, device, size: int) -> bool:
        """Whatever the view does after `step`; True when it took time (a preview)."""
        return False

    def close(self) -> None:
        pass


NO_VIEW = _NoView()
MakeView = Callable[[NetworkFiles, int, Config], _NoView]


class TrainingRun:
    """One network's training in its folder: resume or set aside, the loop, and what it writes
    on the way (log rows, previews, snapshots, checkpoints) and at the end (final.pt, the
    snapshot index, the summary). The steps themselves are `TrainLoop`'s."""

    def __init__(
        self,
        loop: TrainLoop,
        network_id: str,
        files: NetworkFiles,
        identity: dict,
        view: MakeView | None = None,
    ):
        self.loop, self.network_id, self.files, self.identity = loop, network_id, files, identity
        self.make_view = view
        self.tc = loop.cfg.train
        self.steps = total_steps(loop.cfg, loop.data.shape[0])
        self.start, self.elapsed_before = 0, 0.0
        self.step = 0
        self.t0 = time.perf_counter()
        self.window_start, self.window_step = self.t0, 0

    # -- before the loop

    def resume(self, restart_if_changed: bool) -> None:
        """Continue from checkpoint.pt when it belongs to this identity; refuse when it does
        not, or with `restart_if_changed` set it aside and start from scratch."""
        files, ranks = self.files, self.loop.ranks
        state, reasons = self._checkpoint(restart_if_changed)  # every process decides alike
        ranks.barrier()  # all have read checkpoint.pt before process 0 moves it
        if state is not None:
            self.loop.load_state_dict(state)
            self.start, self.elapsed_before = int(state["step"]), float(state["elapsed_s"])
            if ranks.main:
                print(f"resuming {self.network_id} from step {self.start} ({files.checkpoint})")
        elif ranks.main:
            if reasons:
                os.replace(files.checkpoint, files.stale_checkpoint)
                print(
                    f"{files.checkpoint}: {'; '.join(reasons)}; set aside as "
                    f"{files.stale_checkpoint}, training from scratch"
                )
            for old in files.snapshots.glob("step_*.pt"):  # they would pass for this run's
                old.unlink()
        sys.stdout.flush()
        self.step = self.window_step = self.start
        if not ranks.main:
            return
        atomic_write_bytes(files.log, log_text(self.loop.log.rows).encode())
        # A run that ended on a snapshot's step wrote final.pt there instead; asked for more
        # steps, it makes that snapshot from the weights it resumes with.
        every, start = self.tc.snapshot_every, self.start
        on_snapshot = start and every and start % every == 0 and start < self.steps
        if on_snapshot and not files.snapshot(start).exists():
            self.save_weights(files.snapshot(start))

    def _checkpoint(self, restart_if_changed: bool) -> tuple[dict | None, list[str]]:
        """(checkpoint.pt's state if this training resumes it, why it cannot if it cannot)."""
        path = self.files.checkpoint
        if not path.exists():
            return None, []
        state = read_checkpoint(path)
        reasons = stale_reasons(state, self.identity, self.steps)
        if reasons and not restart_if_changed:
            raise TrainingError(
                f"{path} belongs to another training ({'; '.join(reasons)}). Restore those "
                "settings to resume it, or pass --restart-if-changed to set it aside (as "
                f"{self.files.stale_checkpoint.name}) and train this run from scratch."
            )
        return (None, reasons) if reasons else (state, [])

    # -- the loop

    def run_loop(self, bars: bool) -> str:
        """Steps until the last one or train.max_minutes; returns what stopped it. SIGTERM and
        SIGINT write a checkpoint and raise `Interrupted`."""
        from tqdm.auto import tqdm

        main = self.loop.ranks.main
        self.t0 = self.window_start = time.perf_counter()
        # The bar is closed however the loop ends, so an error message starts on its own line.
        with contextlib.ExitStack() as stack:
            self.bar = stack.enter_context(
                tqdm(
                    total=self.steps,
                    initial=self.start,
                    desc=self.network_id,
                    unit="step",
                    disable=not (bars and main),
                    dynamic_ncols=True,
                )
            )
            stop = stack.enter_context(_StopFlag())
            self.view = NO_VIEW
            if main:  # the other processes only compute
                if self.make_view is not None:
                    view = self.make_view(self.files, self.start, self.loop.cfg)
                    self.view = stack.enter_context(closing(view))
                self.log_file = stack.enter_context(open(self.files.log, "a", newline=""))
                self.writer = csv.DictWriter(self.log_file, LOG_FIELDS)
            while self.step < self.steps:
                self.loop.run_step(self.step)
                self.step += 1
                self.bar.update(1)
                if self.after_step(stop.signal):
                    return "max_minutes"
        return "steps"

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def after_step(self, signum: int | None) -> bool:
        """What is due after a step: the loss check, the log row, the preview, the snapshot,
        the checkpoint; then an interrupt raises. True when train.max_minutes is up."""
        step, tc, elapsed, ranks = self.step, self.tc, self.elapsed(), self.loop.ranks
        out_of_time = tc.max_minutes is not None and elapsed >= tc.max_minutes * 60
        # A signal that reached one process, or one process's clock, stops them all here.
        signum, out_of_time = ranks.agree(signum, out_of_time, self.loop.device)
        last = step == self.steps or out_of_time
        want_row = step % tc.log_every == 0 or last
        want_ckpt = step % tc.checkpoint_every == 0 or last or signum is not None
        if want_row or want_ckpt:
            self.check_losses()
        if want_row:
            self.write_row(elapsed)
        loop = self.loop
        size = loop.data.shape[-1]
        previewing = self.view.step(step, loop.ema.model, loop.diffusion, loop.device, size)
        snapshotting = bool(tc.snapshot_every) and step % tc.snapshot_every == 0 and ranks.main
        if snapshotting and step < self.steps:  # the last step's weights are final.pt
            self.save_weights(self.files.snapshot(step))
        if want_ckpt and ranks.main:
            self.save_checkpoint(elapsed)
        if want_ckpt or previewing or snapshotting:
            self.window_start = time.perf_counter()  # images/s measures training alone
        if signum is not None:
            raise Interrupted(
                f"{self.network_id}: {signal.Signals(signum).name} at step {step}; checkpoint "
                f"written to {self.files.checkpoint}. Run the same command again to resume.",
                signum,
            )
        return out_of_time

    def check_losses(self) -> None:
        """Sync point: the losses since the last one must be finite."""
        bad = self.loop.log.sync(self.step)
        if bad is not None:
            raise TrainingError(
                f"{self.network_id}: the loss became non-finite at step {bad}; stopped. The last "
                f"good checkpoint ({self.files.checkpoint}) is kept. Lower train.lr, or use "
                "train.precision: bf16 or fp32."
            )

    def write_row(self, elapsed: float) -> None:
        """A row of train_log.csv, with images/s over the training since the last row."""
        now, step = time.perf_counter(), self.step
        ips = (step - self.window_step) * self.tc.batch_size / max(now - self.window_start, 1e-9)
        self.window_start, self.window_step = now, step
        lr = get_lr(self.loop.cfg, step - 1)
        row = self.loop.log.row(step, lr, float(self.loop.grad_norm), ips, elapsed)
        if not self.loop.ranks.main:
            return
        self.writer.writerow(row)
        self.log_file.flush()
        self.view.row(row)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{ips:.0f}")

    def save_checkpoint(self, elapsed: float) -> None:
        meta = {"step": self.step, "elapsed_s": elapsed, "network": self.network_id}
        state = {**self.identity, **meta, "version": __version__, **self.loop.state_dict()}
        save_torch(self.files.checkpoint, state)

    def save_weights(self, path: Path) -> None:
        """The EMA weights at this step and what sampling needs to know of them (final.pt's
        format)."""
        step, loop = self.step, self.loop
        record = {"network": self.network_id, "step": step, "image_size": loop.data.shape[-1]}
        state = {**self.identity, **record, "version": __version__}
        weights = {"ema": loop.ema.model.state_dict(), "images_seen": step * self.tc.batch_size}
        save_torch(path, {**state, **weights})

    # -- after the loop

    def finish(self, stopped_by: str) -> dict:
        """final.pt, the snapshot index and the summary (process 0 writes them); returns the
        summary."""
        loop, tc, step = self.loop, self.tc, self.step
        if loop.ranks.main:
            self.save_weights(self.files.final)
            every = tc.snapshot_every
            _write_snapshot_index(self.files, self.network_id, every, step, tc.batch_size)
        rows = loop.log.rows
        measured = rows[1:] or rows  # the first window includes start-up costs
        n_images, device = loop.data.shape[0], loop.device
        summary = {
            "network": self.network_id,
            "steps": step,
            "target_steps": self.steps,
            "stopped_by": stopped_by,
            "images_seen": step * tc.batch_size,
            "epochs": step * tc.batch_size / n_images,
            "wall_time_s": self.elapsed(),
            "images_per_s": sum(r["images_per_s"] for r in measured) / len(measured)
            if measured
            else None,
            "compiled": loop.nets.compiled,
            "compile_s": loop.nets.compile_s,
            "compile_error": loop.nets.compile_error,
            "parameters": count_parameters(loop.model),
            "device": _device_name(device),
            "processes": loop.ranks.world,  # train.gpus: one network trained by several
            "precision": tc.precision if device.type == "cuda" else "fp32",
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device)
            if device.type == "cuda"
            else None,
            "dataset_sha256": self.identity["dataset_sha256"],
            "dataset_count": n_images,
            "final_loss": _smoothed_final_loss(rows),
        }
        if loop.ranks.main:
            atomic_write_json(self.files.summary, summary)
        return summary


def train(
    cfg: Config,
    network_id: str,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    identity: dict,
    restart_if_changed: bool = False,
    bars: bool = True,
    view: MakeView | None = None,
) -> dict:
    """Train network `network_id` with `cfg` on the dataset file; write into `out_dir`.

    `identity` is the training stage's settings document (`settings`, `code`). Resumes from
    `out_dir/checkpoint.pt` when it belongs to the same identity; when it does not, refuses, or
    with `restart_if_changed` sets it aside as `checkpoint.stale.pt` and starts from scratch.
    `view(files, start, cfg)`, when given, makes what shows the training while it runs (the
    command passes `ddpm.training.view.TrainingView`: TensorBoard and preview grids). It only
    watches: nothing it does reaches the weights, so its code is not training's code.
    Returns the training summary.
    """
    out_dir = check_output_dir(out_dir)
    ranks = Ranks.from_env()  # one process, or one of train.gpus under torchrun
    local_rank = ranks.local_rank if ranks.parallel else None
    device = select_device(cfg.train.device, exclusive=True, local_rank=local_rank)
    configure_cuda(device)
    data, manifest = load_dataset(data_path, device)
    identity = {k: identity[k] for k in ("settings", "code")} | {
        "dataset_sha256": manifest["sha256"]
    }
    ranks.start(device)
    try:
        loop = TrainLoop(cfg, data, device, ranks=ranks)
        run = TrainingRun(loop, network_id, NetworkFiles(out_dir), identity, view)
        run.resume(restart_if_changed)
        stopped_by = run.run_loop(bars)
        return run.finish(stopped_by)
    finally:
        ranks.stop()


def _write_snapshot_index(
    files: NetworkFiles, network_id: str, every: int, last: int, batch_size: int
) -> None:
    """snapshots.json: the snapshots this training made before its last step. One deleted
    while it trained is left out, with a warning (only training again can make it).

    The snapshots folder is made here too, empty when `train.snapshot_every` is 0: it is a
    declared output of the stage (DVC caches and restores it), whatever the settings."""
    files.snapshots.mkdir(exist_ok=True)
    entries, missing = [], []
    for step in range(every, last, every) if every else ():
        path = files.snapshot(step)
        if path.exists():
            entries.append({"step": step, "images_seen": step * batch_size, "file": path.name})
        else:
            missing.append(step)
    if missing:
        print(
            f"warning: {network_id}: the snapshots of steps {missing} are missing from "
            f"{files.snapshots}; FID over training leaves them out",
            flush=True,
        )
    atomic_write_json(files.snapshot_index, {"network": network_id, "snapshots": entries})


def _smoothed_final_loss(rows: list[dict], window: int = 10) -> float | None:
    rows = rows[-window:]
    return sum(r["loss"] for r in rows) / len(rows) if rows else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"

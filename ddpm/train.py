"""The training loop: AdamW with warmup, EMA, mixed precision, atomic checkpoints, exact resume.

Every random number of a run (batch indices, flips, timesteps, noise) comes from one seeded
generator whose state is checkpointed with the model, the EMA, the optimiser, the gradient
scaler and the global RNGs (dropout). Resuming therefore continues the very same run: the
weights after a crash and a restart equal those of an uninterrupted run.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import time
from pathlib import Path

import torch

from ddpm import __version__
from ddpm.config import Config, to_dict, training_changes
from ddpm.data import load_dataset
from ddpm.devices import autocast, select_device
from ddpm.diffusion import build_diffusion
from ddpm.ema import EMA
from ddpm.errors import PipelineError
from ddpm.files import atomic_write_json, load_torch, save_torch
from ddpm.images import save_grid
from ddpm.sampling import ddim_sample, to_uint8
from ddpm.unet import build_unet, count_parameters

CHECKPOINT = "checkpoint.pt"
FINAL = "final.pt"
LOG = "train_log.csv"
SUMMARY = "train_summary.json"
LOG_FIELDS = [
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
]


class TrainingError(PipelineError):
    pass


class Interrupted(PipelineError):
    """SIGTERM / SIGINT: a checkpoint was written; rerunning the command resumes."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "killed by signal N"


# -- checkpoints ---------------------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by this module; a damaged file gives a message, not a traceback."""
    return load_torch(
        path,
        TrainingError,
        missing="run `python -m ddpm train`",
        damaged="Restore it (e.g. `dvc pull`) or delete it to train this run from scratch.",
    )


def check_resumable(saved: dict, current: dict, path: Path) -> None:
    changed = training_changes(saved, current)
    if changed:
        raise TrainingError(
            f"{path} was trained with a different config: {', '.join(changed)} changed. Restore "
            f"the config, or delete {path.parent} to train this run from scratch."
        )


# -- the loop ------------------------------------------------------------------------------------


def total_steps(cfg: Config, num_images: int) -> int:
    t = cfg.train
    if t.epochs is not None:
        return max(1, math.ceil(t.epochs * num_images / t.batch_size))
    return t.steps


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


def train(
    cfg: Config, run_id: str, data_path: str | Path, out_dir: str | Path, progress: bool = True
) -> dict:
    """Train run `run_id` (its resolved `cfg`) on the dataset file; write into `out_dir`.

    Resumes from `out_dir/checkpoint.pt` when it exists. Returns the training summary.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    device = select_device(tc.device, exclusive=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    data, manifest = load_dataset(data_path, device)
    n_images, size = data.shape[0], data.shape[-1]
    if size != cfg.data.image_size:
        raise TrainingError(
            f"{data_path} holds {size} px images but data.image_size is "
            f"{cfg.data.image_size}; preprocess again"
        )
    cfg_dict = to_dict(cfg)

    # 1. Model, diffusion, EMA, optimiser, scaler, generator.
    torch.manual_seed(tc.seed)
    model = build_unet(cfg.model, size).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    diffusion = build_diffusion(cfg.diffusion).to(device)
    ema = EMA(model, tc.ema_decay, tc.ema_warmup)
    opt = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=device.type == "cuda"
    )
    scaler = torch.amp.GradScaler(
        device.type, enabled=device.type == "cuda" and tc.precision == "fp16"
    )
    gen = torch.Generator(device).manual_seed(tc.seed)
    net = torch.compile(model) if tc.compile else model
    steps = total_steps(cfg, n_images)

    # 2. Resume.
    ckpt_path, log_path = out_dir / CHECKPOINT, out_dir / LOG
    start, elapsed_before = 0, 0.0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        check_resumable(state["config"], cfg_dict, ckpt_path)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        gen.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        start, elapsed_before = int(state["step"]), float(state["elapsed_s"])
        print(f"resuming {run_id} from step {start} ({ckpt_path})", flush=True)
    _truncate_log(log_path, start)

    def checkpoint(step: int, elapsed: float) -> None:
        save_torch(
            ckpt_path,
            {
                "step": step,
                "elapsed_s": elapsed,
                "run_id": run_id,
                "config": cfg_dict,
                "version": __version__,
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": {
                    "generator": gen.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                },
            },
        )

    # 3. The loop.
    preview_noise_seed = tc.seed + 1
    quarter_sum = torch.zeros(4, device=device, dtype=torch.float64)
    quarter_count = torch.zeros(4, device=device, dtype=torch.float64)
    step_losses: list[torch.Tensor] = []
    grad_norm = torch.zeros((), device=device)
    t0 = time.perf_counter()
    window_start, window_step = t0, start
    stopped_by = "steps"
    bar = tqdm(
        total=steps,
        initial=start,
        desc=run_id,
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    with _StopFlag() as stop, open(log_path, "a", newline="") as log_file:
        writer = csv.DictWriter(log_file, LOG_FIELDS)
        if log_file.tell() == 0:
            writer.writeheader()
        step = start
        while step < steps:
            model.train()
            # Learning-rate warmup, then constant (Ho et al. 2020).
            lr = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else tc.lr
            for group in opt.param_groups:
                group["lr"] = lr
            # A batch: seeded indices, random horizontal flips, on the device.
            idx = torch.randint(0, n_images, (tc.batch_size,), device=device, generator=gen)
            x = data[idx].float().div_(127.5).sub_(1.0)  # (B, 3, S, S) in [-1, 1]
            if tc.hflip:
                flip = torch.rand(tc.batch_size, device=device, generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, tc.precision):
                out = diffusion.training_loss(net, x, generator=gen)
            loss = out["loss"].mean()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            # max_norm = inf measures the norm without clipping
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), tc.grad_clip or float("inf")
            )
            scaler.step(opt)
            scaler.update()
            ema.update(model)
            step += 1

            quarter = (out["t"] * 4 // diffusion.T).clamp(max=3)
            quarter_sum.index_add_(0, quarter, out["loss"].detach().double())
            quarter_count.index_add_(0, quarter, torch.ones_like(quarter, dtype=torch.float64))
            step_losses.append(loss.detach())
            bar.update(1)

            elapsed = elapsed_before + time.perf_counter() - t0
            out_of_time = tc.max_minutes is not None and elapsed >= tc.max_minutes * 60
            interrupted = stop.signal is not None
            want_ckpt = step % tc.checkpoint_every == 0 or step == steps
            if step % tc.log_every == 0 or want_ckpt or out_of_time or interrupted or step == steps:
                # Sync point: check the losses since the last one, then log.
                losses = torch.stack(step_losses).float().cpu()
                bad = (~torch.isfinite(losses)).nonzero()
                if len(bad):
                    first = step - len(losses) + int(bad[0]) + 1
                    raise TrainingError(
                        f"{run_id}: the loss became {losses[int(bad[0])].item()} at step {first}; "
                        f"stopped. The last good checkpoint ({ckpt_path}) is kept. Lower train.lr, "
                        f"or use train.precision: bf16 or fp32."
                    )
                now = time.perf_counter()
                ips = (step - window_step) * tc.batch_size / max(now - window_start, 1e-9)
                window_start, window_step = now, step
                q = (quarter_sum / quarter_count.clamp(min=1)).tolist()
                row = {
                    "step": step,
                    "loss": losses.mean().item(),
                    **{f"loss_q{i + 1}": q[i] for i in range(4)},
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "images_per_s": ips,
                    "elapsed_s": elapsed,
                }
                writer.writerow(row)
                log_file.flush()
                step_losses.clear()
                quarter_sum.zero_()
                quarter_count.zero_()
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{ips:.0f}")
            if tc.preview_every and step % tc.preview_every == 0:
                _preview(
                    ema.model,
                    diffusion,
                    cfg,
                    device,
                    out_dir / "previews" / f"step_{step:07d}.png",
                    preview_noise_seed,
                )
            if want_ckpt or out_of_time or interrupted:
                checkpoint(step, elapsed)
            if want_ckpt or (tc.preview_every and step % tc.preview_every == 0):
                window_start = time.perf_counter()  # images/s measures training alone
            if interrupted:
                bar.close()
                name = signal.Signals(stop.signal).name
                raise Interrupted(
                    f"{run_id}: {name} at step {step}; checkpoint written to {ckpt_path}. "
                    f"Run the same command again to resume.",
                    stop.signal,
                )
            if out_of_time:
                stopped_by = "max_minutes"
                break
    bar.close()

    # 4. What sampling needs, and the summary.
    final = {
        "run_id": run_id,
        "step": step,
        "config": cfg_dict,
        "version": __version__,
        "ema": ema.model.state_dict(),
    }
    save_torch(out_dir / FINAL, final)
    wall = elapsed_before + time.perf_counter() - t0
    summary = {
        "run_id": run_id,
        "steps": step,
        "target_steps": steps,
        "stopped_by": stopped_by,
        "images_seen": step * tc.batch_size,
        "epochs": step * tc.batch_size / n_images,
        "wall_time_s": wall,
        "images_per_s": _mean_ips(log_path),
        "parameters": count_parameters(model),
        "device": _device_name(device),
        "precision": tc.precision if device.type == "cuda" else "fp32",
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else None,
        "dataset_sha256": manifest["sha256"],
        "dataset_count": n_images,
        "final_loss": _smoothed_final_loss(log_path),
    }
    atomic_write_json(out_dir / SUMMARY, summary)
    return summary


@torch.no_grad()
def _preview(model, diffusion, cfg: Config, device, path: Path, seed: int, n: int = 16) -> None:
    model.eval()
    with autocast(device, cfg.train.precision):
        result = ddim_sample(
            model,
            diffusion,
            seed,
            range(n),
            (3, cfg.data.image_size, cfg.data.image_size),
            steps=min(50, diffusion.T),
            device=device,
        )
    save_grid(to_uint8(result.images), path, nrow=4)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_log(path: str | Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _mean_ips(path: Path) -> float | None:
    rows = read_log(path)[1:] or read_log(path)  # the first window includes start-up costs
    return sum(r["images_per_s"] for r in rows) / len(rows) if rows else None


def _smoothed_final_loss(path: Path, window: int = 10) -> float | None:
    rows = read_log(path)[-window:]
    return sum(r["loss"] for r in rows) / len(rows) if rows else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"

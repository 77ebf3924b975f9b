"""Shared helpers: repeated timings (median and spread), machine description, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def import_seconds(statement: str) -> float:
    """Seconds that `statement` (imports) takes in a fresh interpreter; NaN if it fails."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return float(out.stdout) if out.returncode == 0 else float("nan")


def machine() -> dict:
    import torch

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def repeat(
    fn: Callable[[], object],
    repeats: int = 3,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict:
    """Run `fn` warmup + repeats times; return seconds per call as median, min, max."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
    }


def sync_of(device):
    """What makes a timing wait for the device's queued work (None on the CPU)."""
    import torch

    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def matmul_flops(device, dtype, n: int) -> float:
    """FLOP/s of an n x n x n matmul in `dtype`: the peak a model's FLOP/s is compared with."""
    import torch

    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    timing = repeat(lambda: a @ b, repeats=5, sync=sync_of(device))
    return 2 * n**3 / timing["median_s"]


def flops_per_image(model, call, size: int, device) -> float:
    """Forward + backward FLOPs of one image (torch's FLOP counter, on a batch of 2);
    `call(model, x, t)` runs the network."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, size, size, device=device)
    t = torch.rand(2, device=device)
    with FlopCounterMode(display=False) as counter:
        call(model, x, t).float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def rate(timing: dict, items: int) -> dict:
    """items/s at the median, with the spread from the fastest and slowest repeat."""
    return {
        "per_s": items / timing["median_s"],
        "per_s_min": items / timing["max_s"],
        "per_s_max": items / timing["min_s"],
    }


def save(name: str, payload: dict, folder: Path = RESULTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    payload = {
        "benchmark": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)

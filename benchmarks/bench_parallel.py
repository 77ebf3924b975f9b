"""One network trained by 1, 2, ... processes (train.gpus), as `python -m ddpm train` runs it.

    python benchmarks/bench_parallel.py [--processes 1 2] [--steps 200] [--device cpu]
    python benchmarks/bench_parallel.py --processes 1 --threads 2 --name bench_parallel_threads

The demo's network and data (tiny preset at 16 base channels, 32 px, batch 32) unless
`--config` names another. Each process count trains the same run from scratch in a fresh
folder; the table gives images/s from its train_summary.json (the mean over its log windows
after the first, which holds start-up), the wall time of the whole command (torch's import,
torchrun's start-up and the rendezvous included) and the speed-up over the first count. On the
CPU each process gets `--threads` threads; on CUDA, one GPU each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table  # noqa: E402

from ddpm.data.preprocess import preprocess  # noqa: E402
from ddpm.pipeline.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run(config: Path, data: Path, out: Path, processes: int, steps: int, threads: int) -> dict:
    sets = [f"train.gpus={processes}", f"train.steps={steps}", "train.preview_every=0",
            "train.snapshot_every=0", f"train.log_every={max(steps // 10, 1)}",
            f"train.checkpoint_every={steps}"]  # fmt: skip
    command = [sys.executable, "-m", "ddpm", "train", "--config", str(config), "--run", "default",
               "--data", str(data), "--out", str(out)]  # fmt: skip
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    summary = json.loads((out / "train_summary.json").read_text())
    return {"processes": processes, "images_per_s": summary["images_per_s"], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=ROOT / "config/demo.yaml")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="per process, on the CPU")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="bench_parallel", help="of the JSON in results/")
    args = parser.parse_args()
    raw = yaml.safe_load(args.config.read_text())
    raw.pop("grid", None)  # one network
    raw.setdefault("train", {})["device"] = args.device
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "config.yaml"
        config.write_text(yaml.safe_dump(raw))
        data = tmp / "data.npy"
        preprocess(load_config(config).data, data, bars=False)
        for n in args.processes:
            rows.append(run(config, data, tmp / f"p{n}", n, args.steps, args.threads))
            print(f"{n} process(es): {rows[-1]['images_per_s']:.0f} images/s", flush=True)
    base = rows[0]["images_per_s"]
    for row in rows:
        row["speedup"] = row["images_per_s"] / base
    print(
        table(
            [
                [
                    r["processes"],
                    f"{r['images_per_s']:.0f}",
                    f"{r['wall_s']:.1f}",
                    f"{r['speedup']:.2f}x",
                ]
                for r in rows
            ],  # fmt: skip
            ["processes", "images/s", "wall s", "speed-up"],
        )
    )
    settings = {"config": str(args.config.relative_to(ROOT)), "steps": args.steps,
                "threads_per_process": args.threads, "device": args.device}  # fmt: skip
    print(f"wrote {save(args.name, {'settings': settings, 'rows': rows})}")


if __name__ == "__main__":
    main()

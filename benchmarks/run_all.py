"""Run every benchmark in turn (`make bench`); each prints its table and writes JSON."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    ["bench_preprocess.py"],
    ["bench_train.py", "--presets", "tiny", "ddpm", "--peers", "--steps", "1"],
    ["bench_sample.py"],
    ["bench_solvers.py"],
    ["bench_evaluate.py"],
    ["bench_pipeline.py"],
]

for script, *args in SCRIPTS:
    print(f"\n== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)

"""Pipeline overhead: wall time of `snakemake -n` (parse, validate, build the DAG) for the real
config, in a scratch directory with no data.

    python benchmarks/bench_pipeline.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import repeat, save, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "config", Path(tmp) / "config")
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            tmp,
            "-n",
            "--quiet",
        ]

        def dry_run():
            subprocess.run(cmd, check=True, capture_output=True)

        timing = repeat(dry_run, repeats=3)
    print(
        table(
            [
                [
                    "snakemake -n (config/config.yaml)",
                    f"{timing['median_s']:.2f}",
                    f"{timing['min_s']:.2f}-{timing['max_s']:.2f}",
                ]
            ],
            ["command", "seconds (median)", "range"],
        )
    )
    print(f"wrote {save('pipeline', {'snakemake_dry_run': timing})}")


if __name__ == "__main__":
    main()

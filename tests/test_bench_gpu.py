"""`make bench-gpu` keeps working where no GPU is: its quick mode runs every case on the CPU and
writes the JSON that the GPU table is made from. The compiled cases go through torch.compile
with its `eager` backend here: the harness is what this checks, and inductor's own code
generation is tested once, in test_model.py and test_train.py."""

import json
import subprocess
import sys

import pytest
from conftest import ENV, ROOT


def test_the_gpu_benchmark_runs_every_case_and_writes_its_json(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_gpu.py",
            "--quick",
            "--backend",
            "eager",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=ENV,
        check=True,
        capture_output=True,
    )
    result = json.loads((tmp_path / "bench_gpu_quick.json").read_text())
    assert result["compile_backend"] == "eager"
    cases = {(r["compiled"], r["layout"]) for r in result["training"]}
    assert cases == {(c, layout) for c in (False, True) for layout in ("NCHW", "channels_last")}
    for row in result["training"]:
        assert row["images_per_s"] > 0 and row["flops_per_image"] > 0
        assert row["mfu_vs_matmul"] > 0 and row["mfu_vs_spec"] is None  # no datasheet for CPUs
        assert (row["compile_s"] is not None) == row["compiled"]
    assert [r["compiled"] for r in result["sampling"]] == [False, True]
    for row in result["sampling"]:
        # minutes per 10k images follow from ms per step: steps x batches of 4
        assert row["min_per_10k_T1000"] == pytest.approx(row["ms_per_step"] * 1000 * 2500 / 6e4)
    assert result["inception"]["images_per_s"] > 0

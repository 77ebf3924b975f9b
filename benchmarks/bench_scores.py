"""What scoring costs beyond the feature network, at the real config's scale by default: FID
through torchmetrics' FrechetInceptionDistance (the real side's state once per reference, then
one value and its spread over random halves, each a d x d non-symmetric eigendecomposition),
KID and IS through torchmetrics' classes, precision / recall / density / coverage with their
spread over the same halves, the real balls' radii that the reference caches, and torchmetrics'
import. Features are random: the cost depends on the sizes only.

    python benchmarks/bench_scores.py [--real 8189] [--fake 10000] [--dims 2048] [--halves 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import import_seconds, save, table  # noqa: E402

from ddpm.evaluation.fidelity import knn_radii, prdc, prdc_spread  # noqa: E402
from ddpm.evaluation.scores import RealFID, inception_score, kid, random_halves  # noqa: E402


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--real", type=int, default=8189)  # Flowers-102, all splits
    parser.add_argument("--fake", type=int, default=10_000)  # sample.num_images of the config
    parser.add_argument("--dims", type=int, default=2048)  # Inception's pool features
    parser.add_argument("--halves", type=int, default=20)  # evaluate.fid_halves
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    real = torch.randn(args.real, args.dims, generator=g)
    fake = torch.randn(args.fake, args.dims, generator=g) * 1.1 + 0.1
    rows = []

    halves = random_halves(args.fake, args.halves, 0)
    seconds, fid = _timed(lambda: RealFID.of(real))
    rows.append(["FID: the real side's state (once per reference)", seconds])
    seconds, value = _timed(lambda: fid(fake))
    rows.append(["FID: one value (torchmetrics' eigvals)", seconds])
    seconds, _ = _timed(lambda: fid.spread(fake, halves))
    rows.append([f"FID: its spread over {args.halves} halves", seconds])
    seconds, _ = _timed(lambda: kid(real, fake, 1000, 100, 0))
    rows.append(["KID: 100 subsets of 1,000 (the config's)", seconds])
    logits = torch.randn(args.fake, 1008, generator=g, dtype=torch.float64)
    seconds, _ = _timed(lambda: inception_score(logits, 10, 0))
    rows.append(["IS: 10 splits of 1,008 classes", seconds])
    seconds, radii = _timed(lambda: knn_radii(real))
    rows.append(["real balls' radii (once per reference)", seconds])
    seconds, scores = _timed(lambda: prdc(real, fake, real_radii=radii))
    rows.append(["precision, recall, density, coverage", seconds])
    seconds, _ = _timed(lambda: prdc_spread(real, fake, halves, real_radii=radii))
    rows.append([f"their spread over {args.halves} halves", seconds])
    rows.append(
        [
            "import torchmetrics' three metric classes",
            import_seconds(
                "from torchmetrics.image.fid import FrechetInceptionDistance; "
                "from torchmetrics.image.kid import KernelInceptionDistance; "
                "from torchmetrics.image.inception import InceptionScore"
            )
            - import_seconds("import torch"),
        ]
    )

    print(table([[name, f"{s:.2f}"] for name, s in rows], ["step", "seconds"]))
    print(f"FID {value:.6f}")
    print(", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    save(
        "scores",
        {
            "sizes": vars(args),
            "threads": torch.get_num_threads(),
            "seconds": {name: s for name, s in rows},
            "fid": value,
        },
    )


if __name__ == "__main__":
    main()

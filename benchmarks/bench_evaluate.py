"""Evaluation speed: Inception feature extraction (images/s), ours (torch-fidelity's Inception
module with channels_last, one pass feeding FID, IS and KID) against torch-fidelity's
calculate_metrics on the same images and the same random-weight file (it runs the network once
per metric input).

    python benchmarks/bench_evaluate.py [--images 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import rate, repeat, save, table  # noqa: E402

from ddpm.data.synthetic import synthetic_dataset  # noqa: E402
from ddpm.evaluation.inception import extract_features, load_inception
from ddpm.evaluation.inception_weights import make_test_inception  # noqa: E402
from ddpm.evaluation.scores import fid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch_fidelity

    cpu = torch.device("cpu")
    a = torch.from_numpy(synthetic_dataset(args.images, args.size, 0))
    b = torch.from_numpy(synthetic_dataset(args.images, args.size, 1))
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "inception.pth"
        make_test_inception(weights)
        net = load_inception(weights, cpu)

        def ours():
            fa = extract_features(net, a, args.batch, cpu, bars=False)
            fb = extract_features(net, b, args.batch, cpu, bars=False)
            return fid(fa["pool"], fb["pool"])

        def theirs():
            return torch_fidelity.calculate_metrics(
                # torch-fidelity takes a Dataset of uint8 3 x H x W images: a Subset of the tensor
                input1=torch.utils.data.Subset(b, range(len(b))),
                input2=torch.utils.data.Subset(a, range(len(a))),
                fid=True,
                isc=True,
                cuda=False,
                feature_extractor="inception-v3-compat",
                feature_extractor_weights_path=str(weights),
                batch_size=args.batch,
                verbose=False,
                save_cpu_ram=True,
                cache=False,
            )

        t_ours = repeat(ours, args.repeats)
        t_theirs = repeat(theirs, args.repeats)
    n = 2 * args.images
    r_ours, r_theirs = rate(t_ours, n), rate(t_theirs, n)
    rows = [
        [
            "ours (torch-fidelity's Inception module, channels_last)",
            f"{r_ours['per_s']:.1f}",
            f"{r_ours['per_s_min']:.1f}-{r_ours['per_s_max']:.1f}",
        ],
        [
            "torch-fidelity calculate_metrics (FID + IS)",
            f"{r_theirs['per_s']:.1f}",
            f"{r_theirs['per_s_min']:.1f}-{r_theirs['per_s_max']:.1f}",
        ],
    ]
    print(f"{n} images of {args.size} px (resized to 299), CPU")
    print(table(rows, ["method", "images/s", "range"]))
    print(f"speed-up: {t_theirs['median_s'] / t_ours['median_s']:.2f}x")
    path = save(
        "evaluate",
        {
            "images": n,
            "size": args.size,
            "ours": r_ours,
            "torch_fidelity": r_theirs,
            "speedup": t_theirs["median_s"] / t_ours["median_s"],
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

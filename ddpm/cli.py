"""`python -m ddpm <stage> ...`: parse the arguments, then make one call into the module."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from ddpm.errors import PipelineError


def _parse_set(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise PipelineError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _config(args):
    from ddpm.config import load_config

    return load_config(args.config, _parse_set(args.set))


def _run_config(args):
    from ddpm.config import get_run

    return get_run(_config(args), args.run)


# -- commands ----------------------------------------------------------------------------------


def cmd_schema(args) -> None:
    from ddpm.config import schema_yaml

    text = schema_yaml()
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)


def cmd_config(args) -> None:
    """Print the resolved config (of one run, or the base config and the run ids)."""
    from ddpm.config import expand_grid, to_dict

    cfg = _config(args)
    if args.run:
        from ddpm.config import get_run

        out = {"run": args.run, "config": to_dict(get_run(cfg, args.run).config)}
    else:
        out = {"config": to_dict(cfg), "runs": [r.id for r in expand_grid(cfg)]}
    print(json.dumps(out, indent=2))


def cmd_runs(args) -> None:
    from ddpm.config import expand_grid

    for run in expand_grid(_config(args)):
        print(run.id)


def cmd_download(args) -> None:
    from ddpm.data import download

    cfg = _config(args)
    if cfg.data.source != "flowers102":
        raise PipelineError(f"data.source is {cfg.data.source!r}: there is nothing to download")
    download(cfg.data, args.out)
    print(f"downloaded and verified {len(cfg.data.md5)} files in {args.out}")


def cmd_preprocess(args) -> None:
    from ddpm.data import preprocess

    manifest = preprocess(_config(args).data, args.out, raw_dir=args.raw)
    skipped = f", skipped {len(manifest['skipped'])} unreadable" if manifest["skipped"] else ""
    print(f"wrote {manifest['count']} images {manifest['shape']} to {args.out}{skipped}")


def cmd_train(args) -> None:
    from ddpm.train import train

    run = _run_config(args)
    summary = train(run.config, run.id, args.data, args.out)
    print(
        f"{run.id}: {summary['steps']} steps, {summary['images_per_s'] or 0:.0f} images/s, "
        f"final loss {summary['final_loss']:.4f}; wrote {args.out}"
    )


def cmd_sample(args) -> None:
    from ddpm.sampling import generate

    run = _run_config(args)
    summary = generate(run.config, run.id, args.ckpt, args.out)
    print(
        f"{run.id}: {summary['num_images']} images at {summary['images_per_s']:.1f} images/s "
        f"({summary['nfe_per_image']} network evaluations each); wrote {args.out}"
    )


def cmd_fetch_weights(args) -> None:
    from ddpm.metrics import fetch_weights

    ec = _config(args).evaluate
    info = fetch_weights(ec.weights_url, args.out, ec.weights_sha256_prefix)
    print(f"{args.out}: sha256 {info['sha256']}")


def cmd_make_test_inception(args) -> None:
    from ddpm.metrics import make_test_inception

    info = make_test_inception(args.out, seed=args.seed)
    print(
        f"{args.out}: random-weight InceptionV3 (seed {args.seed}), sha256 {info['sha256']}; "
        "FIDs computed with it are not comparable with published numbers"
    )


def cmd_reference_stats(args) -> None:
    from ddpm.metrics import reference_stats

    meta = reference_stats(_config(args).evaluate, args.data, args.weights, args.out)
    print(
        f"{args.out}: {meta['n_real']} real images; real-vs-real floor FID "
        f"{meta['floor']['fid']:.3f}, KID {meta['floor']['kid_mean']:.5f}"
    )


def cmd_evaluate(args) -> None:
    from ddpm.metrics import evaluate

    m = evaluate(_config(args).evaluate, args.samples, args.reference, args.weights, args.out)
    print(
        f"FID {m['fid']:.3f}{'' if m['fid_reliable'] else ' (unreliable at this N)'}, "
        f"IS {m['is_mean']:.3f} +- {m['is_std']:.3f}, KID {m['kid_mean']:.5f} +- "
        f"{m['kid_std']:.5f} (N = {m['n_generated']}); wrote {args.out}"
    )


def cmd_summary(args) -> None:
    from ddpm.report import write_summary

    rows = write_summary(_config(args), args.runs, args.out)
    for r in rows:
        fid = f"FID {r['fid']:.3f}" if r.get("fid") is not None else "no metrics"
        print(f"{r['run_id']:40s} {r['status']:10s} {fid}")
    print(f"wrote {args.out}")


COMMANDS = {
    "schema": (cmd_schema, "write the config's JSON schema (YAML)"),
    "config": (cmd_config, "validate a config and print it resolved (--dry-run of every stage)"),
    "runs": (cmd_runs, "list the run ids of the config's grid"),
    "download": (cmd_download, "fetch and verify the Flowers-102 files"),
    "preprocess": (cmd_preprocess, "build the uint8 dataset tensor and its manifest"),
    "train": (cmd_train, "train one run of the grid (resumes from its checkpoint)"),
    "sample": (cmd_sample, "sample images from a trained run's EMA weights"),
    "fetch-weights": (cmd_fetch_weights, "download and verify the FID Inception weights"),
    "make-test-inception": (
        cmd_make_test_inception,
        "build seeded random Inception weights (offline tests and demos)",
    ),
    "reference-stats": (cmd_reference_stats, "real-image features of a dataset, computed once"),
    "evaluate": (cmd_evaluate, "FID, IS and KID of a run's samples"),
    "summary": (cmd_summary, "one CSV table comparing every run of the grid"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "schema":
            p.add_argument("--out", help="file to write (default: stdout)")
            continue
        if name == "make-test-inception":
            p.add_argument("--out", required=True, help="weights file to write")
            p.add_argument("--seed", type=int, default=0)
            continue
        p.add_argument("--config", required=True, help="YAML config file")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key (dotted, e.g. train.steps=100); repeatable",
        )
        if name == "config":
            p.add_argument("--run", help="print this run's resolved config")
        if name == "download":
            p.add_argument("--out", required=True, help="folder for the downloaded files")
        if name in ("train", "sample"):
            p.add_argument("--run", required=True, help="run id (see `python -m ddpm runs`)")
            p.add_argument("--out", required=True, help="run folder to write")
        if name == "train":
            p.add_argument("--data", required=True, help="preprocessed dataset (.npy)")
        if name == "sample":
            p.add_argument("--ckpt", required=True, help="final.pt of the run")
        if name in ("fetch-weights", "reference-stats", "evaluate"):
            p.add_argument("--out", required=True, help="file to write")
        if name in ("reference-stats", "evaluate"):
            p.add_argument("--weights", required=True, help="Inception weights file")
        if name == "reference-stats":
            p.add_argument("--data", required=True, help="preprocessed dataset (.npy)")
        if name == "evaluate":
            p.add_argument("--samples", required=True, help="samples.npz of a run")
            p.add_argument("--reference", required=True, help="reference statistics file")
        if name == "summary":
            p.add_argument("--runs", required=True, help="folder holding one folder per run")
            p.add_argument("--out", required=True, help="CSV file to write")
        if name == "preprocess":
            p.add_argument("--raw", help="download folder (data.source: flowers102)")
            p.add_argument("--out", required=True, help="dataset file to write (.npy)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command][0](args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    return 0

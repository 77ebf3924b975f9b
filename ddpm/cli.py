"""`python -m ddpm <stage> ...`: parse the arguments, then make one call into the module."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
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


def cmd_config_docs(args) -> None:
    from ddpm.config import config_reference_markdown

    text = config_reference_markdown()
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

    seed = args.seed or 0
    info = make_test_inception(args.out, seed=seed)
    print(
        f"{args.out}: random-weight InceptionV3 (seed {seed}), sha256 {info['sha256']}; "
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


def cmd_report(args) -> None:
    from ddpm.report import build_report

    context = build_report(_config(args), args.runs, args.out, data_path=args.data)
    failed = len(context["failed"])
    print(
        f"wrote {args.out}: {len(context['rows'])} runs"
        + (f", {failed} incomplete" if failed else "")
    )


def cmd_dvc_yaml(args) -> None:
    from ddpm.dvcfile import render_file

    if args.set:
        raise PipelineError("dvc-yaml reads the config file as DVC will; --set is not supported")
    text = render_file(args.config)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)


@dataclass(frozen=True)
class Command:
    run: Callable
    help: str
    required: tuple[tuple[str, str], ...] = ()  # (flag, help) of required options
    optional: tuple[tuple, ...] = ()  # (flag, help) or (flag, help, type)
    reads_config: bool = True  # takes --config and --set


RUN = ("--run", "run id (see `python -m ddpm runs`)")
DATA = ("--data", "preprocessed dataset (.npy)")
WEIGHTS = ("--weights", "Inception weights file")

COMMANDS = {
    "schema": Command(
        cmd_schema,
        "write the config's JSON schema (YAML)",
        optional=(("--out", "file to write (default: stdout)"),),
        reads_config=False,
    ),
    "config-docs": Command(
        cmd_config_docs,
        "write config/README.md (every key explained)",
        optional=(("--out", "file to write (default: stdout)"),),
        reads_config=False,
    ),
    "config": Command(
        cmd_config,
        "validate a config and print it resolved (a dry run)",
        optional=(("--run", "print this run's resolved config"),),
    ),
    "runs": Command(cmd_runs, "list the run ids of the config's grid"),
    "download": Command(
        cmd_download,
        "fetch and verify the Flowers-102 files",
        (("--out", "folder for the downloaded files"),),
    ),
    "preprocess": Command(
        cmd_preprocess,
        "build the uint8 dataset tensor and its manifest",
        (("--out", "dataset file to write (.npy)"),),
        (("--raw", "download folder (data.source: flowers102)"),),
    ),
    "train": Command(
        cmd_train,
        "train one run of the grid (resumes from its checkpoint)",
        (RUN, DATA, ("--out", "run folder to write")),
    ),
    "sample": Command(
        cmd_sample,
        "sample images from a trained run's EMA weights",
        (RUN, ("--ckpt", "final.pt of the run"), ("--out", "run folder to write")),
    ),
    "fetch-weights": Command(
        cmd_fetch_weights,
        "download and verify the FID Inception weights",
        (("--out", "weights file to write"),),
    ),
    "make-test-inception": Command(
        cmd_make_test_inception,
        "build seeded random Inception weights (offline tests, demos)",
        (("--out", "weights file to write"),),
        (("--seed", "seed of the weights (default 0)", int),),
        reads_config=False,
    ),
    "reference-stats": Command(
        cmd_reference_stats,
        "real-image features, computed once",
        (DATA, WEIGHTS, ("--out", "reference file to write")),
    ),
    "evaluate": Command(
        cmd_evaluate,
        "FID, IS and KID of a run's samples",
        (
            ("--samples", "samples.npz of a run"),
            ("--reference", "reference statistics file"),
            WEIGHTS,
            ("--out", "metrics.json to write"),
        ),
    ),
    "report": Command(
        cmd_report,
        "the HTML report comparing every run of the grid",
        (("--runs", "folder holding one folder per run"), ("--out", "HTML file to write")),
        (("--data", "preprocessed dataset, for the memorisation check"),),
    ),
    "dvc-yaml": Command(
        cmd_dvc_yaml,
        "write dvc.yaml for the config's stages and grid",
        optional=(("--out", "file to write (default: stdout)"),),
    ),
    "summary": Command(
        cmd_summary,
        "one CSV table comparing every run of the grid",
        (("--runs", "folder holding one folder per run"), ("--out", "CSV file to write")),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        if command.reads_config:
            p.add_argument("--config", required=True, help="YAML config file")
            p.add_argument(
                "--set",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="override a config key (dotted, e.g. train.steps=100); repeatable",
            )
        for flag, help_text in command.required:
            p.add_argument(flag, required=True, help=help_text)
        for flag, help_text, *kind in command.optional:
            p.add_argument(flag, help=help_text, type=kind[0] if kind else str)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command].run(args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    return 0

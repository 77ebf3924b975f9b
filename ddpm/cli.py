"""`python -m ddpm <stage> ...`: parse the arguments, then make one call into the module."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from ddpm.plumbing.console import end_progress_bars, stderr_as_lines
from ddpm.plumbing.errors import PipelineError
from ddpm.plumbing.files import atomic_write_bytes, check_output_dir, check_output_file


def _parse_set(items: list[str], flag: str = "--set") -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise PipelineError(f"{flag} expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _config(args):
    from ddpm.pipeline.config import load_config

    return load_config(args.config, _parse_set(args.set))


def _job(args, stage_name: str):
    """The config a stage command runs with and its settings document (`stages.load_job`)."""
    from ddpm.pipeline.stages import load_job

    tune = {}
    for item in args.tune:
        tune.update(_parse_set(item.split(","), "--tune"))
    return load_job(
        stage_name,
        settings=args.settings,
        config=args.config,
        run=args.run,
        overrides=_parse_set(args.set),
        tune=tune,
        tune_from=args.tune_from,
    )


# -- commands ----------------------------------------------------------------------------------


def cmd_schema(args) -> None:
    from ddpm.pipeline.docs import schema_yaml

    _write_or_print(schema_yaml(), args.out)


def cmd_config_docs(args) -> None:
    from ddpm.pipeline.docs import config_reference_markdown

    _write_or_print(config_reference_markdown(), args.out)


def cmd_stages_docs(args) -> None:
    from ddpm.pipeline.docs import stages_markdown

    _write_or_print(stages_markdown(), args.out)


def _write_or_print(text: str, out: str | None) -> None:
    if out:
        check_output_file(out)
        atomic_write_bytes(out, text.encode())
    else:
        sys.stdout.write(text)


def cmd_config(args) -> None:
    """Print the resolved config (of one network or variant, or the base config and the plan)."""
    from ddpm.pipeline.config import to_dict
    from ddpm.pipeline.stages import plan

    cfg = _config(args)
    the_plan = plan(cfg)
    if args.run:
        found = {n.id: n.config for n in the_plan.networks}
        found.update({v.key: v.config for v in the_plan.variants})
        if args.run not in found:
            raise PipelineError(f"--run {args.run}: not in this grid; see `python -m ddpm runs`")
        out = {"run": args.run, "config": to_dict(found[args.run])}
    else:
        out = {
            "config": to_dict(cfg),
            "networks": [n.id for n in the_plan.networks],
            "variants": [v.key for v in the_plan.variants],
        }
    print(json.dumps(out, indent=2))


def cmd_runs(args) -> None:
    from ddpm.pipeline.stages import plan

    the_plan = plan(_config(args))
    for variant in the_plan.variants:
        print(variant.key)


def cmd_settings(args) -> None:
    from ddpm.pipeline.config import load_config
    from ddpm.pipeline.stages import write_all_settings

    cfg = load_config(args.config, _parse_set(args.set), layer=args.params)
    if args.dvc_yaml:
        from ddpm.pipeline.dvcfile import check_current

        check_current(args.config, args.dvc_yaml)
    check_output_dir(args.out)
    names = write_all_settings(cfg, args.out)
    print(f"wrote {len(names)} settings files to {args.out}")


def cmd_accept_code(args) -> None:
    from ddpm.pipeline.fingerprints import ACCEPTED
    from ddpm.pipeline.stages import accept_code

    accepted = args.accepted or ACCEPTED
    for line in accept_code(_config(args), args.stages.split(","), args.reason, accepted):
        print(line)


def cmd_download(args) -> None:
    from ddpm.data.download import download

    cfg, _ = _job(args, "download")
    download(cfg.data, args.out)
    print(f"downloaded and verified {len(cfg.data.md5)} files in {args.out}")


def cmd_preprocess(args) -> None:
    from ddpm.data.preprocess import preprocess

    cfg, _ = _job(args, "preprocess")
    manifest = preprocess(cfg.data, args.out, raw_dir=args.raw)
    skipped = f", skipped {len(manifest['skipped'])} unreadable" if manifest["skipped"] else ""
    print(f"wrote {manifest['count']} images {manifest['shape']} to {args.out}{skipped}")


def cmd_train(args) -> None:
    from ddpm.plumbing.launcher import launch_training
    from ddpm.training.ranks import Ranks
    from ddpm.training.train import train
    from ddpm.training.view import TrainingView

    cfg, document = _job(args, "train")
    network = document["instance"] or "default"
    if cfg.train.gpus > 1 and not Ranks.from_env().parallel:
        # This process claims the GPUs and starts one process per GPU, each running this
        # same command (which then takes the branch below).
        launch_training(args.argv, cfg.train)
        return
    summary = train(
        cfg,
        network,
        args.data,
        args.out,
        identity=document,
        restart_if_changed=args.restart_if_changed,
        view=TrainingView,
    )
    if not Ranks.from_env().main:
        return
    loss = summary["final_loss"]
    print(
        f"{network}: {summary['steps']} steps, {summary['images_per_s'] or 0:.0f} images/s, "
        f"final loss {'-' if loss is None else f'{loss:.4f}'}; wrote {args.out}"
    )


def cmd_sample(args) -> None:
    from ddpm.sampling.sample import generate

    cfg, document = _job(args, "sample")
    variant = document["instance"] or "default"
    summary = generate(cfg, variant, args.ckpt, args.out, network=document.get("network"))
    print(
        f"{variant}: {summary['num_images']} images at {summary['images_per_s']:.1f} images/s "
        f"({summary['nfe_per_image']} network evaluations each); wrote {args.out}"
    )


def cmd_progress(args) -> None:
    from ddpm.evaluation.progress import measure

    cfg, document = _job(args, "progress")
    result = measure(
        cfg,
        args.snapshots,
        args.ckpt,
        args.reference,
        args.weights,
        args.out,
        network=document.get("network"),
    )
    curve = ", ".join(f"{p['step']}: {p['fid']:.2f}" for p in result["points"])
    print(f"FID by training step: {curve or 'no snapshots (train.snapshot_every: 0)'}")
    print(f"wrote {args.out}")


def cmd_inception_weights(args) -> None:
    from ddpm.evaluation.inception_weights import make_weights

    print(make_weights(_job(args, "inception_weights")[0].evaluate, args.out))


def cmd_make_test_inception(args) -> None:
    from ddpm.evaluation.inception_weights import make_test_inception

    seed = args.seed or 0
    info = make_test_inception(args.out, seed=seed)
    print(
        f"{args.out}: random-weight InceptionV3 (seed {seed}), sha256 {info['sha256']}; "
        "FIDs computed with it are not comparable with published numbers"
    )


def cmd_dinov2_weights(args) -> None:
    from ddpm.evaluation.dinov2_weights import make_weights

    print(make_weights(_job(args, "dinov2_weights")[0].evaluate, args.out))


def cmd_dinov2_reference(args) -> None:
    from ddpm.evaluation.dinov2_reference import dinov2_reference

    ec = _job(args, "dinov2_reference")[0].evaluate
    record = dinov2_reference(ec, args.data, args.weights, args.out)
    print(
        f"{args.out}: {record['n_real']} real images' DINOv2 features; real-vs-real floor "
        f"FD_DINOv2 {record['floor']['fd']:.3f}"
    )


def cmd_reference_stats(args) -> None:
    from ddpm.evaluation.reference_stats import reference_stats

    ec = _job(args, "reference_stats")[0].evaluate
    meta = reference_stats(ec, args.data, args.weights, args.out)
    print(
        f"{args.out}: {meta['n_real']} real images; real-vs-real floor FID "
        f"{meta['floor']['fid']:.3f}, KID {meta['floor']['kid_mean']:.5f}"
    )


def cmd_evaluate(args) -> None:
    from ddpm.evaluation.evaluate import evaluate

    cfg, document = _job(args, "evaluate")
    variant = document["instance"] or None
    given = (args.dinov2_weights, args.dinov2_reference)
    if any(given) and not all(given):
        raise PipelineError("give both --dinov2-weights and --dinov2-reference, or neither")
    dinov2 = given if all(given) else None
    m = evaluate(
        cfg.evaluate, args.samples, args.reference, args.weights, args.out, variant, dinov2=dinov2
    )
    parts = [f"FID {m['fid']:.3f}{'' if m['fid_reliable'] else ' (unreliable at this N)'}"]
    if "is_mean" in m:
        parts.append(
            f"IS {m['is_mean']:.3f}" + ("" if m["is_std"] is None else f" +- {m['is_std']:.3f}")
        )
    if "kid_mean" in m:
        parts.append(f"KID {m['kid_mean']:.5f} +- {m['kid_std']:.5f}")
    if "fd_dinov2" in m:
        parts.append(f"FD_DINOv2 {m['fd_dinov2']:.3f}")
    print(f"{', '.join(parts)} (N = {m['n_generated']}); wrote {args.out}")


def cmd_summary(args) -> None:
    from ddpm.report.summary import write_summary

    rows = write_summary(_job(args, "summary")[0], args.runs, args.out, args.metrics)
    for r in rows:
        fid = f"FID {r['fid']:.3f}" if r.get("fid") is not None else "no metrics"
        print(f"{r['run_id']:40s} {r['status']:10s} {fid}")
    print(f"wrote {args.out} and {args.metrics}")


def cmd_report(args) -> None:
    from ddpm.report.report import build_report

    cfg = _job(args, "report")[0]
    context = build_report(cfg, args.runs, args.out, data_path=args.data, accepted=args.accepted)
    failed = len(context["failed"])
    print(
        f"wrote {args.out}: {len(context['rows'])} runs"
        + (f", {failed} incomplete" if failed else "")
    )


def cmd_dvc_yaml(args) -> None:
    from ddpm.pipeline.dvcfile import PARAMS, render_files

    if args.set:
        raise PipelineError("dvc-yaml reads the config file as DVC will; --set is not supported")
    dvc_yaml, params = render_files(args.config)
    if args.out:  # DVC reads params.yaml from beside dvc.yaml
        _write_or_print(params, str(Path(args.out).with_name(PARAMS)))
    _write_or_print(dvc_yaml, args.out)


@dataclass(frozen=True)
class Command:
    run: Callable
    help: str
    required: tuple[tuple[str, str], ...] = ()  # (flag, help) of required options
    optional: tuple[tuple, ...] = ()  # (flag, help) or (flag, help, type); type bool = a switch
    kind: str = "config"  # "config": --config/--set; "stage": also --settings/--run/--tune; ""


RUN = ("--run", "network id, or network/variant (see `python -m ddpm runs`); with --config")
DATA = ("--data", "preprocessed dataset (.npy)")
WEIGHTS = ("--weights", "Inception weights file")

COMMANDS = {
    "schema": Command(
        cmd_schema,
        "write the config's JSON schema (YAML)",
        optional=(("--out", "file to write (default: stdout)"),),
        kind="",
    ),
    "config-docs": Command(
        cmd_config_docs,
        "write config/README.md (every key explained)",
        optional=(("--out", "file to write (default: stdout)"),),
        kind="",
    ),
    "stages-docs": Command(
        cmd_stages_docs,
        "write docs/stages.md (what each stage reads, runs and writes, and what reruns it)",
        optional=(("--out", "file to write (default: stdout)"),),
        kind="",
    ),
    "config": Command(
        cmd_config,
        "validate a config and print it resolved, with its networks and variants (a dry run)",
        optional=(("--run", "print this network's or network/variant's resolved config"),),
    ),
    "runs": Command(cmd_runs, "list the network/variant ids of the config's grid"),
    "settings": Command(
        cmd_settings,
        "write every stage's settings file (what each job reads and is fingerprinted by)",
        (("--out", "folder to write them to (the pipeline uses RESULTS/settings)"),),
        (
            ("--params", "a params file (DVC's params.yaml) whose settings replace the config's"),
            ("--dvc-yaml", "first check that this dvc.yaml was generated from the config"),
        ),
    ),
    "accept-code": Command(
        cmd_accept_code,
        "accept a code change as result-neutral: the stages keep their results instead of "
        "rerunning (recorded with who, when and why in config/accepted-code.yaml)",
        (
            ("--stages", "the stages whose change to accept, comma-separated (train,sample)"),
            ("--reason", "why the change cannot alter a result (shown in the report)"),
        ),
        (("--accepted", "the file to record it in (default: config/accepted-code.yaml)"),),
    ),
    "download": Command(
        cmd_download,
        "fetch and verify the Flowers-102 files",
        (("--out", "folder for the downloaded files"),),
        kind="stage",
    ),
    "preprocess": Command(
        cmd_preprocess,
        "build the uint8 dataset tensor and its manifest",
        (("--out", "dataset file to write (.npy)"),),
        (("--raw", "download folder (data.source: flowers102)"),),
        kind="stage",
    ),
    "train": Command(
        cmd_train,
        "train one network of the grid (resumes from its checkpoint)",
        (DATA, ("--out", "the network's folder")),
        (
            (
                "--restart-if-changed",
                "set aside a checkpoint trained with other settings, code or data (as "
                "checkpoint.stale.pt) and train from scratch, instead of refusing",
                bool,
            ),
        ),
        kind="stage",
    ),
    "sample": Command(
        cmd_sample,
        "sample images from a trained network's EMA weights",
        (("--ckpt", "the network's final.pt"), ("--out", "the variant's folder")),
        kind="stage",
    ),
    "progress": Command(
        cmd_progress,
        "FID over training: score a network's snapshots and final weights with a small budget",
        (
            ("--snapshots", "the network's snapshots.json"),
            ("--ckpt", "the network's final.pt"),
            ("--reference", "reference statistics file"),
            WEIGHTS,
            ("--out", "progress.json to write"),
        ),
        kind="stage",
    ),
    "inception-weights": Command(
        cmd_inception_weights,
        "the metrics' feature network: download and verify the FID Inception weights, train "
        "features on the synthetic flowers, or build random test weights "
        "(evaluate.inception_source)",
        (("--out", "weights file to write"),),
        kind="stage",
    ),
    "make-test-inception": Command(
        cmd_make_test_inception,
        "build seeded random Inception weights (offline plumbing tests; they do not rank quality)",
        (("--out", "weights file to write"),),
        (("--seed", "seed of the weights (default 0)", int),),
        kind="",
    ),
    "dinov2-weights": Command(
        cmd_dinov2_weights,
        "FD_DINOv2's feature network: download and check Meta's DINOv2 ViT-L/14 weights, or "
        "build random test weights (evaluate.dinov2_source)",
        (("--out", "weights file to write"),),
        kind="stage",
    ),
    "dinov2-reference": Command(
        cmd_dinov2_reference,
        "the real images' DINOv2 features, computed once (FD_DINOv2's real side)",
        (DATA, ("--weights", "DINOv2 weights file"), ("--out", "reference file to write")),
        kind="stage",
    ),
    "reference-stats": Command(
        cmd_reference_stats,
        "real-image features, computed once",
        (DATA, WEIGHTS, ("--out", "reference file to write")),
        kind="stage",
    ),
    "evaluate": Command(
        cmd_evaluate,
        "the scores evaluate.metrics lists of a variant's samples (FID, IS, KID, precision and "
        "co, FD_DINOv2)",
        (
            ("--samples", "samples.npz of a variant"),
            ("--reference", "reference statistics file"),
            WEIGHTS,
            ("--out", "the variant's folder (metrics.json, evaluation.json)"),
        ),
        (
            ("--dinov2-weights", "DINOv2 weights file (when evaluate.metrics lists fd_dinov2)"),
            ("--dinov2-reference", "DINOv2 reference file (when evaluate.metrics lists fd_dinov2)"),
        ),
        kind="stage",
    ),
    "report": Command(
        cmd_report,
        "the HTML report comparing every run of the grid",
        (("--runs", "folder holding one folder per network"), ("--out", "HTML file to write")),
        (
            ("--data", "preprocessed dataset, for the memorisation check"),
            ("--accepted", "the accepted code changes to name (config/accepted-code.yaml)"),
        ),
        kind="stage",
    ),
    "dvc-yaml": Command(
        cmd_dvc_yaml,
        "write dvc.yaml for the config's stages and grid, and params.yaml beside it",
        optional=(("--out", "file to write (default: stdout, without params.yaml)"),),
    ),
    "summary": Command(
        cmd_summary,
        "one CSV table comparing every run of the grid, and its headline numbers as JSON",
        (
            ("--runs", "folder holding one folder per network"),
            ("--out", "CSV file to write"),
            ("--metrics", "JSON file of each run's FID, its spread, KID and IS (for DVC)"),
        ),
        kind="stage",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        if command.kind:
            p.add_argument("--config", required=command.kind == "config", help="YAML config file")
            p.add_argument(
                "--set",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="override a config key (dotted, e.g. train.steps=100); repeatable",
            )
        if command.kind == "stage":
            p.add_argument("--settings", help="the stage's settings file (the pipeline writes it)")
            p.add_argument(*RUN[:1], help=RUN[1])
            p.add_argument(
                "--tune",
                action="append",
                default=[],
                metavar="KEY=VALUE[,...]",
                help="settings that cannot change a result (e.g. data.workers)",
            )
            p.add_argument("--tune-from", help="read those settings from this config file")
        for flag, help_text in command.required:
            p.add_argument(flag, required=True, help=help_text)
        for flag, help_text, *kind in command.optional:
            if kind and kind[0] is bool:
                p.add_argument(flag, action="store_true", help=help_text)
            else:
                p.add_argument(flag, help=help_text, type=kind[0] if kind else str)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure a user can meet ends in one `error:` line and an exit
    code: 2 for a mistake in the input, 1 for a refusal of the operating system (the path and
    the cause named), 128 + N for signal N (130: Ctrl-C). Files being written are removed."""
    from ddpm.plumbing.files import describe_os_error

    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv  # what a launcher starts again
    with stderr_as_lines() as stderr:
        try:
            COMMANDS[args.command].run(args)
            return 0
        except PipelineError as e:
            message, code = str(e), getattr(e, "exit_code", 2)
            if e.every_process:  # the first process of a data-parallel training says it for all
                from ddpm.training.ranks import Ranks

                message = message if Ranks.from_env().main else None
        except OSError as e:
            message, code = describe_os_error(e), 1
        except KeyboardInterrupt:
            message = (
                f"{args.command} interrupted (Ctrl-C); nothing half-written was kept. Run the "
                "same command again to redo it."
            )
            code = 130
        end_progress_bars()
        # The error starts a line of its own, after whatever a bar left on the one open. After
        # Ctrl-C always, as click's "Aborted!" does: the terminal may have echoed ^C there.
        if message is not None:
            fresh = code == 130 or not stderr.at_line_start
            print(("\n" if fresh else "") + f"error: {message}", file=sys.stderr)
        return code

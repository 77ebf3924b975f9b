"""Comparing the runs of a sweep: a CSV table and one self-contained HTML report.

`collect_runs` reads what each sampler variant of each network of the grid left on disk and never
drops one: a run whose files are missing is shown as such. `build_report` renders
`templates/report.html.j2` with every image embedded as a data URI (no network access, no
front-end framework).
"""

from __future__ import annotations

import base64
import csv
import io
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from ddpm.config import Config, config_hash, to_dict
from ddpm.files import atomic_write_bytes, check_output_file
from ddpm.images import grid, png_bytes
from ddpm.layout import (
    METRIC_KEYS,
    ArtefactError,
    NetworkFiles,
    VariantFiles,
    read_json,
    read_log,
    read_samples,
)
from ddpm.schedules import betas_of, terminal_stats
from ddpm.stages import plan

COLUMNS = [
    "run_id",
    "network",
    "variant",
    "status",
    "T",
    "schedule",
    "objective",
    "sampler",
    "nfe_per_image",
    "sample_s_per_1000",
    "alpha_bar_T",
    "terminal_snr",
    "parameters",
    "steps",
    "images_seen",
    "train_time_s",
    "train_images_per_s",
    "final_loss",
]
EVALUATION_KEYS = ["fid_reliable", "test_weights", "features"]
COLUMNS += list(METRIC_KEYS) + EVALUATION_KEYS
FAR_FROM_NOISE = 1e-3  # alpha_bar_T above this: sampling from pure noise starts off-distribution
# alpha_bar_T below this with eps-prediction: the x_0 estimate at t = T is the network's error
# divided by sqrt(alpha_bar_T), and with beta_T ~ 1 the first step keeps it (saturated colours).
EPS_NEAR_ZERO = 1e-5  # flags cosine and sigmoid at any T; not linear (4e-5 at T = 1000)
# The seed project's setting: T = 350 with betas rising linearly from 1e-4 to 2e-2.
SEED_SETTING = {"T": 350, "schedule": "linear", "beta_start": 1e-4, "beta_end": 2e-2}
# Two FIDs closer than this many standard deviations of their difference are not told apart.
DISTINGUISHABLE_SIGMAS = 2.0
PACKAGES = ["torch", "torchvision", "torchmetrics", "torch-fidelity", "numpy", "snakemake", "dvc"]


def _read(path: Path) -> dict | None:
    """A run's JSON file, or None while it is missing or unreadable (the row says so)."""
    try:
        return read_json(path)
    except ArtefactError:
        return None


def collect_runs(cfg: Config, runs_dir: str | Path) -> list[dict]:
    """One row per sampler variant of every network of the grid, whatever state its files are
    in (never silently dropped). `run_id` is the network id, followed by `/variant` when the
    grid has sampler variants."""
    the_plan = plan(cfg)
    rows = []
    runs = Path(runs_dir)
    for variant in the_plan.variants:
        net = NetworkFiles(runs / variant.network)
        var = VariantFiles(runs / variant.network / variant.id)
        train = _read(net.summary)
        sample, metrics, evaluation = _read(var.summary), _read(var.metrics), _read(var.evaluation)
        dc = variant.config.diffusion
        row = {
            **dict.fromkeys(COLUMNS),  # every column exists, None until a file provides it
            "device": None,
            "run_id": variant.key if the_plan.variant_axes else variant.network,
            "network": variant.network,
            "variant": variant.id,
            "params": {
                **next(n.params for n in the_plan.networks if n.id == variant.network),
                **variant.params,
            },
            "T": dc.T,
            "schedule": dc.schedule,
            "objective": dc.objective,
            "sampler": variant.config.sample.method,
            "seed_setting": all(getattr(dc, k) == v for k, v in SEED_SETTING.items()),
            **terminal_stats(betas_of(dc)),
        }
        missing = [
            name
            for name, found in (
                ("training", train),
                ("samples", sample),
                ("metrics", metrics and evaluation),
            )
            if not found
        ]
        row["status"] = "ok" if not missing else "missing " + ", ".join(missing)
        if train:
            row.update(
                parameters=train["parameters"],
                steps=train["steps"],
                images_seen=train["images_seen"],
                train_time_s=train["wall_time_s"],
                train_images_per_s=train["images_per_s"],
                final_loss=train["final_loss"],
                device=train.get("device"),
            )
        if sample:
            row["nfe_per_image"] = sample["nfe_per_image"]
            row["sample_s_per_1000"] = 1000 / sample["images_per_s"]
        if metrics and evaluation:
            row.update({k: metrics.get(k) for k in METRIC_KEYS})
            row.update({k: evaluation.get(k) for k in EVALUATION_KEYS})
        rows.append(row)
    return rows


def write_summary(cfg: Config, runs_dir: str | Path, out: str | Path) -> list[dict]:
    check_output_file(out)
    rows = collect_runs(cfg, runs_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out, buf.getvalue().encode())
    return rows


# -- pictures ------------------------------------------------------------------------------------


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return data_uri(buf.getvalue())


def _smooth(values: np.ndarray, window: int = 5) -> np.ndarray:
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(
        np.pad(values, (window // 2, window - 1 - window // 2), mode="edge"), kernel, mode="valid"
    )


def _read_log(path: Path) -> dict[str, np.ndarray] | None:
    """A network's training log as columns; None while it is missing, unreadable or empty."""
    try:
        rows = read_log(path)
    except ArtefactError:
        return None
    return {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else None


def _plots(
    cfg: Config, rows: list[dict], runs_dir: Path, floor: float | None, leaders: dict
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    networks = dict.fromkeys(r["network"] for r in rows)  # one loss curve per trained network
    logs = {n: _read_log(NetworkFiles(runs_dir / n).log) for n in networks}
    logs = {k: v for k, v in logs.items() if v is not None}
    if logs:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for run_id, log in logs.items():
            ax.plot(log["step"], _smooth(log["loss"]), label=run_id)
        ax.set(
            xlabel="training step", ylabel="loss (smoothed)", yscale="log", title="Training loss"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        plots["loss"] = _figure_uri(fig)

        fig, axes = plt.subplots(1, 4, figsize=(12, 3), sharey=True)
        for q, ax in enumerate(axes):
            for run_id, log in logs.items():
                ax.plot(log["step"], _smooth(log[f"loss_q{q + 1}"]), label=run_id)
            ax.set(title=f"t/T in [{q / 4:.2f}, {(q + 1) / 4:.2f})", xlabel="step", yscale="log")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("loss")
        axes[-1].legend(fontsize=6)
        plots["loss_quarters"] = _figure_uri(fig)

    # Schedules: one curve per distinct (T, schedule, range) among the runs.
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    seen = set()
    for network in plan(cfg).networks:
        dc = network.config.diffusion
        key = (dc.T, dc.schedule, dc.beta_start, dc.beta_end, dc.cosine_s)
        if key in seen:
            continue
        seen.add(key)
        ab = np.cumprod(1.0 - betas_of(dc))
        x = np.arange(1, dc.T + 1) / dc.T
        label = f"{dc.schedule}, T={dc.T}"
        a1.plot(x, ab, label=label)
        a2.plot(x, np.log(ab) - np.log1p(-ab), label=label)
    a1.set(xlabel="t / T", ylabel="alpha_bar_t", title="Signal kept")
    a2.set(xlabel="t / T", ylabel="log SNR", title="Log signal-to-noise ratio")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    a1.legend(fontsize=7)
    plots["schedules"] = _figure_uri(fig)

    scored = [r for r in rows if r.get("fid") is not None]
    if scored:
        plots["fid"] = _fid_plots(scored, floor)
    if leaders:
        plots["cost"] = _cost_plots([r for r in scored if r.get("nfe_per_image")], leaders)
    return plots


def _label(row: dict) -> str:
    return row["network"] + (" (seed's setting)" if row["seed_setting"] else "")


def _errors(rows: list[dict]) -> list[float] | None:
    """FID standard deviations for error bars (0 where one is missing); None if all are."""
    stds = [r.get("fid_std") for r in rows]
    return None if all(v is None for v in stds) else [v or 0.0 for v in stds]


def _fid_plots(scored: list[dict], floor: float | None) -> str:
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    # One line per schedule and sampler variant (variants share the trained networks).
    lines = sorted({(r["schedule"], r["variant"]) for r in scored})
    for schedule, variant in lines:
        pts = sorted(
            (r for r in scored if (r["schedule"], r["variant"]) == (schedule, variant)),
            key=lambda r: r["T"],
        )
        label = schedule if len({v for _, v in lines}) == 1 else f"{schedule}, {variant}"
        a1.errorbar(
            [r["T"] for r in pts],
            [r["fid"] for r in pts],
            yerr=_errors(pts),
            marker="o",
            capsize=3,
            label=label,
        )
    a1.set(xlabel="T", ylabel="FID", title="FID against T", xscale="log")
    ts = sorted({r["T"] for r in scored})
    a1.set_xticks(ts, [str(t) for t in ts])
    a1.minorticks_off()
    a1.legend(fontsize=7)
    schedules = sorted({r["schedule"] for r in scored})
    a2.bar(
        range(len(scored)),
        [r["fid"] for r in scored],
        yerr=_errors(scored),
        capsize=3,
        color=[f"C{schedules.index(r['schedule'])}" for r in scored],
    )
    a2.set_xticks(
        range(len(scored)),
        [r["run_id"] + (" *" if r["seed_setting"] else "") for r in scored],
        rotation=30,
        ha="right",
        fontsize=7,
    )
    title = "FID by run (colour: schedule"
    a2.set(
        ylabel="FID",
        title=title + (", *: seed's setting)" if any(r["seed_setting"] for r in scored) else ")"),
    )
    for ax in (a1, a2):
        ax.grid(alpha=0.3, axis="y")
    if floor is not None:
        for ax in (a1, a2):
            ax.axhline(floor, color="grey", linestyle=":", linewidth=1)
        a1.annotate("real vs real", (0.01, floor), xycoords=("axes fraction", "data"), fontsize=7)
    return _figure_uri(fig)


def budgets(rows: list[dict]) -> dict[int, dict]:
    """For each number of network evaluations per image: the scored row with the lowest FID,
    the runner-up, the margin between them and whether it is within their noise."""
    out = {}
    for nfe in sorted({r["nfe_per_image"] for r in rows}):
        ranked = sorted((r for r in rows if r["nfe_per_image"] == nfe), key=lambda r: r["fid"])
        best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
        out[nfe] = {
            "best": best,
            "second": second,
            "margin": second["fid"] - best["fid"] if second else None,
            "tied": second is not None and _indistinguishable(best, second),
        }
    return out


def _cost_plots(costed: list[dict], leaders: dict[int, dict]) -> str:
    """FID against sampling cost, one line per trained network; a star marks the best run at
    each number of network evaluations."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    networks = list(dict.fromkeys(r["network"] for r in costed))
    for i, network in enumerate(networks):
        pts = sorted(
            (r for r in costed if r["network"] == network), key=lambda r: r["nfe_per_image"]
        )
        for ax, x in ((a1, "nfe_per_image"), (a2, "sample_s_per_1000")):
            ax.errorbar(
                [r[x] for r in pts],
                [r["fid"] for r in pts],
                yerr=_errors(pts),
                marker="o",
                capsize=3,
                color=f"C{i}",
                label=_label(pts[0]),
            )
    for r in (b["best"] for b in leaders.values()):
        a1.plot(
            r["nfe_per_image"],
            r["fid"],
            marker="*",
            markersize=14,
            color="gold",
            markeredgecolor="black",
            linestyle="none",
            zorder=5,
        )
    a1.set(
        xlabel="network evaluations per image",
        ylabel="FID",
        xscale="log",
        title="FID against sampling steps (star: best at that budget)",
    )
    a2.set(
        xlabel="sampling seconds per 1,000 images",
        ylabel="FID",
        xscale="log",
        title="FID against sampling time",
    )
    nfes = sorted({r["nfe_per_image"] for r in costed})
    a1.set_xticks(nfes, [str(n) for n in nfes])
    a1.minorticks_off()
    a2.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    a2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    a1.legend(fontsize=7)
    return _figure_uri(fig)


def _samples(path: Path, n: int):
    """The first `n` samples of a variant; None while they are missing or unreadable."""
    try:
        return read_samples(path, limit=n)[0]
    except ArtefactError:
        return None


def _nearest(samples, train, k: int) -> list[tuple[int, list]]:
    """For each sample, the k training images closest in pixel space: (index, [(j, distance)]);
    samples and images are uint8 tensors."""
    import torch

    x = samples.flatten(1).float() / 255
    out = []
    dists = torch.cat(
        [torch.cdist(x, chunk.flatten(1).float() / 255) for chunk in train.split(2048)], dim=1
    )  # (n, N)
    values, indices = dists.topk(k, dim=1, largest=False)
    for i in range(len(samples)):
        out.append((i, list(zip(indices[i].tolist(), values[i].tolist(), strict=True))))
    return out


def _memorisation(samples, train, rc) -> dict:
    import torch

    picks = samples[: rc.memorisation_samples]
    tiles, distances = [], []
    for i, neighbours in _nearest(picks, train, rc.nearest_neighbours):
        tiles.append(picks[i])
        tiles += [train[j] for j, _ in neighbours]
        distances.append([d for _, d in neighbours])
    strip = grid(torch.stack(tiles), nrow=1 + rc.nearest_neighbours)
    return {"image": data_uri(png_bytes(strip, scale=2)), "distances": distances}


# -- the report ----------------------------------------------------------------------------------


def _git_commit(start: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=start,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown (not a git checkout)"
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _fmt(value) -> str:
    """Four significant digits; a dash for a value that does not exist."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _best(rows: list[dict]) -> list[dict]:
    """The best run by each metric; for FID also the runs it cannot be told apart from (their
    difference is within DISTINGUISHABLE_SIGMAS standard deviations, from half-sampling)."""
    best = []
    for key, label, better in (
        ("fid", "FID", min),
        ("kid_mean", "KID", min),
        ("is_mean", "Inception Score", max),
    ):
        scored = [r for r in rows if r.get(key) is not None]
        if not scored:
            continue
        r = better(scored, key=lambda r, key=key: r[key])
        entry = {"metric": label, "run_id": r["run_id"], "value": r[key]}
        if key == "fid":
            entry["std"] = r.get("fid_std")
            entry["ties"] = [
                {"run_id": o["run_id"], "value": o["fid"], "std": o["fid_std"]}
                for o in scored
                if o is not r and _indistinguishable(r, o)
            ]
        best.append(entry)
    return best


def _indistinguishable(a: dict, b: dict) -> bool:
    if a.get("fid_std") is None or b.get("fid_std") is None:
        return False  # no uncertainty known: no claim either way
    sigma = (a["fid_std"] ** 2 + b["fid_std"] ** 2) ** 0.5
    return abs(a["fid"] - b["fid"]) <= DISTINGUISHABLE_SIGMAS * sigma


def _training_costs(rows: list[dict]) -> list[dict]:
    """One row per trained network: device, hours on it, images seen."""
    costs = {}
    for r in rows:
        if r["network"] in costs or r.get("train_time_s") is None:
            continue
        device = r.get("device") or "unknown"
        costs[r["network"]] = {
            "network": _label(r),
            "device": device,
            "unit": "hours (CPU)" if device.startswith("cpu") else "GPU-hours",
            "hours": r["train_time_s"] / 3600,
            "steps": r["steps"],
            "images_seen": r["images_seen"],
            "parameters": r["parameters"],
        }
    return list(costs.values())


def build_report(
    cfg: Config, runs_dir: str | Path, out: str | Path, data_path: str | Path | None = None
) -> dict:
    """Write the HTML report comparing every run of `cfg`'s grid; returns what it showed."""
    import jinja2

    from ddpm.dataset import load_dataset

    check_output_file(out)
    runs_dir = Path(runs_dir)
    rc = cfg.report
    rows = collect_runs(cfg, runs_dir)
    train_images = load_dataset(data_path)[0] if data_path else None
    for row in rows:
        files = VariantFiles(runs_dir / row["network"] / row["variant"])
        row["far_from_noise"] = row["alpha_bar_T"] > FAR_FROM_NOISE
        row["eps_at_zero"] = row["objective"] == "eps" and row["alpha_bar_T"] < EPS_NEAR_ZERO
        samples = _samples(files.samples, rc.grid_images)
        row["grid"] = (
            data_uri(png_bytes(grid(samples, nrow=int(np.ceil(np.sqrt(len(samples))))), scale=2))
            if samples is not None
            else None
        )
        traj = files.trajectory
        row["trajectory"] = data_uri(traj.read_bytes()) if traj.exists() else None
        row["memorisation"] = (
            _memorisation(samples, train_images, rc)
            if samples is not None and train_images is not None and rc.memorisation_samples
            else None
        )
    test_weights = any(r.get("test_weights") for r in rows)
    flower_features = any(r.get("features") == "synthetic-features" for r in rows)
    floor = next((r["floor_fid"] for r in rows if r.get("floor_fid") is not None), None)
    leaders = budgets([r for r in rows if r.get("fid") is not None and r.get("nfe_per_image")])
    context = {
        "title": rc.title,
        "rows": rows,
        "failed": [r for r in rows if r["status"] != "ok"],
        "best": _best(rows),
        "sigmas": DISTINGUISHABLE_SIGMAS,
        "floor_fid": floor,
        "budgets": leaders,
        "costs": _training_costs(rows),
        "seed_rows": [r for r in rows if r["seed_setting"]],
        "grid": cfg.grid,
        "shared": {k: v for k, v in to_dict(cfg, skip_unread=True).items() if k != "grid"},
        "plots": _plots(cfg, rows, runs_dir, floor, leaders),
        "test_weights": test_weights,
        "flower_features": flower_features,
        "far_threshold": FAR_FROM_NOISE,
        "eps_threshold": EPS_NEAR_ZERO,
        "footer": {
            "commit": _git_commit(Path(__file__).parent),
            "config_hash": config_hash(cfg),
            "versions": _versions(),
            "devices": sorted({r["device"] for r in rows if r.get("device")}),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        },
    }
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ddpm", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
    )
    env.filters["fmt"] = _fmt
    env.filters["fmt_int"] = lambda v: "—" if v is None else f"{int(v):,}"
    html = env.get_template("report.html.j2").render(**context)
    atomic_write_bytes(out, html.encode())
    return context

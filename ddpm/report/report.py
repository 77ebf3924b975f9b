"""The `report` stage: one self-contained HTML report comparing the runs of a sweep.

The rows are the summary's (`ddpm.report.summary.collect_runs`: a run whose files are missing
is shown as such, never dropped). `build_report` renders
`templates/report.html.j2` with every image embedded as a data URI (no network access, no
front-end framework).
"""

from __future__ import annotations

import base64
import io
import itertools
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from ddpm.data.artefacts import FIDELITY_SCORES, read_log, read_samples
from ddpm.diffusion.schedules import betas_of
from ddpm.evaluation.verdict import (
    Setting,
    Verdict,
    agreement,
    agreement_sentence,
    assess,
    headline,
    interval,
    pm,
    signed,
)
from ddpm.pipeline.config import Config, config_hash, format_value, to_dict
from ddpm.pipeline.fingerprints import read_accepted
from ddpm.pipeline.layout import NetworkFiles, VariantFiles
from ddpm.pipeline.stages import plan
from ddpm.plumbing.errors import ArtefactError
from ddpm.plumbing.files import atomic_write_bytes, check_output_file
from ddpm.report.runs import collect_runs, read_or_none
from ddpm.sampling.images import grid, png_bytes

FAR_FROM_NOISE = 1e-3  # alpha_bar_T above this: sampling from pure noise starts off-distribution
# alpha_bar_T below this with eps-prediction: the x_0 estimate at t = T is the network's error
# divided by sqrt(alpha_bar_T), and with beta_T ~ 1 the first step keeps it (saturated colours).
EPS_NEAR_ZERO = 1e-5  # flags cosine and sigmoid at any T; not linear (4e-5 at T = 1000)
PACKAGES = ["torch", "torchvision", "torch-fidelity", "numpy", "snakemake", "dvc"]


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
    cfg: Config,
    rows: list[dict],
    runs_dir: Path,
    floor: float | None,
    leaders: dict,
    verdict: Verdict,
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = _loss_plots(plt, rows, runs_dir)
    plots["schedules"] = _schedule_plot(plt, cfg)
    # The runs by the verdict's score, as the plots read them (`fid`, `fid_std`).
    m = verdict.metric
    scored = [
        {**r, "fid": r[m], "fid_std": r.get(f"{m}_std")} for r in rows if r.get(m) is not None
    ]
    if verdict.axes and verdict.settings:
        plots["effects"] = _effect_plots(verdict, floor if m == "fid" else None)
    if verdict.curves:
        plots["progress"] = _progress_plot(verdict)
    if leaders:
        costed = [r for r in scored if r.get("nfe_per_image")]
        plots["cost"] = _figure_uri(cost_figure(costed, leaders, verdict.label))
    return plots


def _loss_plots(plt, rows: list[dict], runs_dir: Path) -> dict[str, str]:
    """The training loss of every network, overall and by quarter of the timesteps."""
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

    return plots


def _schedule_plot(plt, cfg: Config) -> str:
    """alpha_bar_t and log SNR of every distinct schedule among the networks."""
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
    return _figure_uri(fig)


def _label(row: dict) -> str:
    return row["network"] + (" (seed's setting)" if row["seed_setting"] else "")


def _errors(rows: list[dict]) -> list[float] | None:
    """FID standard deviations for error bars (0 where one is missing); None if all are."""
    stds = [r.get("fid_std") for r in rows]
    return None if all(v is None for v in stds) else [v or 0.0 for v in stds]


def _effect_plots(verdict: Verdict, floor: float | None) -> str:
    """One panel per grid axis: FID (mean ± its standard error) at each of the axis's levels,
    one line per combination of the other axes; small dots are the individual seeds."""
    import matplotlib.pyplot as plt

    axes = list(verdict.axes.items())
    cols = min(3, len(axes))
    rows = -(-len(axes) // cols)
    fig, panels = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for (axis, levels), ax in zip(axes, panels.flat, strict=False):
        others = [k for k, _ in verdict.settings[0].key if k != axis]
        lines: dict[tuple, list[Setting]] = {}
        for setting in verdict.settings:
            lines.setdefault(tuple(setting.get(k) for k in others), []).append(setting)
        for i, (combo, settings) in enumerate(lines.items()):
            points = sorted(settings, key=lambda s: levels.index(s.get(axis)))
            x = [levels.index(s.get(axis)) for s in points]
            named = ", ".join(f"{k}={v}" for k, v in zip(others, combo, strict=True))
            label = named or verdict.label
            ax.errorbar(
                x,
                [s.mean for s in points],
                yerr=[s.se or 0.0 for s in points],
                marker="o",
                capsize=3,
                color=f"C{i % 10}",
                label=label,
            )
            for xi, s in zip(x, points, strict=True):
                if s.n > 1:
                    ax.plot([xi] * s.n, s.values, ".", color=f"C{i % 10}", alpha=0.5)
        ax.set_xticks(range(len(levels)), [str(v) for v in levels])
        ax.set_xlim(-0.3, len(levels) - 0.7)
        ax.set(xlabel=axis, ylabel=verdict.label, title=f"{verdict.label} by {axis}")
        ax.grid(alpha=0.3, axis="y")
        if floor is not None:
            ax.axhline(floor, color="grey", linestyle=":", linewidth=1)
        if len(lines) > 1:
            ax.legend(fontsize=6)
    for ax in list(panels.flat)[len(axes) :]:
        ax.axis("off")
    fig.tight_layout()
    return _figure_uri(fig)


def log_ticks(values: list[float]) -> list[float]:
    """Tick positions for a log axis over `values` that always include labelled numbers: the
    1-2-5 steps inside their range, or, when fewer than two fall inside, three steps spread
    over it, rounded to two significant digits."""
    lo, hi = min(values), max(values)
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    ticks = [m * 10.0**d for d in decades for m in (1, 2, 5) if lo <= m * 10.0**d <= hi]
    if len(ticks) >= 2:
        return ticks
    return sorted({float(f"{v:.2g}") for v in np.geomspace(lo, hi, 3)})


def _as_row(setting: Setting) -> dict:
    """A setting where the template and plots expect a run: id, FID and its error."""
    return {
        "run_id": setting.id,
        "fid": setting.mean,
        "fid_std": setting.se,
        "nfe_per_image": setting.runs[0].get("nfe_per_image"),
    }


def budgets(verdict: Verdict) -> dict[int, dict]:
    """For each number of network evaluations per image: the setting with the lowest FID, the
    runner-up, the margin between them and whether it is within their noise (uncorrected; paired
    where both are variants of the same networks)."""
    out = {}
    costed = [s for s in verdict.settings if s.runs[0].get("nfe_per_image")]
    for nfe in sorted({s.runs[0]["nfe_per_image"] for s in costed}):
        ranked = sorted(
            (s for s in costed if s.runs[0]["nfe_per_image"] == nfe), key=lambda s: s.mean
        )
        best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
        out[nfe] = {
            "best": _as_row(best),
            "second": _as_row(second) if second else None,
            "margin": second.mean - best.mean if second else None,
            "tied": second is not None and not verdict.compare(second, best).called,
        }
    return out


# The line style of each sampler in the cost plots (DDPM's single point has none).
SAMPLER_STYLES = {
    "ddpm": ("none", "s"),
    "ddim": ("-", "o"),
    "dpmpp-2m": ("--", "^"),
    "dpmpp-3m": (":", "v"),
}


def cost_figure(costed: list[dict], leaders: dict[int, dict], label: str = "FID"):
    """The score (`label`; each row's `fid`) against sampling cost: a colour per trained
    network, a line style per sampler; a star marks the best run at each number of network
    evaluations."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    networks = list(dict.fromkeys(r["network"] for r in costed))
    samplers = [m for m in SAMPLER_STYLES if any(r["sampler"] == m for r in costed)]
    for (i, network), sampler in itertools.product(enumerate(networks), samplers):
        pts = sorted(
            (r for r in costed if r["network"] == network and r["sampler"] == sampler),
            key=lambda r: r["nfe_per_image"],
        )
        if not pts:
            continue
        linestyle, marker = SAMPLER_STYLES[sampler]
        label = _label(pts[0]) + (f", {sampler}" if len(samplers) > 1 else "")
        for ax, x in ((a1, "nfe_per_image"), (a2, "sample_s_per_1000")):
            ax.errorbar(
                [r[x] for r in pts],
                [r["fid"] for r in pts],
                yerr=_errors(pts),
                marker=marker,
                linestyle=linestyle,
                capsize=3,
                color=f"C{i}",
                label=label,
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
    _cost_axes(a1, a2, costed, label)
    a1.legend(fontsize=7)
    return fig


def _cost_axes(a1, a2, costed: list[dict], label: str) -> None:
    """Labels and ticks of the cost figure: the measured budgets on one axis, seconds on a log
    scale on the other."""
    import matplotlib.ticker

    a1.set(
        xlabel="network evaluations per image",
        ylabel=label,
        xscale="log",
        title=f"{label} against sampling steps (star: best at that budget)",
    )
    a2.set(
        xlabel="sampling seconds per 1,000 images",
        ylabel=label,
        xscale="log",
        title=f"{label} against sampling time",
    )
    nfes = sorted({r["nfe_per_image"] for r in costed})
    a1.set_xticks(nfes, [str(n) for n in nfes])
    a1.minorticks_off()
    times = log_ticks([r["sample_s_per_1000"] for r in costed])
    a2.set_xticks(times, [f"{t:g}" for t in times])
    a2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in (a1, a2):
        ax.grid(alpha=0.3)


def _samples(path: Path, n: int):
    """The first `n` samples of a variant; None while they are missing or unreadable."""
    try:
        return read_samples(path, limit=n)[0]
    except ArtefactError:
        return None


def _nearest(samples: np.ndarray, train: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """For each uint8 sample, the k training images closest in pixel space (values scaled to
    [0, 1]), nearest first: [(index, distance)]. Squared distances are sums of integer products,
    exact in float64, so a copied training image is at distance 0."""
    x = samples.reshape(len(samples), -1).astype(np.float64)
    x_sq = np.einsum("ij,ij->i", x, x)
    d2 = []
    for lo in range(0, len(train), 1024):
        y = train[lo : lo + 1024].reshape(-1, x.shape[1]).astype(np.float64)
        d2.append(x_sq[:, None] + np.einsum("ij,ij->i", y, y)[None] - 2 * x @ y.T)
    d2 = np.concatenate(d2, axis=1)
    nearest = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return [
        [(int(j), float(np.sqrt(row[j])) / 255) for j in idx]
        for row, idx in zip(d2, nearest, strict=True)
    ]


def _memorisation(samples: np.ndarray, train: np.ndarray, rc) -> dict:
    picks = samples[: rc.memorisation_samples]
    tiles, distances = [], []
    for sample, neighbours in zip(
        picks, _nearest(picks, train, rc.nearest_neighbours), strict=True
    ):
        tiles += [sample, *(train[j] for j, _ in neighbours)]
        distances.append([d for _, d in neighbours])
    strip = grid(np.stack(tiles), nrow=1 + rc.nearest_neighbours)
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


def _pvalue(p: float | None) -> str:
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


def _fmt(value) -> str:
    """Four significant digits; a dash for a value that does not exist."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _best(settings: list[Setting]) -> list[dict]:
    """The best setting by KID and by Inception Score (FID: the verdict,
    ddpm/evaluation/verdict.py): the mean over its seeds ± its standard error (from the seeds'
    spread; a single run's own ±)."""
    best = []
    for key, label, better in (("kid", "KID", min), ("is", "Inception Score", max)):
        scored = [
            (*found, s) for s in settings if (found := _mean_se(s, f"{key}_mean", f"{key}_std"))
        ]
        if scored:
            mean, se, s = better(scored, key=lambda found: found[0])
            seeds = f", mean of {s.n} seeds" if s.n > 1 else ""
            best.append({"metric": label, "setting": s.label, "value": pm(mean, se) + seeds})
    return best


def _mean_se(setting: Setting, key: str, std_key: str) -> tuple[float, float | None] | None:
    """A score's mean over a setting's seeds ± its standard error: from the seeds' spread, or
    with one run, that run's own ± (`std_key`). None when a run lacks the score."""
    values = [r.get(key) for r in setting.runs]
    if None in values:
        return None
    mean = sum(values) / len(values)
    if len(values) > 1:
        return mean, float(np.std(values, ddof=1)) / len(values) ** 0.5
    return mean, setting.runs[0].get(std_key)


def _fidelity(settings: list[Setting]) -> list[dict]:
    """Precision, recall, density and coverage of every setting, each as mean ± error."""
    table = []
    for s in settings:
        cells = {name: _mean_se(s, name, f"{name}_std") for name in FIDELITY_SCORES}
        if any(cells.values()):
            table.append({"setting": s.label, "n": s.n, **cells})
    return table


def _moves(rows: list[dict], effects: list) -> list[dict]:
    """For each main effect and breakdown: how its level moves precision and recall from its
    baseline (the runs' means at each, within the breakdown's other level). Descriptive: the
    verdict tests FID alone."""
    out = []
    for e in effects:
        level, baseline = {**dict(e.at), e.axis: e.level}, {**dict(e.at), e.axis: e.baseline}
        moved = {}
        for key in ("precision", "recall"):
            a, b = _mean_at(rows, key, level), _mean_at(rows, key, baseline)
            moved[key] = None if a is None or b is None else a - b
        out.append(moved)
    return out


def _mean_at(rows: list[dict], key: str, levels: dict[str, str]) -> float | None:
    """The mean of `key` over the rows at these (formatted) grid levels; None without any."""
    values = [
        r[key]
        for r in rows
        if r.get(key) is not None
        and all(format_value(r["params"].get(axis)) == v for axis, v in levels.items())
    ]
    return sum(values) / len(values) if values else None


def _progress(rows: list[dict], runs_dir: Path) -> dict[str, list[dict]]:
    """Each network's FID over training (progress.json's points), where it has been measured."""
    out = {}
    for network in dict.fromkeys(r["network"] for r in rows):
        document = read_or_none(NetworkFiles(runs_dir / network).progress)
        if document and document.get("points"):
            out[network] = document["points"]
    return out


def _progress_plot(verdict: Verdict) -> str:
    """FID (± its sampling noise) against training images seen, one line per network."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, curve in enumerate(verdict.curves):
        pts = curve.points
        ax.errorbar(
            [p["images_seen"] for p in pts],
            [p["fid"] for p in pts],
            yerr=[p["fid_std"] or 0.0 for p in pts],
            marker="o",
            capsize=3,
            color=f"C{i % 10}",
            label=curve.network + (" (still improving)" if curve.state == "improving" else ""),
        )
    ax.set(xlabel="training images seen", ylabel="FID", title="FID over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _figure_uri(fig)


def _grid_as_ids(cfg: Config) -> dict[str, list[str]]:
    """The grid's axes in the order run ids spell them, values as run ids spell them."""
    the_plan = plan(cfg)
    order = the_plan.network_axes + the_plan.variant_axes
    return {k: [format_value(v) for v in cfg.grid[k]] for k in order}


def _by_network(rows: list[dict]) -> list[dict]:
    """The rows grouped by trained network, in grid order: the network's first variant is shown,
    the others are one click away."""
    networks: dict[str, list[dict]] = {}
    for row in rows:
        networks.setdefault(row["network"], []).append(row)
    return [{"network": n, "label": _label(v[0]), "variants": v} for n, v in networks.items()]


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
    cfg: Config,
    runs_dir: str | Path,
    out: str | Path,
    data_path: str | Path | None = None,
    accepted: str | Path | None = None,
) -> dict:
    """Write the HTML report comparing every run of `cfg`'s grid; returns what it showed.
    `accepted` is the project's list of code changes accepted as result-neutral
    (`config/accepted-code.yaml`), which the provenance line names."""
    check_output_file(out)
    runs_dir = Path(runs_dir)
    rows = collect_runs(cfg, runs_dir)
    _add_pictures(cfg, rows, runs_dir, data_path)
    progress = _progress(rows, runs_dir)

    def by(metric: str) -> Verdict:
        return assess(
            rows,
            cfg.grid,
            progress,
            sampling_axes=plan(cfg).variant_axes,
            smallest_effect=cfg.report.smallest_effect,
            metric=metric,
        )

    verdict = by(cfg.report.metric)
    context = _context(cfg, rows, runs_dir, verdict)
    context["agreement"] = None
    if any(r.get("fd_dinov2") is not None for r in rows):  # two feature spaces: do they agree?
        other = by("fd_dinov2" if cfg.report.metric == "fid" else "fid")
        pairs = agreement(verdict, other)
        context["agreement"] = {
            "pairs": pairs,
            "sentence": agreement_sentence(pairs, verdict, other),
            "other": other,
        }
        context["headline"].insert(1, context["agreement"]["sentence"])
    context["footer"] = _footer(cfg, rows, accepted)
    _render(context, out)
    return context


def _add_pictures(cfg: Config, rows: list[dict], runs_dir: Path, data_path) -> None:
    """Each row's sample grid and trajectory (data URIs), its flags, and its nearest training
    images (the memorisation check)."""
    from ddpm.data.dataset import read_dataset

    rc = cfg.report
    train_images = read_dataset(data_path)[0] if data_path else None
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


def _context(cfg: Config, rows: list[dict], runs_dir: Path, verdict: Verdict) -> dict:
    """What the template shows, but the provenance line."""
    rc_progress = cfg.progress
    floor = next((r["floor_fid"] for r in rows if r.get("floor_fid") is not None), None)
    leaders = budgets(verdict)
    return {
        "title": cfg.report.title,
        "rows": rows,
        "failed": [r for r in rows if r["status"] != "ok"],
        "best": _best(verdict.settings),
        "fidelity": _fidelity(verdict.settings),
        "moves": _moves(rows, verdict.effects),
        "verdict": verdict,
        "replicates": any(s.n > 1 for s in verdict.settings),
        "progress_sampler": f"{rc_progress.num_images:,} DDIM-{rc_progress.steps}",
        "headline": headline(verdict),
        "sampling_axes": [a for a in verdict.axes if verdict.strata[a] == "sampling"],
        "networks": _by_network(rows),
        "floor_fid": floor,
        "budgets": leaders,
        "costs": _training_costs(rows),
        "seed_rows": [r for r in rows if r["seed_setting"]],
        "grid": _grid_as_ids(cfg),
        "shared": {k: v for k, v in to_dict(cfg, skip_unread=True).items() if k != "grid"},
        "plots": _plots(cfg, rows, runs_dir, floor, leaders, verdict),
        "test_weights": any(r.get("test_weights") for r in rows),
        "dinov2_weights": next(
            (r["dinov2_weights"] for r in rows if r.get("dinov2_weights")), None
        ),
        "flower_features": any(r.get("features") == "synthetic-features" for r in rows),
        "far_threshold": FAR_FROM_NOISE,
        "eps_threshold": EPS_NEAR_ZERO,
    }


def _footer(cfg: Config, rows: list[dict], accepted: str | Path | None) -> dict:
    """The provenance line: code, config, versions, devices, date, and every code change that
    was accepted as result-neutral instead of rerun."""
    return {
        "commit": _git_commit(Path(__file__).parent),
        "config_hash": config_hash(cfg),
        "versions": _versions(),
        "devices": sorted({r["device"] for r in rows if r.get("device")}),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "accepted": read_accepted(accepted) if accepted else [],
    }


def _render(context: dict, out: str | Path) -> None:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ddpm.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
    )
    env.filters["fmt"] = _fmt
    env.globals.update(signed=signed, interval=interval, pvalue=_pvalue, pm=pm)
    env.globals["fidelity_scores"] = FIDELITY_SCORES
    env.filters["fmt_int"] = lambda v: "—" if v is None else f"{int(v):,}"
    html = env.get_template("report.html.j2").render(**context)
    atomic_write_bytes(out, html.encode())

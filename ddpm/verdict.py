"""The verdict on settings: which differences in FID the sweep can tell apart, and how sure it is.

Runs whose grid settings differ only in a seed (`train.seed`, `sample.seed`) are replicates of one
*setting*. A setting's FID is the mean over its replicates. Its standard error comes from one of
these sources, stated wherever it is used:

- ``training seeds``: the seeds' spread, pooled over every setting of the sweep that has
  replicates (the within-setting variance of a one-way layout, sum(n_i - 1) degrees of freedom),
  over sqrt(n). Each replicate's FID carries its own sampling noise, so the spread holds both
  training-seed and sampling variance. Pooling assumes the seed spread does not depend on the
  setting; it is what makes two or three seeds per setting enough to conclude anything (Welch's
  t on two seeds a side has one to two degrees of freedom, and a 95% interval 6 to 13 times its
  standard error).
- ``sampling seeds``: the same for replicates that differ in `sample.seed` only (one network):
  then the spread is sampling variance alone.
- ``pooled seeds``: a setting with one run where others have replicates: the pooled spread.
- ``sampling``: no replicates anywhere; the half-sampling standard deviation of the one FID.
  Training-seed variance is then unknown, and a difference called distinguishable may still be
  one seed's luck.

Two settings are compared by the difference of their means. With the pooled seed spread this is
Student's t-test: the difference is distinguishable when its two-sided 95 % interval (t quantile
at the pooled degrees of freedom) excludes zero. With sampling errors only, it is
distinguishable beyond `DISTINGUISHABLE_SIGMAS` standard deviations of the difference, the
report's rule for single runs.

The effect of a grid axis is the difference between each of its levels and its first level,
at every combination of the other axes' levels (a "slice"), so an effect that depends on another
setting shows up as such instead of being averaged away.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

from ddpm.config import format_value

SEED_KEYS = ("train.seed", "sample.seed")  # grid keys that make replicates, not settings
# Two FIDs with sampling noise only are told apart beyond this many standard deviations of their
# difference.
DISTINGUISHABLE_SIGMAS = 2.0
CONFIDENCE = 0.95  # two-sided, for the t interval
TIES_NAMED = 3  # the headline names this many settings tied with the best, then counts the rest
Source = Literal["training seeds", "sampling seeds", "pooled seeds", "sampling"]


@dataclass(frozen=True)
class Setting:
    """One point of the grid without its seeds: the replicates' FIDs and their mean's error."""

    key: tuple[tuple[str, str], ...]  # (grid key, value as run ids spell it), seeds left out
    runs: tuple[dict, ...]  # the scored rows, one per replicate
    mean: float
    se: float | None  # standard error of `mean`; None when nothing is known of its noise
    df: float | None  # degrees of freedom of `se`; None for a normal (sampling) error
    source: Source

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def values(self) -> list[float]:
        return [r["fid"] for r in self.runs]

    @property
    def spread(self) -> float | None:
        """The replicates' standard deviation (None with one replicate)."""
        return _std(self.values) if self.n > 1 else None

    @property
    def label(self) -> str:
        return ", ".join(f"{k} = {v}" for k, v in self.key) or "all runs"

    @property
    def id(self) -> str:
        """The run's id for a single run, else the grid values and the number of seeds."""
        if self.n == 1:
            return self.runs[0]["run_id"]
        return "_".join(f"{k}~{v}" for k, v in self.key) + f" ({self.n} seeds)"

    def get(self, key: str):
        return dict(self.key).get(key)


@dataclass(frozen=True)
class Difference:
    """`a.mean - b.mean` (negative: `a` has the lower, better FID) with its uncertainty."""

    a: Setting
    b: Setting
    delta: float
    se: float | None
    df: float | None
    distinguishable: bool
    half_width: float | None  # of the interval: 95 % (t) or DISTINGUISHABLE_SIGMAS * se
    basis: str

    @property
    def better(self) -> Setting | None:
        """The setting with the lower FID when the difference is distinguishable."""
        if not self.distinguishable:
            return None
        return self.a if self.delta < 0 else self.b


@dataclass(frozen=True)
class Effect:
    """Level `level` of `axis` against its first level, at one slice of the other axes."""

    axis: str
    level: str
    baseline: str
    at: tuple[tuple[str, str], ...]
    difference: Difference | None  # None when either setting has no scored run

    @property
    def at_label(self) -> str:
        return ", ".join(f"{k} = {v}" for k, v in self.at) or "everywhere"


@dataclass
class Verdict:
    settings: list[Setting]
    axes: dict[str, list[str]]  # the non-seed grid axes with at least two levels, in grid order
    effects: list[Effect]
    replicated: bool  # some setting has several training seeds
    seed_axes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    curves: list[Convergence] = field(default_factory=list)  # networks with FID over training

    def setting(self, values: dict) -> Setting | None:
        """The setting with these grid values (seeds left out)."""
        return next((s for s in self.settings if dict(s.key) == values), None)


# -- statistics ----------------------------------------------------------------------------------


def _std(values: list[float]) -> float:
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def t_quantile(p: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(p, df))


def compare(a: Setting, b: Setting) -> Difference:
    delta = a.mean - b.mean
    if a.se is None or b.se is None:
        return Difference(a, b, delta, None, None, False, None, "no noise estimate: no claim")
    se = math.hypot(a.se, b.se)
    if a.df is not None and b.df is not None:  # both from the one pooled seed spread
        df = min(a.df, b.df)
        half = t_quantile(0.5 + CONFIDENCE / 2, df) * se
        basis = f"t-test on the seed spread pooled over the sweep ({df:g} degrees of freedom)"
        return Difference(a, b, delta, se, df, abs(delta) > half, half, basis)
    half = DISTINGUISHABLE_SIGMAS * se
    return Difference(a, b, delta, se, None, abs(delta) > half, half, "sampling noise only")


# -- settings and effects ------------------------------------------------------------------------


def _key(row: dict, axes: list[str]) -> tuple[tuple[str, str], ...]:
    return tuple((k, format_value(row["params"][k])) for k in axes)


def settings_of(rows: list[dict], axes: list[str]) -> list[Setting]:
    """The scored rows grouped into settings (rows differing only in seeds), in row order."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get("fid") is not None:
            groups.setdefault(_key(row, axes), []).append(row)
    # The within-setting variance, pooled over the settings that have replicates.
    replicated = [[r["fid"] for r in g] for g in groups.values() if len(g) > 1]
    pooled_df = sum(len(v) - 1 for v in replicated)
    pooled_var = (
        sum(_std(v) ** 2 * (len(v) - 1) for v in replicated) / pooled_df if pooled_df else 0
    )
    out = []
    for key, runs in groups.items():
        values = [r["fid"] for r in runs]
        mean = sum(values) / len(values)
        if pooled_df:
            source: Source = (
                "pooled seeds"
                if len(runs) == 1
                else "training seeds"
                if _train_seeds(runs)
                else "sampling seeds"
            )
            se, df = math.sqrt(pooled_var / len(runs)), float(pooled_df)
        else:
            source, se, df = "sampling", runs[0].get("fid_std"), None
        out.append(Setting(key, tuple(runs), mean, se, df, source))
    return out


def _train_seeds(runs: list[dict]) -> bool:
    return len({r["params"].get("train.seed") for r in runs}) > 1


def assess(
    rows: list[dict], grid: dict[str, list], progress: dict[str, list[dict]] | None = None
) -> Verdict:
    """The sweep's settings, the effect of each grid axis at every slice of the others, and
    each network's convergence from its FID over training (`progress`: network -> points)."""
    # The axes in the order run ids spell them (training's first), seeds apart.
    order = [k for k in (rows[0]["params"] if rows else {}) if k in grid] or list(grid)
    seed_axes = [k for k in order if k in SEED_KEYS]
    setting_axes = [k for k in order if k not in SEED_KEYS]
    settings = settings_of(rows, setting_axes)
    by_key = {s.key: s for s in settings}
    levels_of = {k: [format_value(v) for v in grid[k]] for k in setting_axes}
    axes = {k: v for k, v in levels_of.items() if len(v) > 1}
    effects = []
    for axis, levels in axes.items():
        others = [k for k in setting_axes if k != axis]
        for combo in itertools.product(*(levels_of[k] for k in others)):
            at = tuple(zip(others, combo, strict=True))
            found = {
                level: by_key.get(tuple((k, (dict(at) | {axis: level})[k]) for k in setting_axes))
                for level in levels
            }
            base = found[levels[0]]
            for level in levels[1:]:
                other = found[level]
                diff = compare(other, base) if other and base else None
                effects.append(Effect(axis, level, levels[0], at, diff))
    replicated = any(s.source == "training seeds" for s in settings)
    networks = list(dict.fromkeys(r["network"] for r in rows))
    curves = [convergence(n, progress[n]) for n in networks if (progress or {}).get(n)]
    return Verdict(settings, axes, effects, replicated, seed_axes, networks, curves)


def leader(settings: list[Setting]) -> tuple[Setting, list[Setting]]:
    """The setting with the lowest FID and the others it cannot be told apart from."""
    ranked = sorted(settings, key=lambda s: s.mean)
    return ranked[0], [s for s in ranked[1:] if not compare(s, ranked[0]).distinguishable]


# -- convergence ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Convergence:
    """A network's FID over training, and whether it was still moving at the end: its last
    point (the final weights) against the one before, beyond `DISTINGUISHABLE_SIGMAS` sampling
    standard deviations of their difference."""

    network: str
    points: list[dict]  # progress.json's points, in training order
    state: Literal["improving", "flat", "worse", "unknown"]
    delta: float | None  # last FID - the one before

    @property
    def sentence(self) -> str:
        if self.state == "unknown":
            return f"{self.network}: fewer than two points, so convergence is unknown."
        a, b = self.points[-2], self.points[-1]
        change = f"FID {a['fid']:.3g} at step {a['step']} to {b['fid']:.3g} at step {b['step']}"
        words = {
            "improving": "still improving at the end: the ranking may change with longer training",
            "flat": "no longer improving beyond its noise",
            "worse": "worse at the end than before, beyond its noise",
        }[self.state]
        return f"{self.network}: {change}, {words}."


def convergence(network: str, points: list[dict]) -> Convergence:
    if len(points) < 2:
        return Convergence(network, points, "unknown", None)
    a, b = points[-2], points[-1]
    delta = b["fid"] - a["fid"]
    if a.get("fid_std") is None or b.get("fid_std") is None:
        return Convergence(network, points, "unknown", delta)
    half = DISTINGUISHABLE_SIGMAS * math.hypot(a["fid_std"], b["fid_std"])
    state = "improving" if delta < -half else "worse" if delta > half else "flat"
    return Convergence(network, points, state, delta)


def convergence_sentence(curves: list[Convergence], networks: int) -> str:
    """What the report can say about training length, over all networks."""
    if not curves:
        return (
            "Whether training had converged is unknown: set train.snapshot_every to measure FID "
            "over training."
        )
    moving = [c.network for c in curves if c.state == "improving"]
    known = [c for c in curves if c.state != "unknown"]
    if moving:
        return (
            f"FID was still improving at the end of training for {len(moving)} of {networks} "
            f"networks ({', '.join(moving)}): the ranking may change with longer training."
        )
    if len(known) == networks:
        return (
            "FID had stopped improving beyond its noise by the end of training for every network."
        )
    return (
        f"FID had stopped improving for {len(known)} of {networks} networks; for the others "
        "convergence is unknown."
    )


# -- words ---------------------------------------------------------------------------------------


def _range(values: list[float]) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    return f"{lo:.2g}" if math.isclose(lo, hi, rel_tol=0.05) else f"{lo:.2g} to {hi:.2g}"


def _size(group: list[Effect]) -> str:
    """How large the differences of `group` are: one value with its standard error when they
    agree (to 5 %), else their range."""
    deltas = [e.difference.delta for e in group]
    errors = [e.difference.se for e in group]
    lo, hi = min(deltas), max(deltas)
    if not math.isclose(lo, hi, rel_tol=0.05, abs_tol=1e-9):
        return f"{lo:+.3g} to {hi:+.3g}"
    same_error = None not in errors and math.isclose(min(errors), max(errors), rel_tol=0.05)
    return f"{deltas[0]:+.3g}" + (f" ± {errors[0]:.2g}" if same_error else "")


def axis_sentence(verdict: Verdict, axis: str, level: str) -> str:
    """One sentence on `level` of `axis` against its first level, over every slice."""
    effects = [e for e in verdict.effects if e.axis == axis and e.level == level]
    name = f"{axis} = {level} against {axis} = {effects[0].baseline}"
    known = [e for e in effects if e.difference is not None]
    if not known:
        return f"{name}: not scored yet."
    better = [e for e in known if e.difference.distinguishable and e.difference.delta < 0]
    worse = [e for e in known if e.difference.distinguishable and e.difference.delta > 0]
    tied = [e for e in known if not e.difference.distinguishable]
    for words, group in (("better", better), ("worse", worse)):
        if len(group) == len(known):
            where = _where(group, effects)
            return f"{name}: {level} is {words} {where} ({_size(group)} FID)."
    if len(tied) == len(known):
        reach = _range([e.difference.half_width for e in tied if e.difference.half_width])
        within = f"; its intervals reach ± {reach}" if reach else ""
        return f"{name}: not distinguishable at any setting tested ({_size(tied)} FID{within})."
    parts = [
        f"{words} {_where(group, effects)} ({_size(group)})"
        for words, group in (("better", better), ("worse", worse), ("not distinguishable", tied))
        if group
    ]
    return f"{name} depends on the other settings: {level} is " + "; ".join(parts) + "."


def _where(group: list[Effect], effects: list[Effect]) -> str:
    """The slices of `group` among all of `effects` in the fewest words: "everywhere", one axis's
    levels when that describes them exactly, else the slices themselves (three at most)."""
    if len(group) == len(effects):
        return "everywhere"
    chosen = {e.at for e in group}
    for axis, _ in effects[0].at:
        values = [v for v in dict.fromkeys(dict(e.at)[axis] for e in group)]
        if chosen == {e.at for e in effects if dict(e.at)[axis] in values}:
            return f"at {axis} = " + " or ".join(values)
    if len(group) <= 3:
        return "at " + "; ".join(e.at_label for e in group)
    return f"at {len(group)} of {len(effects)} combinations of the other settings (see the table)"


def headline(verdict: Verdict) -> list[str]:
    """The answer to the config's question in a few sentences, ending with what the evidence
    does not settle."""
    if not verdict.settings:
        return ["No run has been scored yet."]
    best, ties = leader(verdict.settings)
    error = f" ± {best.se:.2g}" if best.se is not None else ""
    seeds = f", mean of {best.n} seeds" if best.n > 1 else ""
    first = f"Lowest FID: {best.label} ({best.mean:.4g}{error}{seeds})."
    if ties:
        named = "; ".join(s.label for s in ties[:TIES_NAMED])
        more = f" and {len(ties) - TIES_NAMED} more" if len(ties) > TIES_NAMED else ""
        first += f" Not distinguishable from {len(ties)} other setting(s): {named}{more}."
    elif len(verdict.settings) > 1:
        first += " Every other setting is distinguishably worse."
    lines = [first]
    for axis, levels in verdict.axes.items():
        sentences = [axis_sentence(verdict, axis, level) for level in levels[1:]]
        if len(sentences) > 1 and all(": not distinguishable at any" in s for s in sentences):
            sentences = [
                f"{axis}: no level is distinguishable from {axis} = {levels[0]} at any setting "
                "tested."
            ]
        lines += sentences
    return lines + [convergence_sentence(verdict.curves, len(verdict.networks)), caveat(verdict)]


def caveat(verdict: Verdict) -> str:
    if verdict.replicated:
        n = sorted({s.n for s in verdict.settings if s.source == "training seeds"})
        counts = " or ".join(str(k) for k in n)
        df = verdict.settings[0].df
        return (
            f"Errors include training-seed variance ({counts} seeds per setting; their spread "
            f"pooled over the sweep, {df:g} degrees of freedom; t-test, {CONFIDENCE:.0%} "
            "intervals). With few seeds the intervals are wide: a difference not called "
            "distinguishable may still be real."
        )
    return (
        "Training-seed variance is unknown: each setting was trained once, and the errors are "
        "sampling noise only, so a distinguishable difference may still be one seed's luck. "
        "Add train.seed to the grid (two or three values) to settle it."
    )

"""The verdict on settings: which differences in FID (or the score report.metric names) the
sweep can tell apart, at a stated family-wise error, and what it would take to settle the rest;
and, with a second feature space, whether FID's verdict and FD_DINOv2's agree.

The sweep is a factorial design in two strata, a split plot:

- *training axes* (read by training: T, schedule, ...) make networks. Their levels are compared
  **between networks**, on the spread of networks trained alike (other `train.seed`s).
- *sampling axes* (read only by sampling or evaluation: the sampler, its steps) make variants of
  each network. Their levels are compared **within networks**: each network's paired difference
  cancels its training seed's luck, and the error is how much those paired differences vary
  between networks trained alike. Variants that share x_T (one `sample.seed`) have correlated
  FIDs; an error taken from their paired differences accounts for that without modelling it.

Every estimate is a contrast of the cells Y[n, w] (network n, sampling setting w): per network
L_n = sum_w h_w Y[n, w] (h sums to 0 within networks, averages between them), combined as
theta = sum_n g_n L_n. Networks of one training setting share L_n's expectation, so the pooled
within-setting variance tau^2 of L_n (sum over settings of n_s - 1 degrees of freedom) gives
Var(theta) = tau^2 sum_n g_n^2, and Student's t. tau^2 holds training-seed variance, sampling
noise and the contrast's interaction with the seed, whatever the correlation between variants;
it assumes the spread is alike across settings. Without replicate networks, Var(L_n) is bounded
from each cell's half-sampling standard deviation (`_bound`: perfect correlation within each
sign of h, none across, an upper bound while variants are not negatively correlated) on a normal
quantile; training-seed variance is then unknown, and the report says so.

The headline's claims hold together at FAMILY_ALPHA: two families, each at half of it
(Bonferroni), every adjusted p doubled so that it reads against FAMILY_ALPHA:
- the effects, by Holm's step-down method: each axis's main effects (a level against the axis's
  first, averaged over the other axes) and interactions (whether a level's effect differs
  between another axis's levels: the largest of its differences against that axis's first
  level, Bonferroni over them). Where an interaction is called, the effect is given at each of
  those levels instead, Holm among themselves;
- the best setting against every other: one-sided, each p times m (m - 1), Bonferroni over every
  ordered pair of settings, which covers choosing the best from the same data whatever the
  errors (Hsu's multiple comparisons with the best, with a single m - 1, assume equal errors;
  here a paired comparison's is far smaller than one between networks).
The detailed table gives each estimate with its uncorrected 95% interval, marked as such.

Convergence is a weighted line through the last half (at least 3) of a network's FID-over-
training points: its slope in FID per 10% of training with a 95% interval, widened by the Birge
ratio when the points scatter more than their error bars say.

An undecided main effect says what would settle it: the seeds per setting (or, where sampling
noise is the whole error, images per FID) at which a difference of max(|observed|,
report.smallest_effect) is called with POWER at the family's Bonferroni level.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

from ddpm.evaluation.names import LABELS
from ddpm.pipeline.config import format_value

SEED_KEYS = ("train.seed", "sample.seed")  # grid keys that make replicates, not settings
FAMILY_ALPHA = 0.05  # the headline's claims together
CONFIDENCE = 0.95  # each interval of the detailed table, uncorrected
POWER = 0.8  # what "would settle it" asks of a future sweep
TIES_NAMED = 3  # the headline names this many settings tied with the best, then counts the rest
SMALLEST_EFFECT = 1.0  # report.smallest_effect's default, for callers without a config
# The score the verdict ranks by (report.metric) as each row carries it, and how it is named.
SCORE, SCORE_STD = "score", "score_std"
Key = tuple[tuple[str, str], ...]  # (grid key, value as run ids spell it)
Stratum = Literal["between networks", "within networks"]
Source = Literal["training seeds", "pooled seeds", "sampling"]


def _stats():
    from scipy import stats

    return stats


# -- what the sweep measured ---------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One point of the grid without its seeds: the replicates' FIDs and their mean's error."""

    key: Key  # every non-seed axis
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
        return [r[SCORE] for r in self.runs]

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
class Test:
    """One estimate and its test. `estimate` is FID at `level` minus FID at `baseline` (below 0:
    `level` is better); for an interaction, how much more that difference is at `at`'s level
    than at that axis's first; for `best`, a setting's FID above the best's."""

    kind: Literal["main", "by", "interaction", "best"]
    axis: str
    level: str
    baseline: str
    at: Key  # "by": the other axis's level it is given at; "interaction": (that axis, level)
    estimate: float
    se: float | None
    df: float | None  # None: a normal quantile (the sampling-noise bound)
    stratum: Stratum
    error: Literal["seeds", "sampling", "none"]  # replicate networks' spread, or the bound
    p: float | None  # uncorrected: two-sided, one-sided for `best`, Bonferroni'd for interactions
    p_family: float | None = None  # Holm-adjusted within its family
    settle: str | None = None  # for an undecided main effect: what would settle it

    @property
    def half_width(self) -> float | None:
        """Of the uncorrected CONFIDENCE interval."""
        if self.se is None:
            return None
        return _quantile(0.5 + CONFIDENCE / 2, self.df) * self.se

    @property
    def called(self) -> bool:
        """Distinguishable at the family-wise level (uncorrected outside a family)."""
        p = self.p_family if self.p_family is not None else self.p
        return p is not None and p < FAMILY_ALPHA

    @property
    def design(self) -> str:
        """Which variance the error holds, in a few words."""
        pairing = "paired" if self.stratum == "within networks" else "between networks"
        if self.error == "seeds":
            return f"{pairing}; t, {self.df:g} df"
        if self.error == "sampling":
            return f"{pairing}; sampling noise only"
        return f"{pairing}; no noise estimate"

    @property
    def at_label(self) -> str:
        return ", ".join(f"{k} = {v}" for k, v in self.at) or "averaged over the others"


@dataclass
class Verdict:
    settings: list[Setting]
    axes: dict[str, list[str]]  # the non-seed grid axes with at least two levels, in grid order
    strata: dict[str, Literal["training", "sampling"]]  # which stratum each axis varies in
    tests: list[Test]  # main effects, by-level breakdowns, interactions
    against_best: list[Test]
    replicated: bool  # some training setting has several networks (training seeds)
    seed_axes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    curves: list[Convergence] = field(default_factory=list)  # networks with FID over training
    smallest_effect: float = SMALLEST_EFFECT
    design: _Design | None = None
    metric: str = "fid"  # report.metric: what `settings`, `tests` and `against_best` are of

    @property
    def label(self) -> str:
        return LABELS.get(self.metric, self.metric)

    @property
    def effects(self) -> list[Test]:
        """The detailed table: main effects, each followed by its breakdowns."""
        return [t for t in self.tests if t.kind in ("main", "by")]

    @property
    def family(self) -> list[Test]:
        return [t for t in self.tests + self.against_best if t.p_family is not None]

    @property
    def best(self) -> Setting | None:
        return _lowest(self.settings)

    def setting(self, values: dict) -> Setting | None:
        """The setting with these grid values (seeds left out)."""
        return next((s for s in self.settings if dict(s.key) == values), None)

    def compare(self, a: Setting, b: Setting) -> Test:
        """a - b, paired within networks when they are variants of the same networks;
        uncorrected."""
        return self.design.compare(a, b)


# -- statistics ----------------------------------------------------------------------------------


def _std(values: list[float]) -> float:
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _quantile(p: float, df: float | None) -> float:
    stats = _stats()
    return float(stats.norm.ppf(p) if df is None else stats.t.ppf(p, df))


def _p(theta: float, se: float, df: float | None, *, one_sided: bool = False) -> float:
    """Two-sided p of theta / se (one-sided: of theta > 0) on t(df), or normal without df. An
    error of exactly 0 (differences identical in every network) is certainty either way."""
    if se == 0:
        return 1.0 if theta == 0 or (one_sided and theta < 0) else 0.0
    stats = _stats()
    dist = stats.norm if df is None else stats.t(df)
    z = theta / se
    return float(dist.sf(z) if one_sided else 2 * dist.sf(abs(z)))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): the k-th smallest times (m - k + 1),
    made monotone, capped at 1. Rejecting where adjusted p < alpha holds the family-wise error
    at alpha under any dependence between the tests."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _bound(h: dict[Key, float], sds: dict[Key, float | None]) -> float | None:
    """An upper bound on the standard deviation of sum_w h_w Y_w from each Y_w's own, when no
    two are negatively correlated: the terms of one sign may be perfectly correlated, and the
    two signs' sums independent."""
    if any(sds[w] is None for w in h):
        return None
    plus = sum(c * sds[w] for w, c in h.items() if c > 0)
    minus = sum(-c * sds[w] for w, c in h.items() if c < 0)
    return math.hypot(plus, minus)


class _Design:
    """The scored cells of a sweep, by network and sampling setting, and contrasts over them."""

    def __init__(self, rows: list[dict], train_axes: list[str], sample_axes: list[str]):
        self.train_axes, self.sample_axes = train_axes, sample_axes
        groups: dict[tuple[str, Key], list[dict]] = {}
        self.train_of: dict[str, Key] = {}
        for row in rows:
            if row.get(SCORE) is None:
                continue
            w = _key(row, sample_axes)
            groups.setdefault((row["network"], w), []).append(row)
            self.train_of[row["network"]] = _key(row, train_axes)
        # Replicates of sampling (sample.seed) within a cell: their mean, independent noise.
        self.cells: dict[tuple[str, Key], tuple[float, float | None]] = {}
        for cell, runs in groups.items():
            sds = [r.get(SCORE_STD) for r in runs]
            sd = None if None in sds else math.sqrt(sum(s * s for s in sds)) / len(runs)
            self.cells[cell] = (sum(r[SCORE] for r in runs) / len(runs), sd)
        self.networks = list(self.train_of)
        variants = [{w for n2, w in self.cells if n2 == n} for n in self.networks]
        common = set.intersection(*variants) if variants else set()
        # Every sampling setting scored, and those every network has: a training axis is
        # compared over the latter; a sampling axis on the networks that have its cells.
        self.all_variants = list(dict.fromkeys(w for _, w in self.cells))
        self.variants = [w for w in self.all_variants if w in common]
        self.settings: dict[Key, list[str]] = {}
        for n in self.networks:
            self.settings.setdefault(self.train_of[n], []).append(n)

    def replicated(self) -> bool:
        return any(len(ns) > 1 for ns in self.settings.values())

    # -- contrasts

    def evaluate(self, g: dict[str, float], h: dict[Key, float]):
        """(theta, se, df, error) of sum_n g_n sum_w h_w Y[n, w]; None if a cell is missing."""
        values, bounds = {}, {}
        for n in self.networks:
            cells = [self.cells.get((n, w)) for w in h]
            if None in cells:
                continue
            values[n] = sum(c * cell[0] for c, cell in zip(h.values(), cells, strict=True))
            bounds[n] = _bound(h, {w: cell[1] for w, cell in zip(h, cells, strict=True)})
        if any(n not in values for n, c in g.items() if c):
            return None
        theta = sum(c * values[n] for n, c in g.items())
        ss, df = 0.0, 0
        for members in self.settings.values():
            found = [values[n] for n in members if n in values]
            if len(found) > 1:
                mean = sum(found) / len(found)
                ss += sum((v - mean) ** 2 for v in found)
                df += len(found) - 1
        weight = sum(c * c for c in g.values())
        if df:
            return theta, math.sqrt(ss / df * weight), float(df), "seeds"
        if all(bounds[n] is not None for n, c in g.items() if c):
            return (
                theta,
                math.sqrt(sum(c * c * bounds[n] ** 2 for n, c in g.items())),
                None,
                "sampling",
            )
        return theta, None, None, "none"

    def sampling_part(self, key: Key) -> Key:
        """A setting's key without its training axes: the cell of each network it is."""
        return tuple((k, v) for k, v in key if k in self.sample_axes)

    def matches(self, key: Key, fixed: dict[str, str]) -> bool:
        values = dict(key)
        return all(values[k] == v for k, v in fixed.items() if k in values)

    def effect(self, axis: str, level: str, base: str, at: dict[str, str]):
        """(g, h) of `level` - `base` of `axis`, averaged over the axes `at` does not fix."""
        settings = {s: ns for s, ns in self.settings.items() if self.matches(s, at)}
        variants = [w for w in self.variants if self.matches(w, at)]
        g: dict[str, float] = {}
        h: dict[Key, float] = {}
        if axis in self.train_axes:
            pairs = []
            for s1, ns1 in settings.items():
                if dict(s1)[axis] == level:
                    s0 = _with(s1, axis, base)
                    if s0 in settings:
                        pairs.append((ns1, settings[s0]))
            if not pairs or not variants:
                return None
            for ns1, ns0 in pairs:
                for ns, sign in ((ns1, 1.0), (ns0, -1.0)):
                    for n in ns:
                        g[n] = g.get(n, 0.0) + sign / (len(pairs) * len(ns))
            h = {w: 1.0 / len(variants) for w in variants}
        else:
            variants = [w for w in self.all_variants if self.matches(w, at)]
            pairs = [
                (w, _with(w, axis, base))
                for w in variants
                if dict(w)[axis] == level and _with(w, axis, base) in variants
            ]
            for w1, w0 in pairs:
                h[w1] = h.get(w1, 0.0) + 1.0 / len(pairs)
                h[w0] = h.get(w0, 0.0) - 1.0 / len(pairs)
            g = self._average(settings, h)
            if not pairs or not g:
                return None
        return g, h

    def _average(self, settings: dict[Key, list[str]], h: dict[Key, float]) -> dict[str, float]:
        """g averaging over `settings` (each its networks' mean), of the networks that have
        every cell of h."""
        having = {
            s: [n for n in ns if all((n, w) in self.cells for w in h)] for s, ns in settings.items()
        }
        having = {s: ns for s, ns in having.items() if ns}
        return {n: 1.0 / (len(having) * len(ns)) for ns in having.values() for n in ns}

    def test(self, kind, axis, level, base, at: Key, contrast, *, one_sided=False) -> Test | None:
        if contrast is None:
            return None
        result = self.evaluate(*contrast)
        if result is None:
            return None
        theta, se, df, error = result
        stratum: Stratum = "within networks" if axis in self.sample_axes else "between networks"
        p = None if se is None else _p(theta, se, df, one_sided=one_sided)
        return Test(kind, axis, level, base, at, theta, se, df, stratum, error, p)

    def interaction(self, axis: str, level: str, base: str, by: str, levels: list[str]):
        """Whether `level` - `base` of `axis` differs between `by`'s levels: each level's
        difference from the first one's, the smallest p times their number (Bonferroni)."""
        first = self.effect(axis, level, base, {by: levels[0]})
        found = []
        for other in levels[1:]:
            then = self.effect(axis, level, base, {by: other})
            if first is None or then is None:
                continue
            (g1, h1), (g0, h0) = then, first
            if h1 == h0:  # `by` is a training axis: other networks, the same cells
                contrast = ({n: g1.get(n, 0) - g0.get(n, 0) for n in g1.keys() | g0.keys()}, h1)
            else:  # `by` is a sampling axis: the same networks, other cells
                contrast = (g1, {w: h1.get(w, 0) - h0.get(w, 0) for w in h1.keys() | h0.keys()})
            test = self.test("interaction", axis, level, base, ((by, other),), contrast)
            if test is not None and test.p is not None:
                found.append(test)
        if not found:
            return None
        worst = min(found, key=lambda t: t.p)
        return _replace(worst, p=min(1.0, worst.p * len(found)))

    def compare(self, a: Setting, b: Setting, *, one_sided: bool = False) -> Test:
        """a - b for two settings: paired when they share their networks, else between them."""
        ta = {k: v for k, v in a.key if k in self.train_axes}
        tb = {k: v for k, v in b.key if k in self.train_axes}
        wa, wb = self.sampling_part(a.key), self.sampling_part(b.key)
        label, base = a.label, b.label
        if ta == tb:
            h = {wa: 1.0, wb: -1.0}
            g = self._average({s: ns for s, ns in self.settings.items() if self.matches(s, ta)}, h)
            found = self.test("best", "", label, base, (), (g, h), one_sided=one_sided)
            if found is not None:
                return _replace(found, stratum="within networks")
        # Disjoint networks: independent means, each with its cell's error (Welch-like, the
        # smaller of the two degrees of freedom).
        delta = a.mean - b.mean
        if a.se is None or b.se is None:
            return Test(
                "best", "", label, base, (), delta, None, None, "between networks", "none", None
            )
        se = math.hypot(a.se, b.se)
        df = None if a.df is None or b.df is None else min(a.df, b.df)
        p = _p(delta, se, df, one_sided=one_sided)
        error = "seeds" if df is not None else "sampling"
        return Test("best", "", label, base, (), delta, se, df, "between networks", error, p)


def _replace(test: Test, **changes) -> Test:
    return dataclasses.replace(test, **changes)


def _with(key: Key, axis: str, value: str) -> Key:
    return tuple((k, value if k == axis else v) for k, v in key)


def _key(row: dict, axes: list[str]) -> Key:
    return tuple((k, format_value(row["params"][k])) for k in axes)


# -- settings, effects and the family -------------------------------------------------------------


def _settings(design: _Design, rows: list[dict], axes: list[str]) -> list[Setting]:
    """The scored rows grouped into settings (rows differing only in seeds), in row order; each
    mean's error from its cell's spread over networks trained alike, pooled over the sweep."""
    groups: dict[Key, list[dict]] = {}
    for row in rows:
        if row.get(SCORE) is not None:
            groups.setdefault(_key(row, axes), []).append(row)
    out = []
    for key, runs in groups.items():
        train = {k: v for k, v in key if k in design.train_axes}
        w = design.sampling_part(key)
        members = {s: ns for s, ns in design.settings.items() if design.matches(s, train)}
        g = design._average(members, {w: 1.0})
        result = design.evaluate(g, {w: 1.0}) if g else None
        mean = sum(r[SCORE] for r in runs) / len(runs)
        se, df, error = (result[1], result[2], result[3]) if result else (None, None, "none")
        if error == "seeds":
            n_networks = len({r["network"] for r in runs})
            source: Source = "training seeds" if n_networks > 1 else "pooled seeds"
        else:
            source = "sampling"
        out.append(Setting(key, tuple(runs), mean, se, df, source))
    return out


def _settle(
    test: Test, design: _Design, family_size: int, smallest: float, rows, label: str = "FID"
) -> str | None:
    """What would call an undecided main effect: seeds per setting, or images per FID."""
    if test.called or test.se is None:
        return None
    size = max(abs(test.estimate), smallest)
    level = 1 - FAMILY_ALPHA / (2 * max(family_size, 1))  # Bonferroni: Holm's first step

    def factor(df: float | None) -> float:
        """How much the variance must shrink for `size` to be called with POWER."""
        return (test.se * (_quantile(level, df) + _quantile(POWER, df)) / size) ** 2

    if test.error == "seeds":
        # The spread's estimate is unbiased in its mean, not its median (chi^2 / df has median
        # 0.84 at 4 degrees of freedom), and too few seeds miss more often than too many help:
        # the median-unbiased variance makes the typical suggestion reach its POWER.
        unbias = test.df / _stats().chi2.median(test.df)
        per_setting = max(len(ns) for ns in design.settings.values())
        seeds = max(per_setting + 1, math.ceil(per_setting * unbias * factor(test.df)))
        for _ in range(3):  # the t quantiles at the degrees of freedom that many seeds give
            df = test.df * (seeds - 1) / (per_setting - 1) if per_setting > 1 else None
            seeds = max(per_setting + 1, math.ceil(per_setting * unbias * factor(df)))
        return (
            f"about {seeds} seeds per setting would resolve a {size:.2g}-{label} difference at "
            "this noise"
        )
    if test.error == "sampling" and test.stratum == "within networks":
        images = max((r.get("n_generated") or 0) for r in rows)
        if images:
            needed = math.ceil(images * max(factor(None), 1.0) / 100) * 100
            return (
                f"about {needed:,} images per {label} (now {images:,}) would resolve a "
                f"{size:.2g}-{label} difference at this noise"
            )
    if test.error == "sampling":
        return "train.seed in the grid (two or more seeds) is needed to measure its noise"
    return None


def assess(
    rows: list[dict],
    grid: dict[str, list],
    progress: dict[str, list[dict]] | None = None,
    *,
    sampling_axes: list[str] | None = None,
    smallest_effect: float = SMALLEST_EFFECT,
    metric: str = "fid",
) -> Verdict:
    """The sweep's settings, each axis's effects and interactions, the best setting against the
    others, all at one family-wise level; and each network's convergence from its FID over
    training (`progress`: network -> points). `sampling_axes` are the grid keys that make
    variants of one network (the plan's); by default, those whose values vary within one.
    `metric` is the score compared (report.metric): its value and half-sampling spread are each
    row's `metric` and `metric`_std."""
    rows = [{**r, SCORE: r.get(metric), SCORE_STD: r.get(f"{metric}_std")} for r in rows]
    order = [k for k in (rows[0]["params"] if rows else {}) if k in grid] or list(grid)
    seed_axes = [k for k in order if k in SEED_KEYS]
    setting_axes = [k for k in order if k not in SEED_KEYS]
    if sampling_axes is None:
        sampling_axes = [k for k in setting_axes if _varies_within_networks(rows, k)]
    sample_axes = [k for k in setting_axes if k in sampling_axes]
    train_axes = [k for k in setting_axes if k not in sample_axes]
    design = _Design(rows, train_axes, sample_axes)
    settings = _settings(design, rows, setting_axes)
    levels_of = {k: [format_value(v) for v in grid[k]] for k in setting_axes}
    axes = {k: v for k, v in levels_of.items() if len(v) > 1}
    strata = {k: "sampling" if k in sample_axes else "training" for k in setting_axes}

    tests = _effects_and_interactions(design, axes)
    against_best = _against_best(design, settings)
    tests, against_best, families, n_effects = _family_wise(tests, against_best, len(settings))
    tests = _breakdowns_where_called(tests, axes)
    size, label = families * n_effects, LABELS.get(metric, metric)
    tests = [
        _replace(t, settle=_settle(t, design, size, smallest_effect, rows, label))
        if t.kind == "main"
        else t
        for t in tests
    ]
    networks = list(dict.fromkeys(r["network"] for r in rows))
    curves = [
        convergence(n, progress[n], smallest_effect) for n in networks if (progress or {}).get(n)
    ]
    return Verdict(
        settings,
        axes,
        strata,
        tests,
        against_best,
        design.replicated(),
        seed_axes,
        networks,
        curves,
        smallest_effect,
        design,
        metric,
    )


def _family_wise(tests: list[Test], against_best: list[Test], m: int):
    """Family-wise p values: Holm over the effects and interactions, Bonferroni over the m(m-1)
    ordered pairs of settings, and Bonferroni between the two families. Returns both lists with
    `p_family` set, the number of families and the number of effects."""
    effects = [t for t in tests if t.kind in ("main", "interaction") and t.p is not None]
    best = [t for t in against_best if t.p is not None]
    families = bool(effects) + bool(best)  # Bonferroni between the two
    adjusted = {
        id(t): min(1.0, families * p)
        for t, p in zip(effects, holm([t.p for t in effects]), strict=True)
    }
    pairs = m * (m - 1)  # ordered: each one-sided p covers one order
    adjusted |= {id(t): min(1.0, families * pairs * t.p) for t in best}
    tests = [_replace(t, p_family=adjusted.get(id(t))) for t in tests]
    against_best = [_replace(t, p_family=adjusted.get(id(t))) for t in against_best]
    return tests, against_best, families, len(effects)


def _effects_and_interactions(design: _Design, axes: dict[str, list[str]]) -> list[Test]:
    """Each level's main effect, followed by its breakdown by every other axis's levels; then
    the interactions: each pair of axes once, the effect of the axis with more levels tested
    across the other's levels."""
    tests: list[Test] = []
    for axis, levels in axes.items():
        for level in levels[1:]:
            main = design.test(
                "main", axis, level, levels[0], (), design.effect(axis, level, levels[0], {})
            )
            if main is None:
                continue
            tests.append(main)
            for other, other_levels in axes.items():
                for value in other_levels if other != axis else ():
                    contrast = design.effect(axis, level, levels[0], {other: value})
                    by = design.test("by", axis, level, levels[0], ((other, value),), contrast)
                    if by is not None:
                        tests.append(by)
    for a, b in itertools.combinations(axes, 2):
        axis, by = (a, b) if len(axes[a]) >= len(axes[b]) else (b, a)
        for level in axes[axis][1:]:
            found = design.interaction(axis, level, axes[axis][0], by, axes[by])
            if found is not None:
                tests.append(found)
    return tests


def _against_best(design: _Design, settings: list[Setting]) -> list[Test]:
    """Each setting against the one with the lowest FID, one-sided (uncorrected p). The best is
    chosen by the same data, so a claim that one is worse stands for any of the m (m - 1)
    ordered pairs: Bonferroni over them holds whatever the errors (Hsu's single m - 1 needs
    equal ones, and a paired comparison's is far smaller than one between networks)."""
    best = _lowest(settings)
    return [design.compare(s, best, one_sided=True) for s in settings if s is not best]


def _lowest(settings: list[Setting]) -> Setting | None:
    """The setting with the lowest mean FID: the verdict's best."""
    return min(settings, key=lambda s: s.mean) if settings else None


def _varies_within_networks(rows: list[dict], axis: str) -> bool:
    seen: dict[str, set] = {}
    for row in rows:
        seen.setdefault(row["network"], set()).add(format_value(row["params"][axis]))
    return any(len(values) > 1 for values in seen.values())


def _breakdowns_where_called(tests: list[Test], axes: dict[str, list[str]]) -> list[Test]:
    """An effect's breakdown by another axis's levels is a family of its own (Holm) once the
    interaction with that axis is called; other breakdowns stay uncorrected detail."""
    called = set()
    for t in tests:
        if t.kind == "interaction" and t.called:
            by = t.at[0][0]
            called.add((t.axis, t.level, by))
            if len(axes[by]) == 2:  # the other axis's one effect depends on this one too
                called.add((by, axes[by][1], t.axis))
    groups: dict[tuple, list[Test]] = {}
    for t in tests:
        if t.kind == "by" and (t.axis, t.level, t.at[0][0]) in called and t.p is not None:
            groups.setdefault((t.axis, t.level, t.at[0][0]), []).append(t)
    adjusted = {}
    for group in groups.values():
        adjusted.update(zip(map(id, group), holm([t.p for t in group]), strict=True))
    return [_replace(t, p_family=adjusted[id(t)]) if id(t) in adjusted else t for t in tests]


# -- convergence ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Convergence:
    """A network's FID over training, and its trend at the end: a weighted least-squares line
    through the last half (at least 3) of its points, in FID per 10% of training."""

    network: str
    points: list[dict]  # progress.json's points, in training order
    state: Literal["improving", "flat", "worse", "unclear", "unknown"]
    slope: float | None  # FID per 10% of training
    low: float | None  # its 95% interval
    high: float | None
    fitted: int  # how many points the line goes through
    margin: float  # report.smallest_effect: a change per 10% of training that matters

    @property
    def sentence(self) -> str:
        if self.state == "unknown":
            return (
                f"{self.network}: fewer than 3 points with errors, so its trend at the end of "
                "training is unknown."
            )
        trend = (
            f"FID {self.slope:+.2g} per 10% of training over its last {self.fitted} points "
            f"(95% interval {self.low:+.2g} to {self.high:+.2g})"
        )
        words = {
            "improving": "still improving at the end: the ranking may change with longer training",
            "worse": "getting worse at the end",
            "flat": f"flat: it rules out changes beyond ± {max(-self.low, self.high):.2g} "
            f"(report.smallest_effect: {self.margin:g})",
            "unclear": f"cannot tell: it includes no change and changes beyond ± {self.margin:g}",
        }[self.state]
        return f"{self.network}: {trend}, {words}."


def convergence(network: str, points: list[dict], margin: float = SMALLEST_EFFECT) -> Convergence:
    """FID's trend at the end of training; `margin`: the smallest change per 10% of training
    that matters (flat: the interval lies within ± margin)."""
    usable = [p for p in points if p.get("fid_std")]
    if len(usable) < 3 or len(usable) < len(points):
        return Convergence(network, points, "unknown", None, None, None, 0, margin)
    last = usable[-max(3, math.ceil(len(usable) / 2)) :]
    total = usable[-1]["images_seen"] or 1
    x = [10 * p["images_seen"] / total for p in last]  # in tenths of training
    y = [p["fid"] for p in last]
    w = [1 / p["fid_std"] ** 2 for p in last]
    sw = sum(w)
    xm, ym = (
        sum(wi * xi for wi, xi in zip(w, x, strict=True)) / sw,
        sum(wi * yi for wi, yi in zip(w, y, strict=True)) / sw,
    )
    sxx = sum(wi * (xi - xm) ** 2 for wi, xi in zip(w, x, strict=True))
    slope = sum(wi * (xi - xm) * (yi - ym) for wi, xi, yi in zip(w, x, y, strict=True)) / sxx
    chi2 = sum(wi * (yi - ym - slope * (xi - xm)) ** 2 for wi, xi, yi in zip(w, x, y, strict=True))
    birge = math.sqrt(chi2 / (len(last) - 2))  # > 1: the points scatter beyond their ±
    half = _quantile(0.5 + CONFIDENCE / 2, None) * math.sqrt(1 / sxx) * max(1.0, birge)
    low, high = slope - half, slope + half
    if high < 0:
        state = "improving"
    elif low > 0:
        state = "worse"
    elif max(-low, high) <= margin:
        state = "flat"
    else:
        state = "unclear"
    return Convergence(network, points, state, slope, low, high, len(last), margin)


def convergence_sentence(curves: list[Convergence], networks: int) -> str:
    """What the report can say about training length, over all networks."""
    if not curves:
        return (
            "Whether training had converged is unknown: set train.snapshot_every to measure FID "
            "over training."
        )
    by_state: dict[str, list[str]] = {}
    for c in curves:
        by_state.setdefault(c.state, []).append(c.network)
    moving = by_state.get("improving", [])
    parts = []
    if moving:
        parts.append(
            f"FID was still improving at the end of training for {len(moving)} of {networks} "
            f"networks ({', '.join(moving[:TIES_NAMED])}"
            + (f" and {len(moving) - TIES_NAMED} more" if len(moving) > TIES_NAMED else "")
            + "): the ranking may change with longer training."
        )
    margin = curves[0].margin
    words = {
        "flat": f"flat within ± {margin:g} FID per 10% of training",
        "worse": "getting worse",
        "unclear": "whose trend the FID-over-training budget cannot tell",
        "unknown": "unknown (fewer than 3 points)",
    }
    rest = [f"{len(by_state[s])} {words[s]}" for s in words if by_state.get(s)]
    if rest:
        parts.append(
            ("Of the others: " if moving else "Networks at the end of training: ")
            + "; ".join(rest)
            + "."
        )
    missing = networks - len(curves)
    if missing:
        parts.append(f"{missing} without FID over training.")
    return " ".join(parts)


# -- words ---------------------------------------------------------------------------------------


def _decimals(error: float) -> int:
    """Decimals that show an error's second significant digit."""
    return min(4, max(0, 1 - math.floor(math.log10(error))))


def pm(value: float, error: float | None, *, sign: bool = False) -> str:
    """`value ± error`, both to the error's second significant digit (3.23 ± 0.74, -47.2 ±
    4.3, -50 ± 42); without an error, three significant digits. `sign`: always signed."""
    spec = "+" if sign else ""
    if error is None or not math.isfinite(error) or error <= 0:
        return f"{value:{spec}.3g}"
    decimals = _decimals(error)
    return f"{value:{spec}.{decimals}f} ± {error:.{decimals}f}"


def interval(test: Test) -> str:
    """A test's uncorrected 95% interval, to its error's precision: `-18.0 to -1.7`."""
    low, high = test.estimate - test.half_width, test.estimate + test.half_width
    decimals = _decimals(test.se) if test.se > 0 else 3
    return f"{low:+.{decimals}f} to {high:+.{decimals}f}"


def signed(value: float, error: float | None) -> str:
    """A difference, always with its sign."""
    return pm(value, error, sign=True)


def _call(test: Test) -> str:
    if test.p is None:
        return "no noise estimate"
    if test.called:
        return "better" if test.estimate < 0 else "worse"
    return "not distinguishable"


def _stratum_words(verdict: Verdict, axis: str) -> str:
    if verdict.strata.get(axis) == "sampling":
        return "paired within networks"
    return "between networks"


def axis_sentence(verdict: Verdict, axis: str) -> str:
    """One sentence on every level of `axis` against its first level."""
    levels = verdict.axes[axis]
    mains = {t.level: t for t in verdict.tests if t.kind == "main" and t.axis == axis}
    if not mains:
        return f"{axis}: not scored yet."
    parts = []
    for level in levels[1:]:
        main = mains.get(level)
        if main is None:
            parts.append(f"{level}: not scored yet")
            continue
        split = _called_interaction(verdict, axis, level)
        if split is None:
            words = _call(main)
            text = f"{level} {signed(main.estimate, main.se)} ({words}"
            if main.called:
                text += f", p = {main.p_family:.2g} family-wise)"
            elif main.se is not None:
                text += f"; 95% interval {interval(main)})"
            else:
                text += ")"
            parts.append(text)
            continue
        by = split.at[0][0]
        pieces = [
            f"{dict(t.at)[by]}: {signed(t.estimate, t.se)} {_call(t)}"
            for t in verdict.tests
            if t.kind == "by" and t.axis == axis and t.level == level and t.at[0][0] == by
        ]
        parts.append(f"{level} depends on {by} ({'; '.join(pieces)})")
    undecided = [t for t in mains.values() if t.settle]
    tail = ""
    if undecided:
        largest = max(undecided, key=lambda t: abs(t.estimate))
        tail = f" Undecided: {largest.settle}."
    return (
        f"{axis} ({_stratum_words(verdict, axis)}), against {levels[0]}, averaged over the other "
        f"settings: " + "; ".join(parts) + "." + tail
    )


def _called_interaction(verdict: Verdict, axis: str, level: str) -> Test | None:
    """A called interaction of `axis = level`'s effect with another axis (either way round)."""
    for t in verdict.tests:
        if t.kind != "interaction" or not t.called:
            continue
        if (t.axis, t.level) == (axis, level):
            return t
        if t.at[0][0] == axis and len(verdict.axes[axis]) == 2:  # tested the other way round
            return _replace(t, at=((t.axis, t.level),))
    return None


def headline(verdict: Verdict) -> list[str]:
    """The answer to the config's question in a few sentences, ending with the noise model
    and how the claims were corrected."""
    if not verdict.settings:
        return ["No run has been scored yet."]
    best = verdict.best
    seeds = f", mean of {best.n} seeds" if best.n > 1 else ""
    first = f"Lowest {verdict.label}: {best.label} ({pm(best.mean, best.se)}{seeds})."
    ties = [t for t in verdict.against_best if not t.called]
    if ties:
        named = "; ".join(t.level for t in sorted(ties, key=lambda t: t.estimate)[:TIES_NAMED])
        more = f" and {len(ties) - TIES_NAMED} more" if len(ties) > TIES_NAMED else ""
        first += (
            f" Setting against setting, {len(ties)} other(s) are not distinguishable from it at "
            f"the family-wise level: {named}{more}."
        )
    elif len(verdict.settings) > 1:
        first += " Every other setting is distinguishably worse."
    lines = [first]
    lines += [axis_sentence(verdict, axis) for axis in verdict.axes]
    return lines + [convergence_sentence(verdict.curves, len(verdict.networks)), caveat(verdict)]


def caveat(verdict: Verdict) -> str:
    """How the claims were made: the families, their correction, the noise each stratum holds."""
    family = verdict.family
    mains = sum(t.kind == "main" for t in family)
    interactions = sum(t.kind == "interaction" for t in family)
    best = sum(t.kind == "best" for t in family)
    parts = []
    if mains or interactions:
        parts.append(
            f"Holm over {mains + interactions} effect tests ({mains} main effects, "
            f"{interactions} interaction tests)"
        )
    if best:
        parts.append(f"the best against {best} other settings (Bonferroni over all pairs)")
    split = f", each at {FAMILY_ALPHA / len(parts):.1%}" if len(parts) > 1 else ""
    claims = (
        f"Claims above hold together at {FAMILY_ALPHA:.0%} family-wise error: "
        + " and ".join(parts)
        + split
        + "."
    )
    if verdict.replicated:
        df = next((t.df for t in family if t.df is not None), None)
        noise = (
            "Errors come from networks trained alike (training seeds), pooled over the sweep"
            + (f" ({df:g} degrees of freedom)" if df else "")
            + ": between networks they hold training-seed and sampling variance; sampling axes "
            "are compared within networks, where the seed's luck cancels."
        )
    else:
        noise = (
            "Training-seed variance is unknown: each setting was trained once, and the errors "
            "are sampling noise only, so a difference between networks may still be one seed's "
            "luck. Add train.seed to the grid (two or three values) to settle it."
        )
    return f"{claims} {noise}"


# -- two feature spaces --------------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """One main effect as two scores see it (each at its own family-wise level)."""

    axis: str
    level: str
    baseline: str
    first: Test  # by the verdict's score (report.metric)
    second: Test  # by the other score
    labels: tuple[str, str]  # their names

    @property
    def words(self) -> str:
        a, b = self.first, self.second
        same = (a.estimate < 0) == (b.estimate < 0)
        if a.called and b.called:
            return "agree" if same else "disagree: both call it, in opposite directions"
        if a.called or b.called:
            lone = self.labels[0] if a.called else self.labels[1]
            return f"{'same direction' if same else 'opposite directions'}; only {lone} calls it"
        return "neither calls it"


def agreement(first: Verdict, second: Verdict) -> list[Agreement]:
    """Each main effect of `first` beside the same effect in `second` (the same sweep scored by
    another metric), for the report's "do FID and FD_DINOv2 agree?" table."""
    by_key = {(t.axis, t.level, t.baseline): t for t in second.tests if t.kind == "main"}
    return [
        Agreement(
            t.axis,
            t.level,
            t.baseline,
            t,
            by_key[(t.axis, t.level, t.baseline)],
            (first.label, second.label),
        )
        for t in first.tests
        if t.kind == "main" and (t.axis, t.level, t.baseline) in by_key
    ]


def agreement_sentence(pairs: list[Agreement], first: Verdict, second: Verdict) -> str:
    """Whether the two scores tell the same story: their best settings and their main effects."""
    same_best = first.best is not None and second.best is not None
    same_best = same_best and first.best.key == second.best.key
    best = (
        f"{first.label} and {second.label} rank the same setting best ({first.best.label})"
        if same_best
        else f"{first.label} ranks {first.best.label} best, {second.label} "
        f"{second.best.label if second.best else 'nothing'}"
    )
    if not pairs:
        return best + "."
    agree = sum(p.words == "agree" for p in pairs)
    disagree = [p for p in pairs if p.words.startswith("disagree")]
    split = [p for p in pairs if "only " in p.words]
    effects = f"{len(pairs)} effect{'s' if len(pairs) > 1 else ''}"
    text = f"{best}; of {effects}, both call {agree} the same way"
    if disagree:
        text += ", and call " + ", ".join(f"{p.axis} = {p.level}" for p in disagree)
        text += " in opposite directions"
    if split:
        text += f"; {len(split)} only one of them calls"
    return text + "."

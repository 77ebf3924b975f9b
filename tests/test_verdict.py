"""The verdict's statistics on constructed numbers whose right answer is known."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from ddpm.verdict import assess, axis_sentence, caveat, compare, convergence, headline


def rows_of(fids: dict, grid: dict, std: float = 1.0) -> list[dict]:
    """Rows as the report collects them: one per run, `fids` keyed by the grid values in grid
    order (seeds included); a missing key is a run without metrics."""
    rows = []
    for combo in itertools.product(*grid.values()):
        params = dict(zip(grid, combo, strict=True))
        run_id = "_".join(f"{k}~{v}" for k, v in params.items())
        rows.append(
            {
                "run_id": run_id,
                "network": run_id,
                "params": params,
                "fid": fids.get(combo),
                "fid_std": std if combo in fids else None,
            }
        )
    return rows


def test_the_t_test_agrees_with_scipy():
    """Two settings with 3 and 5 seeds and different spreads: the difference, its error, the
    degrees of freedom and the 95% interval are those of scipy's two-sample t-test (pooled
    variance)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(40, 2, 3), rng.normal(45, 5, 5)
    grid = {"schedule": ["linear", "cosine"], "train.seed": [0, 1, 2, 3, 4]}
    fids = {("linear", s): v for s, v in enumerate(a)} | {("cosine", s): v for s, v in enumerate(b)}
    verdict = assess(rows_of(fids, grid), grid)
    linear, cosine = (
        verdict.setting({"schedule": "linear"}),
        verdict.setting({"schedule": "cosine"}),
    )
    assert (linear.n, cosine.n) == (3, 5) and linear.source == "training seeds"
    diff = compare(linear, cosine)
    ref = stats.ttest_ind(a, b, equal_var=True)
    assert diff.delta == pytest.approx(a.mean() - b.mean(), rel=1e-12)
    assert diff.delta / diff.se == pytest.approx(ref.statistic, rel=1e-12)
    assert diff.df == ref.df == 6
    low, high = ref.confidence_interval(0.95)
    assert diff.delta - diff.half_width == pytest.approx(low, rel=1e-10)
    assert diff.delta + diff.half_width == pytest.approx(high, rel=1e-10)
    assert diff.distinguishable == (ref.pvalue < 0.05)


def test_a_seed_spread_larger_than_sampling_noise_overrules_it():
    """Two settings whose seeds disagree by 10 FID while each FID's sampling noise is 0.5: the
    runs compared one by one look different (50 against 54 is 5.7 sampling sigmas), the settings
    are not told apart; seeds that agree are."""
    grid = {"schedule": ["linear", "cosine"], "train.seed": [0, 1]}
    noisy = {("linear", 0): 50.0, ("linear", 1): 60.0, ("cosine", 0): 54.0, ("cosine", 1): 64.0}
    verdict = assess(rows_of(noisy, grid, std=0.5), grid)
    linear, cosine = (
        verdict.setting({"schedule": "linear"}),
        verdict.setting({"schedule": "cosine"}),
    )
    single = abs(50.0 - 54.0) / math.hypot(0.5, 0.5)
    assert single > 2  # what a sampling-noise-only verdict on seed 0 would call distinguishable
    diff = compare(cosine, linear)
    assert diff.delta == 4.0 and not diff.distinguishable and diff.basis.startswith("t-test")
    assert verdict.replicated and "training-seed variance" in caveat(verdict)

    steady = {("linear", 0): 50.0, ("linear", 1): 50.4, ("cosine", 0): 55.0, ("cosine", 1): 55.2}
    verdict = assess(rows_of(steady, grid, std=0.5), grid)
    assert compare(
        verdict.setting({"schedule": "cosine"}), verdict.setting({"schedule": "linear"})
    ).distinguishable
    assert axis_sentence(verdict, "schedule", "cosine") == (
        # 55.1 +- 0.1 against 50.2 +- 0.2
        "schedule = cosine against schedule = linear: cosine is worse everywhere (+4.9 ± 0.22 FID)."
    )


def test_without_replicates_the_verdict_uses_sampling_noise_and_says_so():
    grid = {"T": [350, 1000]}
    verdict = assess(rows_of({(350,): 60.0, (1000,): 65.0}, grid, std=1.0), grid)
    (effect,) = verdict.effects
    d = effect.difference
    assert d.delta == 5.0 and d.se == pytest.approx(math.sqrt(2)) and d.distinguishable
    assert d.basis == "sampling noise only" and d.half_width == pytest.approx(2 * math.sqrt(2))
    # 1.5 apart with errors of 1: within 2 standard deviations of the difference (2.83).
    verdict = assess(rows_of({(350,): 60.0, (1000,): 61.5}, grid, std=1.0), grid)
    assert not verdict.effects[0].difference.distinguishable
    assert not verdict.replicated
    assert "Training-seed variance is unknown" in caveat(verdict)
    assert headline(verdict)[-1] == caveat(verdict)


def test_a_setting_with_one_seed_takes_the_pooled_seed_spread():
    """One replicate of cosine is missing: every setting's error comes from the spread pooled
    over the settings that have seeds (variances 4 and 16 on 2 degrees of freedom each)."""
    grid = {"schedule": ["linear", "cosine", "sigmoid"], "train.seed": [0, 1, 2]}
    fids = {
        ("linear", 0): 50.0,
        ("linear", 1): 52.0,
        ("linear", 2): 54.0,  # variance 4
        ("sigmoid", 0): 40.0,
        ("sigmoid", 1): 44.0,
        ("sigmoid", 2): 48.0,  # variance 16
        ("cosine", 0): 45.0,
    }
    verdict = assess(rows_of(fids, grid), grid)
    cosine = verdict.setting({"schedule": "cosine"})
    assert cosine.source == "pooled seeds" and cosine.n == 1
    assert cosine.se == pytest.approx(math.sqrt(10)) and cosine.df == 4
    assert verdict.setting({"schedule": "linear"}).se == pytest.approx(math.sqrt(10 / 3))


def test_an_effect_that_depends_on_another_axis_is_reported_per_slice():
    """Cosine is 20 better than linear at T = 350 and ties at T = 1000; T = 1000 is better under
    both schedules."""
    grid = {"T": [350, 1000], "schedule": ["linear", "cosine"]}
    fids = {
        (350, "linear"): 80.0,
        (350, "cosine"): 60.0,
        (1000, "linear"): 50.0,
        (1000, "cosine"): 51.0,
    }
    verdict = assess(rows_of(fids, grid), grid)
    effects = {(e.axis, e.at_label): e.difference for e in verdict.effects}
    assert effects[("schedule", "T = 350")].delta == -20.0
    assert effects[("schedule", "T = 350")].better.label == "T = 350, schedule = cosine"
    assert effects[("schedule", "T = 1000")].better is None
    assert axis_sentence(verdict, "schedule", "cosine") == (
        "schedule = cosine against schedule = linear depends on the other settings: "
        "cosine is better at T = 350 (-20 ± 1.4); not distinguishable at T = 1000 (+1 ± 1.4)."
    )
    assert axis_sentence(verdict, "T", "1000") == (
        "T = 1000 against T = 350: 1000 is better everywhere (-30 to -9 FID)."
    )
    lines = headline(verdict)
    assert lines[0] == (
        "Lowest FID: T = 1000, schedule = linear (50 ± 1). Not distinguishable from 1 other "
        "setting(s): T = 1000, schedule = cosine."
    )
    assert lines[1:3] == [
        axis_sentence(verdict, "T", "1000"),
        axis_sentence(verdict, "schedule", "cosine"),
    ]


def test_missing_runs_and_bundle_axes():
    """A bundle axis's levels are spelt as in run ids; a setting without metrics gives an effect
    without a difference, and says so."""
    grid = {"T": [350, 1000], "sampler": [{"method": "ddpm"}, {"method": "ddim", "steps": 25}]}
    rows = rows_of({}, {"T": [350, 1000], "sampler": ["ddpm", "ddim-25"]})
    for row in rows:
        row["params"]["sampler"] = grid["sampler"][
            ["ddpm", "ddim-25"].index(row["params"]["sampler"])
        ]
    rows[0]["fid"], rows[0]["fid_std"] = 30.0, 1.0  # T = 350 with ddpm only
    verdict = assess(rows, grid)
    assert verdict.axes == {"T": ["350", "1000"], "sampler": ["ddpm", "ddim-25"]}
    assert all(e.difference is None for e in verdict.effects)
    assert axis_sentence(verdict, "sampler", "ddim-25") == (
        "sampler = ddim-25 against sampler = ddpm: not scored yet."
    )
    assert headline(verdict)[0] == "Lowest FID: T = 350, sampler = ddpm (30 ± 1)."
    assert headline(assess(rows_of({}, {"T": [1]}), {"T": [1]})) == ["No run has been scored yet."]


def _points(*fids, std=1.0):
    return [
        {"step": 100 * (i + 1), "images_seen": 3200 * (i + 1), "fid": f, "fid_std": std}
        for i, f in enumerate(fids)
    ]


def test_convergence_compares_the_last_point_with_the_one_before_within_their_noise():
    """Errors of 1: the last two points must differ by more than 2 x 1.41 = 2.83."""
    assert convergence("a", _points(80, 60, 50)).state == "improving"  # -10
    assert convergence("a", _points(80, 60, 58)).state == "flat"  # -2
    assert convergence("a", _points(80, 50, 55)).state == "worse"  # +5
    assert convergence("a", _points(80)).state == "unknown"
    assert convergence("a", _points(80, 70, std=None)).state == "unknown"
    curve = convergence("T~350", _points(80, 60, 50))
    assert curve.sentence == (
        "T~350: FID 60 at step 200 to 50 at step 300, still improving at the end: the ranking "
        "may change with longer training."
    )


def test_the_headline_says_whether_training_had_converged():
    grid = {"T": [350, 1000]}
    rows = rows_of({(350,): 60.0, (1000,): 50.0}, grid)
    unknown = headline(assess(rows, grid))
    assert "Whether training had converged is unknown: set train.snapshot_every" in unknown[-2]
    progress = {"T~350": _points(80, 60, 59), "T~1000": _points(90, 70, 50)}
    lines = headline(assess(rows, grid, progress))
    assert lines[-2] == (
        "FID was still improving at the end of training for 1 of 2 networks (T~1000): the "
        "ranking may change with longer training."
    )
    progress["T~1000"] = _points(90, 70, 69)
    assert headline(assess(rows, grid, progress))[-2] == (
        "FID had stopped improving beyond its noise by the end of training for every network."
    )

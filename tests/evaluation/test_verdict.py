"""The verdict's statistics. Calibration by simulation: sweeps made with a known truth, run
through the real code, counting false calls, power and coverage; and each formula against an
independent computation (scipy, numpy)."""

import itertools
import math
import re

import numpy as np
import pytest
from scipy import stats

from ddpm.evaluation.verdict import (
    agreement,
    agreement_sentence,
    assess,
    caveat,
    convergence,
    headline,
    holm,
    pm,
)

# -- simulated sweeps ----------------------------------------------------------------------------

SAMPLERS = ("ddim-10", "ddim-25", "dpm-10")


def simulate(
    rng,
    *,
    T=(350, 1000),
    schedules=("linear", "cosine"),
    samplers=SAMPLERS,
    seeds=(0, 1, 2),
    sampler_effect=None,
    cosine_effect=0.0,
    seed_sd=4.0,
    noise=1.0,
    shared=0.5,
):
    """Rows and grid of a sweep shaped like the real one: T x schedule networks, each trained
    with `seeds`, each sampled by `samplers`. A network's FIDs share its seed's luck (sd
    `seed_sd`) and, with correlation `shared`, its sampling noise (variants with one x_T); each
    FID's own ± is `noise`. The truth: `sampler_effect` per sampler in every network, and
    `cosine_effect` for the cosine networks."""
    grid = {"T": list(T), "schedule": list(schedules), "train.seed": list(seeds)}
    grid["sampler"] = list(samplers)
    rows = []
    for t, schedule, seed in itertools.product(T, schedules, seeds):
        network = f"T~{t}_schedule~{schedule}_train.seed~{seed}"
        luck = rng.normal(0, seed_sd) + (cosine_effect if schedule == "cosine" else 0.0)
        common = rng.normal(0, noise * math.sqrt(shared))
        for sampler, effect in zip(samplers, sampler_effect or [0.0] * len(samplers), strict=True):
            own = rng.normal(0, noise * math.sqrt(1 - shared))
            params = {"T": t, "schedule": schedule, "train.seed": seed, "sampler": sampler}
            rows.append(
                {
                    "run_id": f"{network}/{sampler}",
                    "network": network,
                    "params": params,
                    "fid": 50.0 + luck + effect + common + own,
                    "fid_std": noise,
                    "n_generated": 1000,
                }
            )
    return rows, grid


def judge(rows, grid, **kwargs):
    return assess(rows, grid, sampling_axes=["sampler"], **kwargs)


def main_effect(verdict, axis, level):
    return next(t for t in verdict.tests if t.kind == "main" and (t.axis, t.level) == (axis, level))


def rate(hits: int, n: int) -> float:
    return hits / n


def margin(p: float, n: int) -> float:
    """Three Monte Carlo standard errors of a rate p estimated from n sweeps."""
    return 3 * math.sqrt(p * (1 - p) / n)


# -- calibration ---------------------------------------------------------------------------------


def test_with_no_true_effect_the_family_wise_rate_of_false_calls_is_at_most_5_percent():
    """Nothing differs but the seeds' luck (4x the sampling noise) and sampling noise: sweeps in
    which the verdict makes any claim at all (an effect, an interaction, a setting worse than
    the best) are at most 5%. The per-slice verdict it replaces made one in 23% of sweeps."""
    rng = np.random.default_rng(0)
    n = 300
    false = sum(any(t.called for t in judge(*simulate(rng)).family) for _ in range(n))
    assert rate(false, n) <= 0.05 + margin(0.05, n), rate(false, n)


def test_a_within_network_effect_of_3_sampling_sigmas_is_found_despite_a_4_sigma_seed_spread():
    """DPM-10 worse by 3x the sampling noise in every network, seeds 4x apart: the paired
    comparison finds it in at least 90% of sweeps (the verdict it replaces, charging the seed
    spread, found it in none), and calls no other sampler."""
    rng = np.random.default_rng(1)
    n = 200
    found = wrong = 0
    for _ in range(n):
        verdict = judge(*simulate(rng, sampler_effect=(0.0, 0.0, 3.0)))
        found += main_effect(verdict, "sampler", "dpm-10").called
        wrong += main_effect(verdict, "sampler", "ddim-25").called
    assert rate(found, n) >= 0.9, rate(found, n)
    assert rate(wrong, n) <= 0.05 + margin(0.05, n)


@pytest.mark.parametrize("seeds", [(0, 1, 2), (0,)], ids=["three seeds", "one seed"])
def test_the_intervals_cover_the_true_effects_at_their_stated_rate(seeds):
    """Uncorrected 95% intervals of a sampling-axis and a training-axis main effect, both of
    true size 3: with seeds, t intervals cover at 95% (within the Monte Carlo margin); with one
    seed, the sampling-noise bound covers at least as often, never less."""
    rng = np.random.default_rng(2)
    n = 400
    spread = 4.0 if len(seeds) > 1 else 0.0
    covered = {"sampler": 0, "schedule": 0}
    for _ in range(n):
        rows, grid = simulate(
            rng, seeds=seeds, seed_sd=spread, sampler_effect=(0, 0, 3.0), cosine_effect=3.0
        )
        verdict = judge(rows, grid)
        for axis, level in (("sampler", "dpm-10"), ("schedule", "cosine")):
            test = main_effect(verdict, axis, level)
            covered[axis] += abs(test.estimate - 3.0) <= test.half_width
    for axis, hits in covered.items():
        assert rate(hits, n) >= 0.95 - margin(0.05, n), (axis, rate(hits, n))
        if len(seeds) > 1:
            assert rate(hits, n) <= 0.95 + margin(0.05, n), (axis, rate(hits, n))


def _curve(rng, slope, noise=0.8, points=10):
    return [
        {
            "step": 100 * (i + 1),
            "images_seen": 3200 * (i + 1),
            "fid": 80.0 - slope * i + rng.normal(0, noise),
            "fid_std": noise,
        }
        for i in range(points)
    ]


def test_a_steady_decline_is_called_improving_and_a_flat_curve_is_not():
    """10 snapshots with noise 0.8 each: FID falling by 1.0 per snapshot (per 10% of training)
    is called still improving at least 80% of the time (the last-two-points rule: 13%); a flat
    curve at most 5%, and it is mostly called flat."""
    rng = np.random.default_rng(3)
    n = 1000
    falling = [convergence("a", _curve(rng, 1.0)).state for _ in range(n)]
    flat = [convergence("a", _curve(rng, 0.0)).state for _ in range(n)]
    assert rate(falling.count("improving"), n) >= 0.8
    assert rate(flat.count("improving"), n) <= 0.05
    assert rate(flat.count("flat"), n) >= 0.8


def test_the_seeds_the_verdict_asks_for_would_settle_the_difference():
    """An undecided training-axis effect says how many seeds per setting would resolve a
    difference of the larger of its observed size and report.smallest_effect; sweeps made with
    that many seeds and that true difference call it with 80% power for the median starting
    sweep (70% at least, with the Monte Carlo margin). One suggestion inherits the noise of
    the 3-seed spread it starts from (0.2 to 1.0 across starting sweeps), and since power is
    concave in the seeds, its mean is lower than its median (0.75 against 0.84 over 30)."""
    rng = np.random.default_rng(4)
    kwargs = {"T": (1000,), "samplers": ("ddim-10",)}
    powers = []
    while len(powers) < 20:
        rows, grid = simulate(rng, seeds=(0, 1, 2), cosine_effect=2.0, **kwargs)
        test = main_effect(judge(rows, grid, smallest_effect=4.0), "schedule", "cosine")
        if test.called:
            continue
        said = re.fullmatch(
            r"about (\d+) seeds per setting would resolve a ([\d.]+)-FID difference at this "
            r"noise",
            test.settle,
        )
        seeds, size = int(said[1]), float(said[2])
        assert seeds > 3 and size >= 4.0  # the larger of the observed difference and the margin
        n = 60
        future = [
            simulate(rng, seeds=tuple(range(seeds)), cosine_effect=size, **kwargs) for _ in range(n)
        ]
        found = sum(main_effect(judge(*sweep), "schedule", "cosine").called for sweep in future)
        powers.append(rate(found, n))
    assert np.median(powers) >= 0.7, powers


# -- each formula against an independent computation ---------------------------------------------


def test_a_sampling_axis_is_a_paired_t_test_within_networks():
    """One training setting, five networks: the sampler's main effect is scipy's paired t-test
    of the two samplers' FIDs, whatever the networks' own levels."""
    rng = np.random.default_rng(5)
    rows, grid = simulate(rng, T=(1000,), schedules=("cosine",), seeds=tuple(range(5)))
    rows = [r for r in rows if r["params"]["sampler"] in ("ddim-10", "dpm-10")]
    grid["sampler"] = ["ddim-10", "dpm-10"]
    test = main_effect(judge(rows, grid), "sampler", "dpm-10")
    a = [r["fid"] for r in rows if r["params"]["sampler"] == "dpm-10"]
    b = [r["fid"] for r in rows if r["params"]["sampler"] == "ddim-10"]
    ref = stats.ttest_rel(a, b)
    assert test.estimate == pytest.approx(np.mean(a) - np.mean(b), rel=1e-12)
    assert test.estimate / test.se == pytest.approx(ref.statistic, rel=1e-10)
    assert test.df == ref.df == 4 and test.p == pytest.approx(ref.pvalue, rel=1e-9)
    low, high = ref.confidence_interval(0.95)
    assert test.estimate - test.half_width == pytest.approx(low, rel=1e-9)
    assert test.design == "paired; t, 4 df"


def test_a_training_axis_is_a_two_sample_t_test_between_networks():
    """Two schedules with 3 and 5 seeds, one sampler: scipy's pooled two-sample t-test."""
    rng = np.random.default_rng(6)
    rows, grid = simulate(rng, T=(1000,), seeds=tuple(range(5)), samplers=("ddim-10",))
    rows = [r for r in rows if r["params"]["schedule"] == "cosine" or r["params"]["train.seed"] < 3]
    test = main_effect(judge(rows, grid), "schedule", "cosine")
    cosine = [r["fid"] for r in rows if r["params"]["schedule"] == "cosine"]
    linear = [r["fid"] for r in rows if r["params"]["schedule"] == "linear"]
    ref = stats.ttest_ind(cosine, linear, equal_var=True)
    assert test.estimate / test.se == pytest.approx(ref.statistic, rel=1e-10)
    assert test.df == ref.df == 6 and test.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert test.stratum == "between networks"


def test_an_interaction_of_a_sampling_and_a_training_axis_is_the_one_way_anova_of_differences():
    """Whether the sampler's effect depends on the schedule: the one-way ANOVA of each
    network's paired difference, grouped by schedule (scipy's f_oneway; F = t^2)."""
    rng = np.random.default_rng(7)
    rows, grid = simulate(rng, T=(1000,), seeds=tuple(range(4)), samplers=("ddim-10", "dpm-10"))
    for r in rows:  # DPM-10 worse by 3 under cosine only
        if r["params"]["schedule"] == "cosine" and r["params"]["sampler"] == "dpm-10":
            r["fid"] += 3.0
    grid["sampler"] = ["ddim-10", "dpm-10"]
    verdict = judge(rows, grid)
    [test] = [t for t in verdict.tests if t.kind == "interaction"]
    by_network = {}
    for r in rows:
        sign = 1 if r["params"]["sampler"] == "dpm-10" else -1
        key = (r["params"]["schedule"], r["network"])
        by_network[key] = by_network.get(key, 0.0) + sign * r["fid"]
    groups = [
        [d for (s, _), d in by_network.items() if s == schedule] for schedule in grid["schedule"]
    ]
    ref = stats.f_oneway(*groups)
    assert (test.estimate / test.se) ** 2 == pytest.approx(ref.statistic, rel=1e-9)
    assert test.p == pytest.approx(ref.pvalue, rel=1e-9) and test.df == 6


def test_without_seeds_the_error_is_the_sampling_noise_of_the_difference():
    """One network per setting: a sampling-axis difference has the sampling noise of a paired
    difference, sqrt(1^2 + 2^2), normal; a training axis the bound of each network's mean over
    its variants; the caveat says training-seed variance is unknown."""
    rows, grid = simulate(np.random.default_rng(8), T=(1000,), seeds=(0,), seed_sd=0.0)
    rows = [r for r in rows if r["params"]["sampler"] in ("ddim-10", "dpm-10")]
    grid["sampler"] = ["ddim-10", "dpm-10"]
    for r in rows:
        r["fid_std"] = 2.0 if r["params"]["sampler"] == "dpm-10" else 1.0
    verdict = judge(rows, grid)
    sampler = main_effect(verdict, "sampler", "dpm-10")
    # two networks, each difference's sd sqrt(5): their mean's sqrt(5) / sqrt(2)
    assert sampler.se == pytest.approx(math.sqrt(5 / 2)) and sampler.df is None
    assert sampler.error == "sampling" and sampler.design == "paired; sampling noise only"
    schedule = main_effect(verdict, "schedule", "cosine")
    # each network's mean over two variants: at most (1 + 2) / 2 = 1.5 (perfectly correlated)
    assert schedule.se == pytest.approx(math.hypot(1.5, 1.5))
    assert "Training-seed variance is unknown" in caveat(verdict)
    assert "train.seed in the grid" in schedule.settle


def test_holm_matches_the_textbook_step_down():
    """Holm (1979): sorted p 0.01, 0.02, 0.03, 0.04 among 4 become 0.04, 0.06, 0.06, 0.06."""
    adjusted = holm([0.03, 0.01, 0.04, 0.02])
    assert adjusted == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_the_trend_is_numpys_weighted_least_squares_line():
    """The slope and its standard error (in FID per 10% of training) are numpy's weighted
    polyfit through the last half of the points; points that scatter beyond their ± widen it."""
    rng = np.random.default_rng(9)
    points = _curve(rng, 0.5, noise=0.8)
    for i, p in enumerate(points):
        p["fid_std"] = 0.5 + 0.1 * i
    curve = convergence("a", points, margin=1.0)
    last = points[5:]
    x = np.array([10 * p["images_seen"] / points[-1]["images_seen"] for p in last])
    y = np.array([p["fid"] for p in last])
    w = 1 / np.array([p["fid_std"] for p in last])
    (slope, _), cov = np.polyfit(x, y, 1, w=w, cov="unscaled")
    assert curve.fitted == 5 and curve.slope == pytest.approx(slope, rel=1e-9)
    chi2 = float(np.sum((w * (y - np.polyval((slope, _), x))) ** 2))
    se = math.sqrt(cov[0, 0]) * max(1.0, math.sqrt(chi2 / 3))
    assert (curve.high - curve.low) / 2 == pytest.approx(1.959964 * se, rel=1e-6)


def test_convergence_states_and_their_sentences():
    """Improving when the interval lies below zero, flat when within the margin, else
    undecided; fewer than 3 points, unknown."""

    def line(*fids, std=0.1):
        return [
            {"step": 100 * (i + 1), "images_seen": 3200 * (i + 1), "fid": f, "fid_std": std}
            for i, f in enumerate(fids)
        ]

    assert convergence("a", line(90, 80, 70, 60)).state == "improving"
    flat = convergence("a", line(60, 60.1, 59.9, 60))
    assert flat.state == "flat"
    # it names the smallest change its interval rules out, beside the margin
    assert flat.sentence.endswith("rules out changes beyond ± 0.088 (report.smallest_effect: 1).")
    assert convergence("a", line(60, 63, 66, 69)).state == "worse"
    assert convergence("a", line(60, 61, 59, 62, std=1.0)).state == "unclear"
    assert convergence("a", line(60, 59)).state == "unknown"
    assert convergence("a", line(60, 59, 58, std=None)).state == "unknown"
    curve = convergence("T~350", line(90, 80, 70, 60))
    # 10 FID per snapshot, a snapshot every 25% of training
    assert curve.sentence.startswith("T~350: FID -4 per 10% of training over its last 3 points")
    assert curve.sentence.endswith(
        "still improving at the end: the ranking may change with longer training."
    )


# -- the words -----------------------------------------------------------------------------------


def test_numbers_carry_their_errors_precision():
    assert pm(-50.0, 3.42) == "-50.0 ± 3.4"
    assert pm(-0.1252, 3.42) == "-0.1 ± 3.4"
    assert pm(3.225, 0.74) == "3.23 ± 0.74"
    assert pm(48.0, 42.0) == "48 ± 42"
    assert pm(0.0123, None) == "0.0123"


def test_the_headline_names_the_design_of_each_axis_and_the_family():
    rng = np.random.default_rng(10)
    rows, grid = simulate(rng, sampler_effect=(0.0, 0.0, 3.0))
    lines = headline(judge(rows, grid))
    assert lines[0].startswith("Lowest FID: ")
    assert lines[1].startswith("T (between networks), against 350, averaged over the other")
    assert lines[3].startswith("sampler (paired within networks), against ddim-10, averaged")
    assert "dpm-10 +3." in lines[3] and "(worse, p = " in lines[3]
    assert "Whether training had converged is unknown" in lines[-2]
    assert lines[-1].startswith(
        "Claims above hold together at 5% family-wise error: Holm over 9 effect tests (4 main "
        "effects, 5 interaction tests) and the best against 11 other settings (Bonferroni over all "
        "pairs), each at 2.5%."
    )


def test_a_missing_run_leaves_an_unbalanced_sweep_that_is_still_judged():
    """One network failed and one variant of another is missing: the estimates use what was
    scored, the degrees of freedom shrink, and nothing is claimed of the missing."""
    rng = np.random.default_rng(11)
    rows, grid = simulate(rng, sampler_effect=(0.0, 0.0, 3.0))
    failed = "T~350_schedule~linear_train.seed~2"
    for r in rows:
        if r["network"] == failed or r["run_id"] == "T~1000_schedule~cosine_train.seed~0/ddim-25":
            r["fid"] = r["fid_std"] = None
    verdict = judge(rows, grid)
    dpm = main_effect(verdict, "sampler", "dpm-10")
    assert dpm.called and dpm.df == 7  # 11 networks in 4 settings
    ddim25 = main_effect(verdict, "sampler", "ddim-25")
    assert ddim25.df == 6 and not ddim25.called  # that network has no ddim-25
    assert len(verdict.settings) == 12
    assert headline(assess([], grid)) == ["No run has been scored yet."]


# -- a second feature space -----------------------------------------------------------------------


def two_scores(rng, fd_sampler_effect=None, **kwargs):
    """A sweep scored twice: FID as `simulate` makes it, and FD_DINOv2 on 10x its scale with
    noise of its own (another draw of the same design), its sampler effect `fd_sampler_effect`
    (FID's, by default)."""
    rows, grid = simulate(rng, **kwargs)
    fd_kwargs = {**kwargs, "sampler_effect": fd_sampler_effect or kwargs.get("sampler_effect")}
    other, _ = simulate(rng, **fd_kwargs)
    for row, twin in zip(rows, other, strict=True):
        row["fd_dinov2"], row["fd_dinov2_std"] = 10 * twin["fid"], 10 * twin["fid_std"]
    return rows, grid


def _agreement_of(rows, grid, axis="sampler", level="dpm-10"):
    first, second = judge(rows, grid), judge(rows, grid, metric="fd_dinov2")
    pairs = agreement(first, second)
    return next(p for p in pairs if (p.axis, p.level) == (axis, level)), first, second


def test_report_metric_ranks_and_tests_by_the_score_it_names():
    """The verdict on FD_DINOv2 is the verdict on FID's design with FD_DINOv2's numbers: its
    settings' means are theirs, its effects are on their scale, its headline names it."""
    rng = np.random.default_rng(7)
    rows, grid = two_scores(rng, sampler_effect=(0.0, 0.0, 3.0), fd_sampler_effect=(0.0, 0.0, -3.0))
    by_fid, by_fd = judge(rows, grid), judge(rows, grid, metric="fd_dinov2")
    for setting in by_fd.settings:
        assert setting.mean == pytest.approx(np.mean([r["fd_dinov2"] for r in setting.runs]))
    assert main_effect(by_fid, "sampler", "dpm-10").estimate > 0
    assert main_effect(by_fd, "sampler", "dpm-10").estimate < -10, "FD's scale, FD's sign"
    assert by_fid.best.get("sampler") != "dpm-10" and by_fd.best.get("sampler") == "dpm-10"
    assert headline(by_fd)[0].startswith("Lowest FD_DINOv2: ")
    assert by_fd.label == "FD_DINOv2" and by_fid.label == "FID"


def test_two_scores_that_measure_one_truth_agree_and_opposite_truths_are_shown_to_disagree():
    """Counted over simulated sweeps: with no true effect, the two verdicts call an effect in
    opposite directions in under 1% of sweeps (each calls at most 5% falsely); with one effect
    of 3 sampling sigmas in both, they agree on it in at least 80%; with opposite true effects,
    the table says they disagree in at least 80%, and the sentence names the effect."""
    rng = np.random.default_rng(8)
    n = 120
    clash = sum(_agreement_of(*two_scores(rng))[0].words.startswith("disagree") for _ in range(n))
    assert rate(clash, n) <= 0.01 + margin(0.01, n)
    effect = (0.0, 0.0, 3.0)
    agree = sum(
        _agreement_of(*two_scores(rng, sampler_effect=effect))[0].words == "agree" for _ in range(n)
    )
    assert rate(agree, n) >= 0.8, rate(agree, n)
    opposite, sentence = 0, ""
    for _ in range(n):
        rows, grid = two_scores(rng, sampler_effect=effect, fd_sampler_effect=(0.0, 0.0, -3.0))
        pair, first, second = _agreement_of(rows, grid)
        opposite += pair.words.startswith("disagree")
        if pair.words.startswith("disagree"):
            sentence = agreement_sentence(agreement(first, second), first, second)
    assert rate(opposite, n) >= 0.8, rate(opposite, n)
    assert "sampler = dpm-10 in opposite directions" in sentence

"""The HTML report, from fabricated run folders: contents, embedding, failed runs, a browser."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT

from ddpm.data.artefacts import LOG_FIELDS
from ddpm.data.preprocess import preprocess
from ddpm.pipeline.config import config_from_dict
from ddpm.pipeline.stages import plan
from ddpm.report.report import SAMPLER_STYLES, build_report, cost_figure, log_ticks
from ddpm.report.summary import write_summary
from ddpm.sampling.images import save_grid

ARTIFACTS = Path(
    os.environ.get("DDPM_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)


CONFIG = {
    "grid": {"T": [20, 30, 40]},
    "data": {"source": "synthetic", "synthetic_count": 24, "image_size": 16},
    "model": {"preset": "tiny"},
    "report": {"grid_images": 9, "memorisation_samples": 2, "nearest_neighbours": 2},
}


def make_config():
    return config_from_dict(CONFIG)


def fabricate_run(
    run_dir: Path, seed: int, with_metrics: bool = True, variants: dict | None = None
) -> dict:
    """A trained network's files and, for each sampler variant (id -> network evaluations per
    image), samples and metrics; returns the metrics of the first variant."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    (run_dir / "train_summary.json").write_text(
        json.dumps(
            {
                "parameters": 1_142_083,
                "steps": 100 + seed,
                "images_seen": 3200,
                "wall_time_s": 1800.0 * seed,
                "images_per_s": 256.0,
                "final_loss": 0.05 + seed / 100,
                "device": "cpu (2 cores)",
            }
        )
    )
    with open(run_dir / "train_log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, LOG_FIELDS)
        writer.writeheader()
        for step in range(10, 110, 10):
            loss = 1.0 / step + seed / 100
            writer.writerow(
                {
                    "step": step,
                    "loss": loss,
                    "loss_q1": 2 * loss,
                    "loss_q2": loss,
                    "loss_q3": loss / 2,
                    "loss_q4": loss / 3,
                    "lr": 1e-3,
                    "grad_norm": 1.0,
                    "images_per_s": 250.0,
                    "elapsed_s": step / 10,
                }
            )
    first = None
    # Without a sampler axis in the grid, each network has one variant, `default`.
    for variant, nfe in (variants or {"default": 10}).items():
        variant_dir = run_dir / variant
        variant_dir.mkdir()
        summary = {"nfe_per_image": nfe, "images_per_s": 1000 / nfe, "elapsed_s": 0.012 * nfe}
        (variant_dir / "sample_summary.json").write_text(json.dumps(summary))
        images = rng.integers(0, 255, (12, 3, 16, 16), dtype=np.uint8)
        np.savez(variant_dir / "samples.npz", images=images)
        save_grid(images[:6], variant_dir / "trajectory.png", nrow=3)
        metrics = {
            "fid": 40.0 + 10 * seed + 100 / nfe,
            "fid_std": 2.0,
            "is_mean": 1.5 + seed / 10,
            "is_std": 0.1,
            "kid_mean": 0.01 * seed,
            "kid_std": 0.002,
            "n_generated": 12,
            "floor_fid": 3.0,
            # fidelity up and diversity down with the seed's number: 0.6 / 0.5 at seed 1
            "precision": 0.5 + seed / 10,
            "precision_std": 0.05,
            "recall": 0.6 - seed / 10,
            "recall_std": 0.04,
            "density": 0.9,
            "density_std": 0.1,
            "coverage": 0.7,
            "coverage_std": 0.03,
        }
        if with_metrics:
            (variant_dir / "metrics.json").write_text(json.dumps(metrics))
            (variant_dir / "evaluation.json").write_text(
                json.dumps({"fid_reliable": False, "test_weights": True})
            )
        first = first or metrics
    return first


class Checker(HTMLParser):
    """Collects <img> sources and checks that every non-void tag is closed in order."""

    VOID = {"meta", "img", "br", "hr", "input", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    cfg = make_config()
    data = root / "data.npy"
    preprocess(cfg.data, data, bars=False)
    metrics = {
        "T~20": fabricate_run(root / "runs/T~20", 1),
        "T~30": fabricate_run(root / "runs/T~30", 2),
        "T~40": fabricate_run(root / "runs/T~40", 3, with_metrics=False),
    }
    out = root / "report.html"
    context = build_report(cfg, root / "runs", out, data_path=data)
    return out, out.read_text(), metrics, context


def test_every_run_appears_with_its_metrics(report):
    _, html, metrics, context = report
    for run_id in ("T~20", "T~30", "T~40"):
        assert f'data-run="{run_id}"' in html
    rows = {r["run_id"]: r for r in context["rows"]}
    for run_id in ("T~20", "T~30"):
        m = metrics[run_id]
        assert rows[run_id]["fid"] == m["fid"] and rows[run_id]["kid_mean"] == m["kid_mean"]
    # The cells as a reader sees them, written out (FID 60 and 70, IS 1.6 and 1.7, +- 2 and 0.1).
    for run_id, fid, inception in (("T~20", "60", "1.6"), ("T~30", "70", "1.7")):
        row_html = html.split(f'data-run="{run_id}"')[1].split("</tr>")[0]
        assert f'data-value="{fid}.0">{fid} &plusmn; 2<' in row_html
        assert f"{inception} &plusmn; 0.1<" in row_html
    # KID and IS speak of settings with their error, as FID does (one seed: the run's own ±)
    assert context["best"][0] == {"metric": "KID", "setting": "T = 20", "value": "0.0100 ± 0.0020"}
    # 60 +- 2 and 70 +- 2 differ by 3.5 standard deviations of the difference: told apart.
    verdict = html.split('<ul id="verdict">')[1].split("</ul>")[0]
    assert (
        "<li>Lowest FID: T = 20 (60.0 ± 2.0). Every other setting is distinguishably worse.</li>"
        in (verdict)
    )
    assert "not distinguishable" not in html


def test_precision_and_recall_are_shown_per_run_per_setting_and_by_effect(report):
    """Fidelity and diversity apart: each run's four scores with their ±, each setting's, and
    which way each level moves precision and recall in the effects table."""
    _, html, _, context = report
    row_html = html.split('data-run="T~20"')[1].split("</tr>")[0]
    assert '<td class="precision" data-value="0.6">0.6 &plusmn; 0.05</td>' in row_html
    assert '<td class="recall" data-value="0.5">0.5 &plusmn; 0.04</td>' in row_html
    table = html.split('id="fidelity-table"')[1].split("</table>")[0]
    assert "<td>T = 20</td>" in table and '<td class="precision">0.600 ± 0.050</td>' in table
    assert '<td class="coverage">0.700 ± 0.030</td>' in table
    effects = html.split('<table id="effects">')[1].split("</table>")[0]
    t30 = effects.split('data-axis="T" data-level="30"')[1].split("</tr>")[0]
    assert '<td class="moves">+0.10, -0.10</td>' in t30
    assert [f["setting"] for f in context["fidelity"]] == ["T = 20", "T = 30"]


def test_the_summary_table_and_dvcs_metrics_file_hold_every_run(report, tmp_path):
    """summary.csv has a row for every run, scored or not; metrics.json, the file DVC shows,
    holds the four headline numbers of each scored run and nothing else (numbers only)."""
    out, _, metrics, _ = report
    table, scores = tmp_path / "summary.csv", tmp_path / "metrics.json"
    write_summary(make_config(), out.parent / "runs", table, scores)
    rows = {r["run_id"]: r for r in csv.DictReader(table.read_text().splitlines())}
    assert set(rows) == {"T~20", "T~30", "T~40"} and rows["T~40"]["status"] == "missing metrics"
    assert json.loads(scores.read_text()) == {
        run_id: {k: metrics[run_id][k] for k in ("fid", "fid_std", "kid_mean", "is_mean")}
        for run_id in ("T~20", "T~30")
    }


def test_images_are_embedded_and_the_html_parses(report):
    _, html, _, _ = report
    checker = Checker()
    checker.feed(html)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    assert len(checker.images) >= 10
    assert all(img["src"].startswith("data:image/png;base64,") for img in checker.images)
    for external in ('src="http', "src='http", 'href="http', "url(http", "<link", "@import"):
        assert external not in html, f"the report must not load {external}..."


def test_missing_metrics_are_shown_as_failed_and_test_weights_flagged(report):
    _, html, _, context = report
    row_html = html.split('data-run="T~40"')[1].split("</tr>")[0]
    assert (
        "missing metrics" in row_html and 'class="failed"' in html.split('data-run="T~40"')[0][-40:]
    )
    assert 'id="failed-runs"' in html and "<code>T~40</code>" in html
    assert 'id="test-weights-banner"' in html and "not comparable with published" in html
    # T=20 with the fixed-range linear schedule ends far from pure noise: its alpha_bar_T cell
    # carries the warning (the legend above the table shows the symbol whatever the rows).
    assert context["rows"][0]["far_from_noise"]
    cell = html.split('data-run="T~20"')[1].split('class="alpha"')[1].split("</td>")[0]
    assert 'class="warn" title="sampling starts far from pure noise"' in cell


def test_the_report_works_for_a_single_run(tmp_path):
    cfg = config_from_dict(
        {"data": {"source": "synthetic", "image_size": 16}, "model": {"preset": "tiny"}}
    )
    fabricate_run(tmp_path / "runs/default", 1)
    context = build_report(cfg, tmp_path / "runs", tmp_path / "r.html")
    assert [r["run_id"] for r in context["rows"]] == ["default"]
    assert context["rows"][0]["memorisation"] is None  # no training data given


def test_the_memorisation_check_finds_a_copied_training_image_without_torch(tmp_path):
    """A sample that is a training image is shown beside it at distance 0, one a pixel away at
    that pixel's distance; and the report job never imports torch (most of a short job's time)."""
    data = tmp_path / "data.npy"
    preprocess(make_config().data, data, bars=False)
    train = np.load(data)
    fabricate_run(tmp_path / "runs/T~20", 1)
    copy, near = train[5].copy(), train[9].copy()
    near[1, 3, 4] = near[1, 3, 4] + 51 if near[1, 3, 4] < 128 else near[1, 3, 4] - 51
    np.savez(tmp_path / "runs/T~20/default/samples.npz", images=np.stack([copy, near, copy]))
    code = (
        "import json, sys\n"
        "from ddpm.pipeline.config import config_from_dict\n"
        "from ddpm.report.report import build_report\n"
        f"c = build_report(config_from_dict({CONFIG!r}), {str(tmp_path / 'runs')!r}, "
        f"{str(tmp_path / 'r.html')!r}, data_path={str(data)!r})\n"
        "print(json.dumps([c['rows'][0]['memorisation']['distances'], 'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    distances, imported_torch = json.loads(out.stdout.splitlines()[-1])
    assert not imported_torch
    assert distances[0][0] == 0.0 and distances[0][1] > 0  # two neighbours each, nearest first
    assert distances[1][0] == pytest.approx(51 / 255) and distances[1][1] >= distances[1][0]


@pytest.mark.parametrize("objective, flagged", [("eps", True), ("v", False)])
def test_eps_prediction_with_alpha_bar_T_near_zero_is_flagged(tmp_path, objective, flagged):
    """Cosine at T = 400 ends at alpha_bar_T ~ 1.5e-8: fine for v-prediction, a warning for eps."""
    cfg = config_from_dict(
        {
            "data": {"source": "synthetic", "image_size": 16},
            "model": {"preset": "tiny"},
            "diffusion": {"T": 400, "schedule": "cosine", "objective": objective},
        }
    )
    fabricate_run(tmp_path / "runs/default", 1)
    context = build_report(cfg, tmp_path / "runs", tmp_path / "r.html")
    row = context["rows"][0]
    assert row["alpha_bar_T"] < 1e-7 and not row["far_from_noise"]
    assert row["eps_at_zero"] is flagged
    cell = (tmp_path / "r.html").read_text().split('data-run="default"')[1].split("</tr>")[0]
    assert ("amplifies the network's error" in cell) is flagged
    assert ('class="warn"' in cell) is flagged  # cosine ends near pure noise: no other warning


def test_fids_within_their_noise_are_called_indistinguishable(tmp_path):
    cfg = config_from_dict(
        {
            "grid": {"T": [20, 30, 40]},
            "data": {"source": "synthetic", "image_size": 16},
            "model": {"preset": "tiny"},
        }
    )
    for seed, network in enumerate(("T~20", "T~30", "T~40"), start=1):
        fabricate_run(tmp_path / "runs" / network, seed)
    # FIDs 60, 70, 80 +- 2; make T~30's noisier: 70 +- 5 is within 2 sigma of 60 +- 2
    # (difference 10 <= 2 * 5.39), T~40's 80 +- 2 is not (20 > 2 * 2.83).
    metrics_file = tmp_path / "runs/T~30/default/metrics.json"
    metrics_file.write_text(json.dumps({**json.loads(metrics_file.read_text()), "fid_std": 5.0}))
    context = build_report(cfg, tmp_path / "runs", tmp_path / "r.html")
    assert context["headline"][0] == (
        "Lowest FID: T = 20 (60.0 ± 2.0). Setting against setting, 1 other(s) are not "
        "distinguishable from it at the family-wise level: T = 30."
    )
    effects = (tmp_path / "r.html").read_text().split('id="effects"')[1].split("</table>")[0]
    rows = {r.split('data-level="')[1].split('"')[0]: r for r in effects.split("<tr ")[1:]}
    # No seeds: the sampling noise of the difference, sqrt(2^2 + 5^2) = 5.4 and 2.8, normal
    assert "not distinguishable" in rows["30"] and "+10.0 ± 5.4" in rows["30"]
    assert ">worse<" in rows["40"] and "+20.0 ± 2.8" in rows["40"]
    assert "sampling noise only" in rows["40"]


def test_flower_features_are_named_as_such_not_as_random_weights(tmp_path):
    cfg = config_from_dict(
        {"data": {"source": "synthetic", "image_size": 16}, "model": {"preset": "tiny"}}
    )
    fabricate_run(tmp_path / "runs/default", 1)
    evaluation = {"fid_reliable": True, "test_weights": False, "features": "synthetic-features"}
    (tmp_path / "runs/default/default/evaluation.json").write_text(json.dumps(evaluation))
    build_report(cfg, tmp_path / "runs", tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    banner = html.split('id="flower-features-banner"')[1].split("</div>")[0]
    assert "generating\nattributes" in banner and "not comparable with published" in banner
    assert 'id="test-weights-banner"' not in html


def test_the_seeds_setting_is_named_with_its_alpha_bar_T(tmp_path):
    cfg = config_from_dict(
        {
            "grid": {"T": [20, 350]},
            "data": {"source": "synthetic", "image_size": 16},
            "model": {"preset": "tiny"},
        }
    )
    fabricate_run(tmp_path / "runs/T~20", 1)
    fabricate_run(tmp_path / "runs/T~350", 2)
    context = build_report(cfg, tmp_path / "runs", tmp_path / "r.html")
    assert [r["seed_setting"] for r in context["rows"]] == [False, True]
    html = (tmp_path / "r.html").read_text()
    assert "(seed's setting)" in html.split('data-run="T~350"')[1].split("</td>")[0]
    assert "(seed's setting)" not in html.split('data-run="T~20"')[1].split("</td>")[0]
    seed = html.split('id="seed-setting"')[1].split("</p>")[0]
    assert "alpha_bar_T = 0.02898" in seed and "keeps\n17% of the image" in seed


def test_sampler_variants_compare_quality_against_cost(tmp_path):
    """Two networks, each sampled with DDIM at 5 and 10 steps: FID against network evaluations
    with the best at each budget, and what each network cost to train."""
    cfg = config_from_dict(
        {
            "grid": {"T": [20, 30], "sample.steps": [5, 10]},
            "data": {"source": "synthetic", "image_size": 16},
            "model": {"preset": "tiny"},
            "sample": {"method": "ddim"},
        }
    )
    variants = {"sample.steps~5": 5, "sample.steps~10": 10}
    fabricate_run(tmp_path / "runs/T~20", 2, variants=variants)  # FID 80 at 5 steps, 70 at 10
    fabricate_run(tmp_path / "runs/T~30", 1, variants=variants)  # FID 70 at 5 steps, 60 at 10
    metrics_file = tmp_path / "runs/T~20/sample.steps~10/metrics.json"
    metrics_file.write_text(json.dumps({**json.loads(metrics_file.read_text()), "fid": 55.0}))
    context = build_report(cfg, tmp_path / "runs", tmp_path / "r.html")
    budgets = {nfe: b["best"]["run_id"] for nfe, b in context["budgets"].items()}
    assert budgets == {5: "T~30/sample.steps~5", 10: "T~20/sample.steps~10"}
    html = (tmp_path / "r.html").read_text()
    at = {int(li.split()[0]): li for li in html.split('<li class="budget">At ')[1:]}
    # 70 +- 2 against 80 +- 2: told apart; 55 +- 2 against 60 +- 2: 5 < 2 x 2.83, not.
    assert "the best FID is <strong>T~30/sample.steps~5</strong> (70 &plusmn; 2)" in at[5]
    assert "ahead of T~20/sample.steps~5 (80 &plusmn; 2) by 10</li>" in at[5]
    assert "ahead of T~30/sample.steps~10 (60 &plusmn; 2) by 5, " in at[10]
    assert "within the noise" in at[10] and "within the noise" not in at[5]
    assert 'alt="FID against sampling cost"' in html and context["plots"]["cost"]
    assert [r["sample_s_per_1000"] for r in context["rows"]][:2] == [10.0, 5.0]
    costs = {c["network"]: (c["hours"], c["unit"]) for c in context["costs"]}
    assert costs == {"T~20": (1.0, "hours (CPU)"), "T~30": (0.5, "hours (CPU)")}


def test_each_sampler_is_a_line_style_and_budgets_compare_across_samplers(tmp_path):
    """DDIM at 5 and 10 calls and DPM-Solver++(2M) at 5 for two networks: one line per
    (network, sampler), a colour per network and a style per sampler, and the best at 5 calls
    is chosen among both samplers of both networks."""
    sampler = [
        {"method": "ddim", "sample.steps": 5},
        {"method": "ddim", "sample.steps": 10},
        {"method": "dpmpp-2m", "sample.steps": 5},
    ]
    cfg = config_from_dict(
        {
            "grid": {"T": [20, 30], "sampler": sampler},
            "data": {"source": "synthetic", "image_size": 16},
            "model": {"preset": "tiny"},
        }
    )
    variants = {"sampler~ddim-5": 5, "sampler~ddim-10": 10, "sampler~dpmpp-2m-5": 5}
    fabricate_run(tmp_path / "runs/T~20", 2, variants=variants)
    fabricate_run(tmp_path / "runs/T~30", 1, variants=variants)  # FID 70 at both 5-call runs
    metrics_file = tmp_path / "runs/T~30/sampler~dpmpp-2m-5/metrics.json"
    metrics_file.write_text(json.dumps({**json.loads(metrics_file.read_text()), "fid": 58.0}))
    context = build_report(cfg, tmp_path / "runs", tmp_path / "r.html")
    best = context["budgets"][5]
    assert best["best"]["run_id"] == "T~30/sampler~dpmpp-2m-5"
    assert best["second"]["run_id"] == "T~30/sampler~ddim-5" and best["margin"] == 12.0

    costed = [r for r in context["rows"] if r.get("nfe_per_image")]
    fig = cost_figure(costed, context["budgets"])
    lines = {bars.get_label(): bars.lines[0] for bars in fig.axes[0].containers}
    assert set(lines) == {f"T~{t}, {m}" for t in (20, 30) for m in ("ddim", "dpmpp-2m")}
    for label, line in lines.items():
        network, method = label.split(", ")
        assert (line.get_linestyle(), line.get_marker()) == SAMPLER_STYLES[method]
        assert line.get_color() == lines[f"{network}, ddim"].get_color()
        assert len(line.get_xdata()) == (2 if method == "ddim" else 1)
    assert lines["T~20, ddim"].get_color() != lines["T~30, ddim"].get_color()


def _browser(size: str = "1280,2000"):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        message = "chromium and chromium-driver (Debian packages) are not installed"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run must install them")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={size}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.slow
def test_a_real_browser_renders_it_without_errors(report):
    path, _, _, _ = report
    browser = _browser()
    try:
        browser.get(path.as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);"
        )
        assert images and all(done and width > 0 for done, width in images), images
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        # sorting: click the FID header twice (ascending, then descending)
        header = browser.execute_script(
            "return Array.from(document.querySelectorAll('#runs th'))"
            ".findIndex(th => th.textContent === 'FID');"
        )
        th = browser.find_elements("css selector", "#runs th")[header]
        order = (
            "return Array.from(document.querySelectorAll('#runs tbody tr'))"
            ".map(r => r.dataset.run);"
        )
        th.click()
        assert browser.execute_script(order) == ["T~20", "T~30", "T~40"]
        th.click()
        assert browser.execute_script(order)[:2] == ["T~30", "T~20"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "report.png"))
    finally:
        browser.quit()


def test_log_ticks_label_a_range_narrower_than_a_decade():
    """The sampling-time axis had no numbers when every run took between 2.1 and 4.5 s."""
    assert log_ticks([2.1, 3.0, 4.5]) == [2.1, 3.1, 4.5]
    assert log_ticks([0.3, 40.0]) == [0.5, 1.0, 2.0, 5.0, 10.0, 20.0]


SWEEP = {
    "T": [350, 1000],
    "schedule": ["linear", "cosine"],
    "sampler": [
        {"method": "ddpm"},
        {"method": "ddim", "sample.steps": 10},
        {"method": "ddim", "sample.steps": 25},
        {"method": "ddim", "sample.steps": 50},
        {"method": "ddim", "sample.steps": 100},
    ],
    "train.seed": [0, 1],
}


def fabricate_sweep(
    root: Path, grid: dict, fid, network_extra=None, scores=None, report=None
) -> tuple[Path, dict]:
    """Every network and sampler variant of `grid`, fabricated, with FID `fid(network params,
    network evaluations per image)` and a sampling ± of 0.3, the other scores
    `scores(network params, nfe)` gives, and what `network_extra(network, folder)` adds; the
    report built over them, with the `report` settings given."""
    cfg = config_from_dict(
        {
            "grid": grid,
            "data": {"source": "synthetic", "synthetic_count": 24, "image_size": 16},
            "model": {"preset": "tiny"},
            "report": {
                "grid_images": 9,
                "memorisation_samples": 2,
                "nearest_neighbours": 2,
                **(report or {}),
            },
        }
    )
    the_plan = plan(cfg)
    for i, network in enumerate(the_plan.networks):
        variants = {
            v.id: v.config.diffusion.T
            if v.config.sample.method == "ddpm"
            else v.config.sample.steps
            for v in the_plan.variants
            if v.network == network.id
        }
        fabricate_run(root / "runs" / network.id, i + 1, variants=variants)
        if network_extra:
            network_extra(network, root / "runs" / network.id)
        for variant, nfe in variants.items():
            path = root / "runs" / network.id / variant / "metrics.json"
            made = {"fid": fid(network.params, nfe), "fid_std": 0.3}
            made |= scores(network.params, nfe) if scores else {}
            path.write_text(json.dumps({**json.loads(path.read_text()), **made}))
    data = root / "data.npy"
    preprocess(cfg.data, data, bars=False)
    out = root / "report.html"
    return out, build_report(cfg, root / "runs", out, data_path=data)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The real config's shape with two training seeds: 4 settings x 5 samplers x 2 seeds, from
    fabricated files. Cosine is 10 better at T = 350 and ties at T = 1000; the seeds differ by 6;
    fewer sampling steps cost 20 / steps (0.2 to 2), and each FID has its own sampling noise (sd
    0.3, seeded). FID over training: the cosine networks still improve at the end."""
    noise = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("sweep")

    def fid(p, nfe):
        base = 60.0 - (10.0 if (p["schedule"], p["T"]) == ("cosine", 350) else 0.0)
        base -= 15.0 if p["T"] == 1000 else 0.0
        return base + 6.0 * p["train.seed"] + 20.0 / min(nfe, 100) + noise.normal(0, 0.3)

    def progress(network, folder):
        last = [70.0, 62.0] if network.params["schedule"] == "cosine" else [70.0, 69.0]
        points = [
            {"step": s, "images_seen": 32 * s, "fid": f, "fid_std": 1.0, "n_images": 100}
            for s, f in zip((100, 200, 300), [90.0, *last], strict=True)
        ]
        document = {"network": network.id, "points": points}
        (folder / "progress.json").write_text(json.dumps(document))

    return fabricate_sweep(root, SWEEP, fid, progress)


@pytest.fixture(scope="module")
def real_config_sweep(tmp_path_factory):
    """config/config.yaml's own grid (4 networks x 7 samplers, no seeds), fabricated."""
    grid = yaml.safe_load((ROOT / "config/config.yaml").read_text())["grid"]
    noise = np.random.default_rng(6)

    def fid(p, nfe):
        return 40.0 - (5.0 if p["T"] == 1000 else 0.0) + 30.0 / nfe + noise.normal(0, 0.3)

    return fabricate_sweep(tmp_path_factory.mktemp("real"), grid, fid)


def test_a_sweep_with_seeds_is_judged_by_setting(sweep):
    out, context = sweep
    verdict = context["verdict"]
    assert len(context["rows"]) == 40 and len(verdict.settings) == 20
    assert all(s.n == 2 and s.source == "training seeds" for s in verdict.settings)
    # Seeds 6 apart: a variance of about 18 in each cell, pooled over the 4 training settings
    # (4 degrees of freedom); each mean's standard error is about sqrt(18 / 2) = 3.
    assert all(s.se == pytest.approx(3.0, abs=0.3) and s.df == 4 for s in verdict.settings)
    # The best at each sampling budget is a setting (its seeds' mean), never one seed's run.
    at_100 = context["budgets"][100]
    assert at_100["best"]["run_id"].startswith("T~1000_schedule~")
    assert at_100["best"]["run_id"].endswith("_sampler~ddim-100 (2 seeds)") and at_100["tied"]
    html = out.read_text()
    verdict_html = html.split('<ul id="verdict">')[1].split("</ul>")[0]
    # The sampler is compared within networks: DDIM-10 costs 1.8 FID in every network, and the
    # paired differences vary by the cells' noise (0.3) alone, not by the seeds' 6.
    assert "<li>sampler (paired within networks), against ddpm, averaged over the other" in (
        verdict_html
    )
    assert re.search(r"ddim-10 \+1\.\d\d ± 0\.\d\d \(worse, p = [\d.e-]+ family-wise\)", html)
    # The training axes between networks, on the seeds' spread: T = 1000's 10 FID (± 3, t on 4
    # degrees of freedom) is not enough after the correction for 15 effect tests; the verdict
    # says how many seeds would be.
    assert "<li>T (between networks), against 350, averaged over the other settings: 1000 -9." in (
        verdict_html
    )
    assert re.search(
        r"not distinguishable; 95% interval -1\d\.\d to -\d\.\d\)\. "
        r"Undecided: about \d+ seeds per setting",
        html,
    )
    assert (
        "Claims above hold together at 5% family-wise error: Holm over 15 effect tests (6 main"
        " effects, 9 interaction tests) and the best against 19 other settings (Bonferroni over"
        " all pairs), each at 2.5%." in verdict_html
    )
    settings = html.split('id="settings"')[1].split("</table>")[0]
    assert settings.count("<tr>") == 21 and "training seeds" in settings
    effects = html.split('id="effects"')[1].split("</table>")[0]
    assert effects.count('data-kind="main"') == 6
    # One card per network, its other four variants one click away.
    assert html.count('class="card network"') == 8 and html.count('class="variant"') == 32
    assert context["plots"]["effects"] and 'alt="FID by each setting"' in html
    assert context["plots"]["progress"] and 'alt="FID over training"' in html
    states = html.split('<ul id="convergence">')[1].split("</ul>")[0].count
    assert states('data-state="improving"') == 4
    assert "<li>FID was still improving at the end of training for 4 of 8 networks" in verdict_html


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["sweep", "real_config_sweep"])
def test_the_verdict_is_on_the_first_screen_of_a_large_sweep(request, shape):
    """4 x 5 samplers x 2 seeds, and the real config's grid (7 samplers, no seeds), in a 1400 x
    900 window: the verdict box ends on the first screen and the effects table fits."""
    out, _ = request.getfixturevalue(shape)
    browser = _browser("1400,900")
    try:
        browser.get(out.as_uri())
        box = browser.execute_script(
            "return document.getElementById('verdict-box').getBoundingClientRect().bottom;"
        )
        inner = browser.execute_script("return window.innerHeight;")
        assert 0 < box <= inner, (box, inner)
        # The effects table fits the window: no column (the design, last) is cut off.
        table = browser.execute_script(
            "const t = document.getElementById('effects');"
            "return [t.getBoundingClientRect().right, t.parentElement.clientWidth,"
            " t.parentElement.scrollWidth];"
        )
        right, visible, full = table
        assert full <= visible and right <= 1400, table
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);"
        )
        assert images and all(done and width > 0 for done, width in images), images
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / f"report-{shape}.png"))
    finally:
        browser.quit()


@pytest.mark.parametrize("metric", ["fid", "fd_dinov2"])
def test_fid_and_fd_dinov2_are_compared_and_report_metric_ranks(tmp_path, metric):
    """T = 1000 is 10 better by FID and 100 worse by FD_DINOv2 (each far beyond its noise): the
    report shows FD_DINOv2 per run, says the two call T in opposite directions, and ranks by
    report.metric."""
    noise = np.random.default_rng(9)

    def fid(p, nfe):
        return 50.0 - (10.0 if p["T"] == 1000 else 0.0) + noise.normal(0, 0.3)

    def fd(p, nfe):
        value = 500.0 + (100.0 if p["T"] == 1000 else 0.0) + noise.normal(0, 3.0)
        return {"fd_dinov2": value, "fd_dinov2_std": 3.0, "floor_fd_dinov2": 20.0}

    grid = {"T": [350, 1000], "train.seed": [0, 1, 2]}
    out, context = fabricate_sweep(tmp_path, grid, fid, scores=fd, report={"metric": metric})
    html = out.read_text()
    sentence = context["agreement"]["sentence"]
    assert "call T = 1000 in opposite directions" in sentence and sentence in html
    assert context["headline"][1] == sentence
    best = "T = 1000" if metric == "fid" else "T = 350"
    label = {"fid": "FID", "fd_dinov2": "FD_DINOv2"}[metric]
    assert context["headline"][0].startswith(f"Lowest {label}: {best} (")
    assert context["verdict"].metric == metric
    cells = re.findall(r'<td class="fd_dinov2" data-value="([0-9.]+)"', html)
    assert len(cells) == 6 and all(450 < float(v) < 650 for v in cells)
    row = re.search(r'<tr data-axis="T" data-level="1000"><td>T = 1000</td>.*?</tr>', html, re.S)
    assert row and "disagree" in row.group(0)
    assert f"<th>&Delta; {label}</th>" in html


def test_without_fd_dinov2_the_report_has_no_comparison_of_feature_spaces(report):
    _, html, _, context = report
    assert context["agreement"] is None
    assert 'id="agreement"' not in html and "<th>FD_DINOv2</th>" not in html

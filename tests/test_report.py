"""The HTML report, from fabricated run folders: contents, embedding, failed runs, a browser."""

import csv
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from ddpm.config import config_from_dict
from ddpm.data import preprocess
from ddpm.images import save_grid
from ddpm.report import _fmt, build_report
from ddpm.train import LOG_FIELDS

ARTIFACTS = Path(
    os.environ.get("DDPM_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts")
)


def make_config():
    return config_from_dict(
        {
            "grid": {"T": [20, 30, 40]},
            "data": {"source": "synthetic", "synthetic_count": 24, "image_size": 16},
            "model": {"preset": "tiny"},
            "report": {"grid_images": 9, "memorisation_samples": 2, "nearest_neighbours": 2},
        }
    )


def fabricate_run(run_dir: Path, seed: int, with_metrics: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    (run_dir / "train_summary.json").write_text(
        json.dumps(
            {
                "parameters": 1_142_083,
                "steps": 100 + seed,
                "images_seen": 3200,
                "wall_time_s": 12.5,
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
    variant_dir = run_dir / "default"  # the grid has no sampler axis: one variant per network
    variant_dir.mkdir()
    (variant_dir / "sample_summary.json").write_text(json.dumps({"nfe_per_image": 10}))
    images = rng.integers(0, 255, (12, 3, 16, 16), dtype=np.uint8)
    np.savez(variant_dir / "samples.npz", images=images)
    save_grid(images[:6], variant_dir / "trajectory.png", nrow=3)
    metrics = {
        "fid": 40.0 + 10 * seed,
        "is_mean": 1.5 + seed / 10,
        "is_std": 0.1,
        "kid_mean": 0.01 * seed,
        "kid_std": 0.002,
        "n_generated": 12,
        "floor_fid": 3.0,
    }
    if with_metrics:
        (variant_dir / "metrics.json").write_text(json.dumps(metrics))
        (variant_dir / "evaluation.json").write_text(
            json.dumps({"fid_reliable": False, "test_weights": True})
        )
    return metrics


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
    preprocess(cfg.data, data, progress=False)
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
        row_html = html.split(f'data-run="{run_id}"')[1].split("</tr>")[0]
        assert f'data-value="{m["fid"]}">{_fmt(m["fid"])}' in row_html
        assert f"{_fmt(m['is_mean'])} &plusmn; {_fmt(m['is_std'])}" in row_html
    assert context["best"][0] == {"metric": "FID", "run_id": "T~20", "value": 50.0}


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
    # T=20 with the fixed-range linear schedule ends far from pure noise
    assert context["rows"][0]["far_from_noise"] and "&#9888;" in html


def test_the_report_works_for_a_single_run(tmp_path):
    cfg = config_from_dict(
        {"data": {"source": "synthetic", "image_size": 16}, "model": {"preset": "tiny"}}
    )
    fabricate_run(tmp_path / "runs/default", 1)
    context = build_report(cfg, tmp_path / "runs", tmp_path / "r.html")
    assert [r["run_id"] for r in context["rows"]] == ["default"]
    assert context["rows"][0]["memorisation"] is None  # no training data given


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


def _browser():
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
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000"):
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

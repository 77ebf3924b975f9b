"""Every stage either gives the right result or a clear refusal. Each case feeds one bad input to
a stage through the command line (`ddpm.cli.main`, what `python -m ddpm` runs) and checks: a
non-zero exit, one `error:` line naming the culprit, no traceback, and no output left behind."""

import contextlib
import fcntl
import http.server
import io
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SCORED_CONFIG, SCORED_NETWORK, small_disk
from PIL import Image

from ddpm.cli import main
from ddpm.data.artefacts import write_samples
from ddpm.data.preprocess import preprocess
from ddpm.pipeline.config import config_from_dict

NETWORK, CONFIG = SCORED_NETWORK, SCORED_CONFIG


@pytest.fixture
def good(scored):
    """Valid inputs for every stage: config, dataset, trained network, weights, reference,
    samples. Cases copy what they break."""
    return scored


def _jpeg(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def _corrupt_mid_stream(data: bytes) -> bytes:
    """Overwrite bytes in the middle of the entropy-coded data (not a truncation)."""
    bad = bytearray(data)
    mid = len(bad) // 2
    bad[mid : mid + 40] = bytes(0xFF if k % 2 else 0x00 for k in range(40))
    return bytes(bad)


def _images(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        (folder / f"ok{i}.jpg").write_bytes(_jpeg(rng.integers(0, 255, (40, 50, 3), np.uint8)))
    return folder


def _config(tmp, **sections) -> Path:
    cfg = json.loads(json.dumps(CONFIG))
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "c.yaml"


class Server:
    """Serves bytes on 127.0.0.1; `cut` sends only the first half and closes the connection."""

    def __init__(self, payload: bytes, cut: bool):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2] if cut else payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/w.pth"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


# Each case: (what it builds in a fresh folder -> (argv, culprit named in the message, paths that
# must not exist afterwards)).
def case_empty_config(g, t):
    (t / "c.yaml").write_text("")
    return ["runs", "--config", t / "c.yaml"], "is empty", []


def case_config_not_yaml(g, t):
    (t / "c.yaml").write_text("train: [1, 2\n")
    return ["runs", "--config", t / "c.yaml"], "not valid YAML", []


def case_config_is_a_list(g, t):
    (t / "c.yaml").write_text("- a\n- b\n")
    return ["runs", "--config", t / "c.yaml"], "must be a mapping", []


def case_float_written_as_text(g, t):
    return ["runs", "--config", _config(t, train={"lr": "1e-4"})], "train.lr", []


def case_old_schedule_name(g, t):
    return (
        ["runs", "--config", _config(t, diffusion={"schedule": "scaled_linear"})],
        "rescaled_linear",
        [],
    )


def case_grid_axis_that_cannot_vary(g, t):
    return (
        ["runs", "--config", _config(t, grid={"data.image_size": [16, 32]})],
        "data.image_size",
        [],
    )


def case_set_without_value(g, t):
    return ["runs", "--config", g / "config.yaml", "--set", "train.lr"], "--set", []


def case_unknown_network(g, t):
    out = t / "run"
    argv = [
        "train",
        "--config",
        g / "config.yaml",
        "--run",
        "T~99",
        "--data",
        g / "data.npy",
        "--out",
        out,
    ]
    return argv, "T~99", [out]


def case_settings_of_another_stage(g, t):
    settings = t / "s.json"
    main(["settings", "--config", str(g / "config.yaml"), "--out", str(t / "all")])
    shutil.copy(t / f"all/sample/{NETWORK}/default.json", settings)
    out = t / "run"
    return (
        ["train", "--settings", settings, "--data", g / "data.npy", "--out", out],
        "sample",
        [out],
    )


def case_settings_not_json(g, t):
    (t / "s.json").write_text("{settings")
    out = t / "run"
    argv = ["train", "--settings", t / "s.json", "--data", g / "data.npy", "--out", out]
    return argv, "s.json", [out]


def case_settings_and_config_both(g, t):
    out = t / "run"
    argv = [
        "train",
        "--settings",
        t / "s.json",
        "--config",
        g / "config.yaml",
        "--data",
        g / "data.npy",
        "--out",
        out,
    ]
    return argv, "either --settings", [out]


def case_tune_a_setting_that_changes_results(g, t):
    out = t / "run"
    argv = [
        "train",
        "--config",
        g / "config.yaml",
        "--tune",
        "train.lr=0.1",
        "--data",
        g / "data.npy",
        "--out",
        out,
    ]
    return argv, "train.lr", [out]


def case_tune_out_of_range(g, t):
    out = t / "d.npy"
    argv = ["preprocess", "--config", g / "config.yaml", "--tune", "data.workers=-1", "--out", out]
    return argv, "data.workers", [out]


def case_missing_image_folder(g, t):
    cfg = _config(t, data={"source": "folder", "folder": str(t / "nowhere")})
    return ["preprocess", "--config", cfg, "--out", t / "d.npy"], "nowhere", [t / "d.npy"]


def case_folder_without_images(g, t):
    (t / "imgs").mkdir()
    (t / "imgs/notes.txt").write_text("no images here")
    cfg = _config(t, data={"source": "folder", "folder": str(t / "imgs")})
    return ["preprocess", "--config", cfg, "--out", t / "d.npy"], "imgs", [t / "d.npy"]


def case_jpeg_corrupted_mid_stream(g, t):
    folder = _images(t / "imgs")
    (folder / "bad.jpg").write_bytes(_corrupt_mid_stream((folder / "ok0.jpg").read_bytes()))
    cfg = _config(t, data={"source": "folder", "folder": str(folder), "workers": 1})
    return ["preprocess", "--config", cfg, "--out", t / "d.npy"], "bad.jpg", [t / "d.npy"]


def case_float_tiff(g, t):
    folder = _images(t / "imgs")
    Image.fromarray(np.ones((20, 20), np.float32)).save(folder / "float.tiff")
    cfg = _config(t, data={"source": "folder", "folder": str(folder), "workers": 1})
    return ["preprocess", "--config", cfg, "--out", t / "d.npy"], "float.tiff", [t / "d.npy"]


def _dataset_copy(g, t) -> Path:
    shutil.copy(g / "data.npy", t / "data.npy")
    shutil.copy(g / "data.json", t / "data.json")
    return t / "data.npy"


def _train(g, t, data, out=None):
    out = out or t / "run"
    return ["train", "--config", g / "config.yaml", "--data", data, "--out", out], [out]


def case_manifest_not_json(g, t):
    data = _dataset_copy(g, t)
    (t / "data.json").write_text("{not json")
    argv, outs = _train(g, t, data)
    return argv, "data.json", outs


def case_missing_dataset(g, t):
    argv, outs = _train(g, t, t / "absent.npy")
    return argv, "absent.npy", outs


def case_dataset_changed_after_preprocessing(g, t):
    data = _dataset_copy(g, t)
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    argv, outs = _train(g, t, data)
    return argv, "data.npy", outs


def case_final_pt_as_checkpoint(g, t):
    (t / "run").mkdir()
    shutil.copy(g / "run/final.pt", t / "run/checkpoint.pt")
    argv, _ = _train(g, t, g / "data.npy")
    return argv, "checkpoint.pt", [t / "run/final.pt", t / "run/train_log.csv"]


def case_checkpoint_of_garbage(g, t):
    (t / "run").mkdir()
    (t / "run/checkpoint.pt").write_bytes(b"\x00garbage" * 100)
    argv, _ = _train(g, t, g / "data.npy")
    return argv, "checkpoint.pt", [t / "run/final.pt", t / "run/train_log.csv"]


def case_out_is_a_file(g, t):
    (t / "run").write_text("a file, not a folder")
    argv, _ = _train(g, t, g / "data.npy")
    return argv, "is a file", []


def _sample(g, t, ckpt, *extra):
    out = t / "variant"
    argv = ["sample", "--config", g / "config.yaml", "--ckpt", ckpt, "--out", out, *extra]
    return argv, [out]


def case_missing_final_pt(g, t):
    argv, outs = _sample(g, t, t / "final.pt")
    return argv, "final.pt", outs


def case_checkpoint_given_as_final_pt(g, t):
    argv, outs = _sample(g, t, g / "run/checkpoint.pt")
    return argv, "checkpoint.pt", outs


def case_more_sampler_steps_than_the_network_has(g, t):
    """The config allows 500 DDIM steps (its T is 1000), but the network was trained with 20."""
    cfg = _config(t, grid={}, diffusion={"T": 1000}, sample={"steps": 500})
    out = t / "variant"
    argv = ["sample", "--config", cfg, "--ckpt", g / "run/final.pt", "--out", out]
    return argv, "sample.steps", [out]


def _evaluate(g, t, samples=None, reference=None, weights=None):
    out = t / "variant"
    argv = [
        "evaluate",
        "--config",
        g / "config.yaml",
        "--samples",
        samples or g / "samples.npz",
        "--reference",
        reference or g / "reference.pt",
        "--weights",
        weights or g / "weights.pth",
        "--out",
        out,
    ]
    return argv, [out / "metrics.json", out / "evaluation.json"]


def case_samples_of_garbage(g, t):
    (t / "s.npz").write_bytes(b"PK\x03\x04 not really a zip")
    argv, outs = _evaluate(g, t, samples=t / "s.npz")
    return argv, "s.npz", outs


def case_samples_without_images(g, t):
    np.savez(t / "s.npz", pictures=np.zeros((4, 3, 16, 16), np.uint8))
    argv, outs = _evaluate(g, t, samples=t / "s.npz")
    return argv, "no `images` array", outs


def case_float_samples_in_0_255(g, t):
    rng = np.random.default_rng(0)
    np.savez(t / "s.npz", images=(rng.random((8, 3, 16, 16)) * 255).astype(np.float32))
    argv, outs = _evaluate(g, t, samples=t / "s.npz")
    return argv, "float32", outs


def case_grey_samples(g, t):
    np.savez(t / "s.npz", images=np.zeros((8, 16, 16), np.uint8))
    argv, outs = _evaluate(g, t, samples=t / "s.npz")
    return argv, "N x 3 x H x W", outs


def case_missing_reference(g, t):
    argv, outs = _evaluate(g, t, reference=t / "nope.pt")
    return argv, "nope.pt", outs


def case_reference_of_garbage(g, t):
    (t / "ref.pt").write_bytes(b"not a torch file")
    argv, outs = _evaluate(g, t, reference=t / "ref.pt")
    return argv, "ref.pt", outs


def case_weights_of_another_network(g, t):
    torch.save(torch.nn.Linear(2, 2).state_dict(), t / "w.pth")
    (t / "w.pth.json").write_text('{"kind": "random-test"}')
    argv, outs = _evaluate(g, t, weights=t / "w.pth")
    return argv, "w.pth", outs


def _reference_stats(g, t, data=None, weights=None):
    out = t / "ref.pt"
    argv = ["reference-stats", "--config", g / "config.yaml", "--data", data or g / "data.npy"]
    return [*argv, "--weights", weights or g / "weights.pth", "--out", out], [out]


def case_unverified_weights(g, t):
    shutil.copy(g / "weights.pth", t / "w.pth")  # the same bytes, without the test-weights mark
    argv, outs = _reference_stats(g, t, weights=t / "w.pth")
    return argv, "w.pth", outs


def case_reference_of_too_few_images(g, t):
    """FID's floor compares two halves of the real images, each a covariance of 2 or more."""
    cfg = config_from_dict(
        {"data": {"source": "synthetic", "synthetic_count": 3, "image_size": 16}}
    )
    preprocess(cfg.data, t / "few.npy", bars=False)
    argv, outs = _reference_stats(g, t, data=t / "few.npy")
    return argv, "few.npy holds 3 images", outs


def _download_weights(t, cut: bool, prefix: str):
    payload = b"pretend these are inception weights" * 1000
    server = Server(payload, cut)
    cfg = _config(
        t,
        evaluate={
            "inception_source": "download",
            "weights_url": server.url,
            "weights_sha256_prefix": prefix,
        },
    )
    out = t / "w.pth"
    return ["inception-weights", "--config", cfg, "--out", out], [out, t / "w.pth.json"]


def case_download_cut_off_mid_file(g, t):
    argv, outs = _download_weights(t, cut=True, prefix="0")
    return argv, "127.0.0.1", outs


def case_download_with_wrong_checksum(g, t):
    argv, outs = _download_weights(t, cut=False, prefix="00000000")
    return argv, "00000000", outs


def case_stale_dvc_yaml(g, t):
    (t / "dvc.yaml").write_text("stages: {}\n")
    out = t / "settings"
    argv = ["settings", "--config", g / "config.yaml", "--dvc-yaml", t / "dvc.yaml", "--out", out]
    return argv, "dvc.yaml", [out]


# -- inputs that used to be accepted silently, or crash (issue 21) ---------------------------------


def case_sample_with_another_networks_final_pt(g, t):
    """The T~30 variant given T~20's network: it would sample T~20 under T~30's name."""
    cfg = _config(t, grid={"T": [20, 30]})
    out = t / "variant"
    argv = ["sample", "--config", cfg, "--run", "T~30", "--ckpt", g / "run/final.pt", "--out", out]
    return argv, "is network T~20, not T~30", [out]


def case_final_pt_trained_with_other_settings(g, t):
    cfg = _config(t, train={"lr": 1.0e-3})
    out = t / "variant"
    argv = ["sample", "--config", cfg, "--run", NETWORK, "--ckpt", g / "run/final.pt", "--out", out]
    return argv, "other training settings", [out]


def case_checkpoint_of_another_network(g, t):
    """T~20's checkpoint.pt in the folder where T~30 trains: resuming it would train T~20."""
    (t / "run").mkdir()
    shutil.copy(g / "run/checkpoint.pt", t / "run/checkpoint.pt")
    cfg = _config(t, grid={"T": [20, 30]})
    argv = ["train", "--config", cfg, "--run", "T~30", "--data", g / "data.npy"]
    return (
        argv + ["--out", t / "run"],
        "belongs to another training (diffusion.T changed)",
        [
            t / "run/final.pt",
            t / "run/train_log.csv",
        ],
    )


def case_two_sections_of_the_same_name(g, t):
    text = yaml.safe_dump(CONFIG) + "train:\n  steps: 50000\n"
    (t / "c.yaml").write_text(text)
    first, second = [i + 1 for i, line in enumerate(text.splitlines()) if line == "train:"]
    return (
        ["runs", "--config", t / "c.yaml"],
        f"line {second}: key 'train' is written twice in one mapping (first on line {first})",
        [],
    )


def case_a_key_written_twice_in_a_section(g, t):
    (t / "c.yaml").write_text("train:\n  steps: 3\n  lr: 1.0e-3\n  steps: 4\n")
    return (
        ["runs", "--config", t / "c.yaml"],
        "line 4: key 'steps' is written twice in one mapping (first on line 2)",
        [],
    )


def case_samples_of_another_image_size(g, t):
    np.savez(t / "s.npz", images=np.zeros((8, 3, 64, 64), np.uint8))
    argv, outs = _evaluate(g, t, samples=t / "s.npz")
    return argv, "64 px images but", outs


def case_samples_of_a_network_trained_on_another_dataset(g, t):
    record = {"run": f"{NETWORK}/default", "dataset_sha256": "0" * 64}
    write_samples(t / "s.npz", np.zeros((8, 3, 16, 16), np.uint8), record)
    argv, outs = _evaluate(g, t, samples=t / "s.npz")
    return argv, "another dataset", outs


def case_samples_of_another_variant(g, t):
    manifest = json.loads((g / "data.json").read_text())
    record = {"run": "T~30/default", "dataset_sha256": manifest["sha256"]}
    write_samples(t / "s.npz", np.zeros((8, 3, 16, 16), np.uint8), record)
    argv, outs = _evaluate(g, t, samples=t / "s.npz")
    return argv, "samples of T~30/default, not of T~20/default", outs


def case_reference_of_another_version(g, t):
    torch.save({"pool": torch.zeros(4, 8)}, t / "ref.pt")
    argv, outs = _evaluate(g, t, reference=t / "ref.pt")
    return argv, "not a reference file", outs


def case_infinite_weight_decay(g, t):
    (t / "c.yaml").write_text("train:\n  weight_decay: .inf\n")
    return ["runs", "--config", t / "c.yaml"], "train.weight_decay: inf is not a finite number", []


def case_one_image_to_evaluate(g, t):
    (t / "c.yaml").write_text("sample:\n  num_images: 1\n")
    return ["runs", "--config", t / "c.yaml"], "sample.num_images: 1", []


def case_infinite_epochs(g, t):
    (t / "c.yaml").write_text("train:\n  epochs: .inf\n")
    return ["runs", "--config", t / "c.yaml"], "train.epochs", []


def case_nan_learning_rate(g, t):
    (t / "c.yaml").write_text("train:\n  lr: .nan\n")
    return ["runs", "--config", t / "c.yaml"], "train.lr: nan is not a finite number", []


def case_latin1_config(g, t):
    (t / "c.yaml").write_bytes("report:\n  title: Fleurs d'été\n".encode("latin-1"))
    return ["runs", "--config", t / "c.yaml"], "is not UTF-8 text (byte 0xe9", []


def case_tab_indentation(g, t):
    (t / "c.yaml").write_text("train:\n  steps: 3\n\tlr: 1.0e-3\n")
    return ["runs", "--config", t / "c.yaml"], "c.yaml, line 3, column 1", []


def case_config_is_a_folder(g, t):
    (t / "c.yaml").mkdir()
    return ["runs", "--config", t / "c.yaml"], "is a directory", []


def case_unknown_grid_key_suggests_the_nearest(g, t):
    cfg = _config(t, grid={"schedul": ["linear", "cosine"]})
    return ["runs", "--config", cfg], "did you mean 'schedule'", []


def case_unknown_section_key_suggests_the_nearest(g, t):
    return ["runs", "--config", _config(t, train={"batchsize": 8})], "did you mean 'batch_size'", []


def case_download_with_synthetic_data(g, t):
    out = t / "raw"
    argv = ["download", "--config", g / "config.yaml", "--out", out]
    return argv, "data.source is 'flowers102'; this config's data.source is 'synthetic'", [out]


def case_sample_out_is_a_file(g, t):
    (t / "variant").write_text("a file")
    argv = ["sample", "--config", g / "config.yaml", "--ckpt", g / "run/final.pt"]
    return argv + ["--out", t / "variant"], "variant is a file", []


def case_evaluate_out_below_a_file(g, t):
    (t / "blocker").write_text("a file")
    argv, _ = _evaluate(g, t)
    argv[-1] = t / "blocker/variant"
    return argv, "blocker is a file, so", []


def case_report_out_is_a_folder(g, t):
    (t / "report.html").mkdir()
    argv = ["report", "--config", g / "config.yaml", "--runs", g / "runs"]
    return argv + ["--out", t / "report.html"], "report.html is a folder", []


def case_settings_out_is_a_file(g, t):
    (t / "settings").write_text("a file")
    argv = ["settings", "--config", g / "config.yaml", "--out", t / "settings"]
    return argv, "settings", []


def case_preprocess_out_below_a_file(g, t):
    (t / "data").write_text("a file")
    argv = ["preprocess", "--config", g / "config.yaml", "--out", t / "data/dataset.npy"]
    return argv, "data is a file, so", []


def case_schema_out_below_a_file(g, t):
    (t / "schemas").write_text("a file")
    return ["schema", "--out", t / "schemas/config.schema.yaml"], "schemas", []


def _results_of_older_code(t):
    """A config whose results were made by other code of `train` than the package's now."""
    cfg = _config(t, results_dir=str(t / "results"))
    main(["settings", "--config", str(cfg), "--out", str(t / "results/settings")])
    path = next((t / "results/settings/train").glob("*.json"))
    path.write_text(path.read_text().replace('"code": "', '"code": "0'))
    return cfg


def case_accept_code_of_a_stage_that_has_not_run(g, t):
    cfg = _config(t, results_dir=str(t / "results"))
    argv = ["accept-code", "--config", cfg, "--stages", "train", "--reason", "renamed"]
    return [*argv, "--accepted", t / "a.yaml"], "has not run", [t / "a.yaml"]


def case_accept_code_of_an_unknown_stage(g, t):
    argv = ["accept-code", "--config", _results_of_older_code(t), "--stages", "trian"]
    return [*argv, "--reason", "renamed", "--accepted", t / "a.yaml"], "trian", [t / "a.yaml"]


def case_accept_code_without_a_reason(g, t):
    argv = ["accept-code", "--config", _results_of_older_code(t), "--stages", "train"]
    return [*argv, "--reason", " ", "--accepted", t / "a.yaml"], "--reason", [t / "a.yaml"]


def case_accept_code_into_a_file_where_a_folder_should_be(g, t):
    (t / "config").write_text("a file, not a folder")
    argv = ["accept-code", "--config", _results_of_older_code(t), "--stages", "train"]
    ledger = t / "config/accepted-code.yaml"
    return [*argv, "--reason", "renamed", "--accepted", ledger], str(ledger), []


CASES = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("name", CASES)
def test_a_bad_input_is_refused_clearly_and_leaves_nothing(good, tmp_path, capsys, name):
    argv, culprit, outputs = CASES[name](good, tmp_path)
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code != 0, f"{name}: accepted"
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert culprit in lines[0], f"{name}: the message does not name {culprit!r}: {lines[0]}"
    for path in outputs:
        assert not Path(path).exists(), f"{name}: left {path} behind"
    assert not list(tmp_path.rglob(".*.tmp*")), f"{name}: left a temporary file behind"


# -- the operating system says no: a full disk, a read-only folder -------------------------------
# Every command that writes, with its output on a tmpfs that is full or read-only: one line that
# names the output and the cause, exit code 1, and nothing of it left behind.


def _writers(g: Path, out: Path, fake_flowers_cfg: Path) -> dict[str, list]:
    cfg = g / "config.yaml"
    return {
        "settings": ["settings", "--config", cfg, "--out", out / "settings"],
        "dvc-yaml": ["dvc-yaml", "--config", cfg, "--out", out / "dvc.yaml"],
        "schema": ["schema", "--out", out / "config.schema.yaml"],
        "config-docs": ["config-docs", "--out", out / "README.md"],
        "stages-docs": ["stages-docs", "--out", out / "stages.md"],
        "download": ["download", "--config", fake_flowers_cfg, "--out", out / "raw"],
        "preprocess": ["preprocess", "--config", cfg, "--out", out / "data.npy"],
        "inception-weights": ["inception-weights", "--config", cfg, "--out", out / "w.pth"],
        "make-test-inception": ["make-test-inception", "--out", out / "w.pth"],
        "reference-stats": [
            "reference-stats",
            "--config",
            cfg,
            "--data",
            g / "data.npy",
            "--weights",
            g / "weights.pth",
            "--out",
            out / "reference.pt",
        ],
        "train": ["train", "--config", cfg, "--data", g / "data.npy", "--out", out / "run"],
        "sample": ["sample", "--config", cfg, "--ckpt", g / "run/final.pt", "--out", out / "v"],
        "evaluate": _evaluate(g, out)[0][:-1] + [out / "v"],
        "summary": [
            "summary",
            "--config",
            cfg,
            "--runs",
            g / "runs",
            "--out",
            out / "s.csv",
            "--metrics",
            out / "m.json",
        ],
        "report": ["report", "--config", cfg, "--runs", g / "runs", "--out", out / "r.html"],
    }


WRITERS = list(_writers(Path("g"), Path("o"), Path("c")))


@pytest.mark.parametrize("fault", ["full", "read-only"])
@pytest.mark.parametrize("command", WRITERS)
def test_a_full_or_read_only_disk_is_one_line_naming_the_output(
    good, tmp_path, capsys, fake_flowers, command, fault
):
    server, md5s = fake_flowers
    flowers = _config(tmp_path, data={"source": "flowers102", "base_url": server.url, "md5": md5s})
    with small_disk(tmp_path / "disk", full=fault == "full", read_only=fault == "read-only") as d:
        argv = _writers(good, d / "out", flowers)[command]
        capsys.readouterr()
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        cause = "no space left on the disk" if fault == "full" else "the file system is read-only"
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
        assert cause in lines[0] and str(d / "out") in lines[0], lines[0]
        assert not (d / "out").exists(), "nothing is left behind"


def test_a_disk_that_fills_up_while_writing_names_the_file_and_keeps_no_part(good, tmp_path):
    """The early check passes (a block is free), the report does not fit: the error names
    report.html, not its temporary, and no temporary stays."""
    with small_disk(tmp_path / "disk", size_kb=16) as d:
        argv = ["report", "--config", good / "config.yaml", "--runs", good / "runs"]
        code = main([str(a) for a in [*argv, "--out", d / "report.html"]])
        assert code == 1
        assert list(d.iterdir()) == []


def test_preprocessing_onto_a_disk_too_small_says_how_much_it_needs(tmp_path, capsys):
    """Folder preprocessing decodes into a memory map of the output; on a disk that cannot hold
    it, writing into the mapping used to kill the process with SIGBUS, without a message and
    with the temporary left to fill the disk. The space is now reserved first."""
    folder = _images(tmp_path / "imgs", n=40)
    cfg = _config(tmp_path, data={"source": "folder", "folder": str(folder), "image_size": 32})
    with small_disk(tmp_path / "disk", size_kb=64) as d:  # 40 x 3 x 32 x 32 = 123 kB
        capsys.readouterr()
        code = main(["preprocess", "--config", str(cfg), "--out", str(d / "data.npy")])
        err = capsys.readouterr().err
        assert code == 1 and "Traceback" not in err, err
        assert f"cannot write {d / 'data.npy'}: it needs 0.1 MB and" in err
        assert list(d.iterdir()) == []


def test_an_error_after_a_bar_left_open_still_starts_its_own_line(tmp_path, capsys):
    """An interrupt that lands between a progress bar's first drawing and the `with` that would
    close it leaves the bar's line unended (how CI saw the Ctrl-C case below fail): the error
    line must still start a line."""
    from tqdm.auto import tqdm

    bar = tqdm(total=200_000, desc="synthetic", unit="img")  # drawn, never closed
    assert main(["config", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: config file not found: {tmp_path / 'missing.yaml'}"
    ], err
    assert bar.disable, "the bar was closed"


def _stderr_of(argv: list, *, terminal: bool) -> str:
    """What `python -m ddpm ...` writes to stderr, that being a terminal (a pseudo-terminal,
    whose bars draw and erase themselves in place) or a pipe (as a job's log file)."""
    cmd = [sys.executable, "-m", "ddpm", *map(str, argv)]
    if not terminal:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stderr
    leader, follower = pty.openpty()
    # 24 rows of 100 columns: a new pseudo-terminal has 0 columns, where tqdm draws nothing
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    with contextlib.suppress(OSError):  # EIO once the command has exited
        while chunk := os.read(leader, 4096):
            chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) != 0
    return b"".join(chunks).decode().replace("\r\n", "\n")  # the terminal's line ends


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "log"])
def test_a_failed_download_starts_its_error_line_after_the_bar(fake_flowers, tmp_path, terminal):
    """The archive's bar is drawn, and erases itself (`leave=False`) without ending its line,
    when its checksum is found wrong: the error still starts a line, in a terminal and in a
    log, for a reader or a tool that looks for lines beginning `error:`."""
    server, md5s = fake_flowers
    wrong = {**md5s, "102flowers.tgz": "0" * 32}
    cfg = _config(tmp_path, data={"source": "flowers102", "base_url": server.url, "md5": wrong})
    err = _stderr_of(["download", "--config", cfg, "--out", tmp_path / "raw"], terminal=terminal)
    assert "102flowers.tgz:   0%|" in err, f"no bar was drawn: {err!r}"
    errors = [line for line in err.split("\n") if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: checksum mismatch for 102flowers"), (
        repr(err)
    )


def _ctrl_c_as_in_a_terminal():
    """In the child, before exec: SIGINT at its default and not blocked, as a shell started
    from a terminal leaves it. Both are inherited through exec, and a test worker's process
    may hold them otherwise after what earlier tests ran in it (once in CI the command ignored
    the signal and ran on)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_in_preprocessing_exits_130_with_one_line_and_no_partial_file(tmp_path):
    cfg = _config(tmp_path, data={"synthetic_count": 200_000, "image_size": 64})
    out = tmp_path / "out/data.npy"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddpm", "preprocess", "--config", str(cfg), "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
        # Its bar draws every 0.2 s, not every 30 s as in a log file (stderr is a pipe here).
        env={**os.environ, "TQDM_MININTERVAL": "0.2"},
        start_new_session=True,  # its own process group, as a terminal gives it
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    try:
        seen = ""
        # The bar's second drawing: it is generating images (not still starting up).
        while seen.count("synthetic:") < 2:
            seen += proc.stderr.read(1)
            assert proc.poll() is None, seen
        os.killpg(proc.pid, signal.SIGINT)
        err = seen + proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        "error: preprocess interrupted (Ctrl-C); nothing half-written was kept. Run the same "
        "command again to redo it."
    ], err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.rglob(".*.tmp*"))

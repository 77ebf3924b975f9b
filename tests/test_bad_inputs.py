"""Every stage either gives the right result or a clear refusal. Each case feeds one bad input to
a stage through the command line (`ddpm.cli.main`, what `python -m ddpm` runs) and checks: a
non-zero exit, one `error:` line naming the culprit, no traceback, and no output left behind."""

import http.server
import io
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY
from PIL import Image

from ddpm.cli import main
from ddpm.config import config_from_dict
from ddpm.data import preprocess
from ddpm.metrics import make_test_inception, reference_stats
from ddpm.stages import prepare
from ddpm.train import train

NETWORK = "T~20"
CONFIG = {**TINY, "grid": {"T": [20]}, "train": {**TINY["train"], "steps": 3}}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Valid inputs for every stage: config, dataset, trained network, weights, reference,
    samples. Cases copy what they break."""
    root = tmp_path_factory.mktemp("good")
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    cfg = config_from_dict(CONFIG)
    preprocess(cfg.data, root / "data.npy", progress=False)
    job_cfg, document = prepare("train", cfg, NETWORK)
    train(job_cfg, NETWORK, root / "data.npy", root / "run", identity=document, progress=False)
    make_test_inception(root / "weights.pth")
    reference_stats(
        prepare("reference_stats", cfg)[0].evaluate,
        root / "data.npy",
        root / "weights.pth",
        root / "reference.pt",
        progress=False,
    )
    rng = np.random.default_rng(0)
    np.savez(root / "samples.npz", images=rng.integers(0, 255, (8, 3, 16, 16), dtype=np.uint8))
    return root


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


def case_unverified_weights(g, t):
    shutil.copy(g / "weights.pth", t / "w.pth")  # the same bytes, without the test-weights mark
    out = t / "ref.pt"
    argv = [
        "reference-stats",
        "--config",
        g / "config.yaml",
        "--data",
        g / "data.npy",
        "--weights",
        t / "w.pth",
        "--out",
        out,
    ]
    return argv, "w.pth", [out]


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

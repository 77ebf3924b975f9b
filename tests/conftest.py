import contextlib
import fcntl
import hashlib
import http.server
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

# Tests run side by side (pytest -n 2): OpenMP threads that spin while they wait would take the
# other test's cores, and made one in-process training 9x slower. Behaviour is unaffected.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One thread per test process, and per command a test starts outside Snakemake (which sets each
# job's own): tests run one per core, and a second thread per process only contends for the
# core of the test beside it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _jpeg(array: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode if mode != "RGB" else None).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def build_fake_flowers(root: Path, n: int = 12) -> dict[str, str]:
    """A miniature Flowers-102 release in `root`: 102flowers.tgz with jpg/image_0000k.jpg,
    imagelabels.mat and setid.mat. Image 1 is grayscale; image 2 is 120 x 40 (wide) with a
    left third red, middle green, right third blue. Returns the md5 of each file."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with tarfile.open(root / "102flowers.tgz", "w:gz") as tar:
        for i in range(1, n + 1):
            if i == 1:
                data = _jpeg(rng.integers(0, 255, (50, 70), dtype=np.uint8), "L")
            elif i == 2:
                wide = np.zeros((40, 120, 3), np.uint8)
                wide[:, :40, 0] = wide[:, 40:80, 1] = wide[:, 80:, 2] = 255
                data = _jpeg(wide)
            else:
                h, w = rng.integers(40, 90, 2)
                data = _jpeg(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            info = tarfile.TarInfo(f"jpg/image_{i:05d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ids = np.arange(1, n + 1)
    savemat(
        root / "setid.mat",
        {"trnid": ids[None, :6], "valid": ids[None, 6:9], "tstid": ids[None, 9:]},
    )
    savemat(root / "imagelabels.mat", {"labels": (ids % 3 + 1)[None]})
    return {
        name: md5_of(root / name) for name in ("102flowers.tgz", "imagelabels.mat", "setid.mat")
    }


class _Handler(http.server.SimpleHTTPRequestHandler):
    drop_first: dict[str, int] = {}  # file name -> number of requests to cut off mid-file

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        remaining = self.server.drops.get(name, 0)
        if remaining:
            self.server.drops[name] = remaining - 1
            data = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


class FileServer:
    """Serves a folder on 127.0.0.1 in a thread; `drops[name] = k` cuts the next k requests."""

    def __init__(self, directory: Path):
        handler = lambda *a, **kw: _Handler(*a, directory=str(directory), **kw)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.drops = {}
        self.drops = self.httpd.drops
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_flowers(tmp_path):
    """(server, md5s) for a miniature Flowers-102 served over HTTP on 127.0.0.1."""
    md5s = build_fake_flowers(tmp_path / "served")
    server = FileServer(tmp_path / "served")
    yield server, md5s
    server.close()


def built_once(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """A folder that `build(folder)` fills, made once per test run and shared by all pytest-xdist
    workers (under this run's temporary root): the first worker to need it builds it while the
    others wait on a lock. Expensive setups such as a trained and pushed pipeline are then paid
    once, not once per worker. Users of the folder must only read it (copy it to change it)."""
    if worker_id == "master":  # not distributed: one process, the usual per-run folder
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    runs = tmp_path_factory.getbasetemp().parent  # this run's root, the same for every worker
    folder, done = runs / name, runs / f"{name}.done"
    with open(runs / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed attempt left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


# -- the pipeline in a copy of the project -------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]

# The smallest config that runs every stage: two networks, 16 px, a few steps each.
TINY = {
    "results_dir": "results",
    "grid": {"T": [20, 30]},
    "data": {"source": "synthetic", "synthetic_count": 32, "image_size": 16},
    "model": {"preset": "tiny"},
    "train": {
        "device": "cpu",
        "batch_size": 8,
        "steps": 6,
        "warmup_steps": 2,
        "checkpoint_every": 3,
        "log_every": 3,
        "preview_every": 0,
        "snapshot_every": 3,
    },
    "sample": {
        "method": "ddim",
        "steps": 4,
        "num_images": 8,
        "batch_size": 8,
        "device": "cpu",
        "trajectory_images": 2,
        "trajectory_points": 3,
    },
    "evaluate": {
        "inception_source": "test-small",
        "inception_weights": "results/weights/test.pth",
        # DINOv2 costs ~1 s an image on this CPU: tests/evaluation/test_dinov2.py and a pipeline
        # test there switch FD_DINOv2 on, with a small random ViT of its family
        "metrics": ["fid", "is", "kid", "prdc"],
        "device": "cpu",
        "reference_max_images": 16,  # of the 32: Inception on the CPU is most of this stage
        "batch_size": 16,
        "kid_subset_size": 4,
        "kid_subsets": 3,
        "is_splits": 2,
    },
    "progress": {"steps": 2, "num_images": 8, "fid_halves": 2, "batch_size": 8, "device": "cpu"},
    "report": {"grid_images": 4},
}

# The tools run `python -m ddpm` and `snakemake` from this environment, as for a user whose
# virtual environment is active.
# DVC would also start a process after each command to send usage analytics; tests send none.
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    "DVC_NO_ANALYTICS": "1",
}
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


# The command that writes dvc.yaml (and params.yaml) from the project's config.
DVC_YAML = (
    *("python", "-m", "ddpm", "dvc-yaml"),
    *("--config", "config/config.yaml", "--out", "dvc.yaml"),
)


def write_config(project: Path, cfg: dict) -> None:
    (project / "config").mkdir(exist_ok=True)
    (project / "config/config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def make_project(dest: Path, cfg: dict, *, dvc: bool = False) -> Path:
    """A checkout of this repository (its tracked files, without tests and benchmarks) with
    `cfg` as config/config.yaml: what a user has after cloning and editing the config (the
    repository's .dvc/ included). With `dvc`, also dvc.yaml for that config and a git commit."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if name.split("/")[0] in ("tests", "benchmarks") or not (ROOT / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    write_config(dest, cfg)
    if dvc:
        run_tool(dest, *DVC_YAML)
        run_tool(dest, "git", "init", "-q")
        commit(dest, "project")
    return dest


def commit(project: Path, message: str) -> None:
    run_tool(project, *GIT, "add", "-A")
    run_tool(project, *GIT, "commit", "-q", "--allow-empty", "-m", message)


def run_tool(project: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), cwd=project, capture_output=True, text=True, env=ENV)
    if check:
        assert r.returncode == 0, (
            f"{' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )
    return r


def snakemake(project: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    return run_tool(project, sys.executable, "-m", "snakemake", *args, check=check)


def dvc(project: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    return run_tool(project, sys.executable, "-m", "dvc", *args, check=check)


def planned_jobs(project: Path, *args) -> dict[str, int]:
    """The jobs `snakemake -n` plans, by rule ({} when there is nothing to do)."""
    r = snakemake(project, "-n", *args, "--quiet", "rules")
    out = r.stdout + r.stderr
    if "Nothing to be done" in out:
        return {}
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M) if m[1] != "total"}


def dvc_changed_stages(project: Path) -> set[str]:
    """The stages `dvc status` lists as changed."""
    out = dvc(project, "status").stdout
    return {line.rstrip(":") for line in out.splitlines() if line and not line[0].isspace()} - {
        "Data and pipelines are up to date."
    }


def dvc_repro(project: Path, *args) -> list[str]:
    """Run `dvc repro`; the stages it ran, in order."""
    out = dvc(project, "repro", *args).stdout
    return re.findall(r"^Running stage '([^']+)'", out, re.M)


def copy_project(src: Path, dest: Path) -> Path:
    """A byte- and time-stamp-exact copy (results, .snakemake and .dvc included)."""
    shutil.copytree(src, dest, symlinks=True, copy_function=shutil.copy2)
    return dest


# -- a small file system, for full-disk and read-only cases --------------------------------------


def _root_only(reason: str) -> None:
    """Skip where this needs root and has not got it; in CI (CI=true), fail instead: nothing
    that the issues require may be skipped there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI runs as root and must run this test")
    pytest.skip(reason)


@contextlib.contextmanager
def small_disk(path: Path, size_kb: int = 64, *, full: bool = False, read_only: bool = False):
    """A tmpfs of `size_kb` mounted at `path` for the duration (made and removed as root):
    filled to the last byte with `full`, remounted read-only with `read_only`."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        _root_only(f"mounting a tmpfs needs root ({r.stderr.strip()})")
    try:
        if full:
            with open(path / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 4096)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def train_network(root: Path, config: dict, network: str, out: Path) -> None:
    """Train `network` of `config` by hand, on the dataset root/data.npy."""
    from ddpm.pipeline.config import config_from_dict
    from ddpm.pipeline.stages import prepare
    from ddpm.training.train import train

    job_cfg, document = prepare("train", config_from_dict(config), network)
    train(job_cfg, network, root / "data.npy", out, identity=document, bars=False)


# The trained and scored network that the stage tests share: one network, snapshots at step 3
# and 6, a reference; see `scored_network`.
SCORED_NETWORK = "T~20"
SCORED_CONFIG = {
    **TINY,
    "grid": {"T": [20]},
    "progress": {"steps": 3, "num_images": 10, "fid_halves": 4, "batch_size": 4, "device": "cpu"},
}


@pytest.fixture(scope="session")
def scored(tmp_path_factory, worker_id) -> Path:
    """`scored_network` of SCORED_CONFIG, plus 8 random 16 px samples in samples.npz: made once
    per test run for all workers, and only read (tests copy what they change)."""

    def build(root):
        scored_network(root, SCORED_CONFIG, SCORED_NETWORK)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 255, (8, 3, 16, 16), dtype=np.uint8)
        np.savez(root / "samples.npz", images=images)

    return built_once(tmp_path_factory, worker_id, "scored", build)


def scored_network(root: Path, config: dict, network: str) -> Path:
    """What the stages after training read, made by hand in `root`: config.yaml, data.npy, the
    trained network in run/, the small random feature network of plumbing tests (as TINY's
    `test-small` source builds it) and the reference statistics."""
    from ddpm.data.preprocess import preprocess
    from ddpm.evaluation.inception_weights import make_test_features
    from ddpm.evaluation.reference_stats import reference_stats
    from ddpm.pipeline.config import config_from_dict
    from ddpm.pipeline.stages import prepare

    (root / "config.yaml").write_text(yaml.safe_dump(config))
    cfg = config_from_dict(config)
    preprocess(cfg.data, root / "data.npy", bars=False)
    train_network(root, config, network, root / "run")
    make_test_features(root / "weights.pth")
    reference_stats(
        prepare("reference_stats", cfg)[0].evaluate,
        root / "data.npy",
        root / "weights.pth",
        root / "reference.pt",
        bars=False,
    )
    return root

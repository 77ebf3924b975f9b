import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


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

"""The `dinov2_weights` stage: FD_DINOv2's weights file, from the source the config names: Meta's
DINOv2 ViT-L/14 weights (downloaded, checked and recorded), or random weights in Meta's format
of that architecture or of a small ViT of its family (offline tests).

No checksum of Meta's file is published. Unless `evaluate.dinov2_sha256_prefix` pins one, the
download is checked by its size (`BYTES`, read from the server on 2026-10-04) and by loading it
strictly into the architecture, and its sha256 is recorded in the sidecar and printed, so a
researcher can pin it; the report says which check the weights passed.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddpm.evaluation.dinov2 import (
    KIND,
    RANDOM_KIND,
    SMALL_KIND,
    DinoV2Error,
    build,
    load_dinov2,
    sidecar,
    weights_info,
)
from ddpm.pipeline.config import DINOV2_URL
from ddpm.pipeline.layout import weights_sidecar
from ddpm.plumbing.files import (
    atomic_path,
    atomic_write_json,
    check_output_file,
    file_digest,
    save_torch,
)

BYTES = {DINOV2_URL: 1_217_586_395}  # the published file's size, where it is known


def fetch_dinov2(url: str, out: str | Path, sha256_prefix: str, bars: bool = True) -> dict:
    """Download Meta's weights once (streamed, 1.2 GB), check them (the pinned sha256 prefix, or
    else the known size), write them atomically, then check that they load into DINOv2
    ViT-L/14. The sidecar records the url, the sha256 and whether it was pinned."""
    out = check_output_file(out)
    digest = _kept(out, url, sha256_prefix)
    if digest is None:
        weights_sidecar(out).unlink(missing_ok=True)  # it described what is replaced
        digest = _download(url, out, sha256_prefix, bars)
    try:
        load_dinov2(out, torch.device("cpu"))
    except DinoV2Error:
        out.unlink(missing_ok=True)
        raise
    pinned = bool(sha256_prefix)
    record = {"kind": KIND, "url": url, "sha256": digest, "pinned": pinned}
    atomic_write_json(weights_sidecar(out), record)
    return {"sha256": digest, "kind": KIND, "test_weights": False, "pinned": pinned}


def _kept(out: Path, url: str, sha256_prefix: str) -> str | None:
    """The sha256 of `out` when it already holds weights the checks accept (hashed once: 1.2
    GB), else None."""
    if not out.exists() or sidecar(out).get("kind", KIND) != KIND:
        return None
    if not sha256_prefix and out.stat().st_size != BYTES.get(url):
        return None
    digest = file_digest(out)
    return digest if digest.startswith(sha256_prefix) else None


def _download(url: str, out: Path, sha256_prefix: str, bars: bool) -> str:
    """Stream `url` to `out` through a temporary file; returns its sha256."""
    expected = BYTES.get(url)
    digest, done = hashlib.sha256(), 0
    with atomic_path(out) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as f:
                announced = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=announced or expected,
                    unit="B",
                    unit_scale=True,
                    desc=out.name,
                    disable=not bars,
                ) as bar:
                    while block := r.read(1 << 20):
                        f.write(block)  # an OSError here (a full disk) names `out`
                        digest.update(block)
                        done += len(block)
                        bar.update(len(block))
                if announced is not None and done != announced:
                    raise http.client.IncompleteRead(b"", announced - done)
        except (
            urllib.error.URLError,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
        ) as e:
            raise DinoV2Error(f"could not download {url}: {e!r}; try again") from None
        hexdigest = digest.hexdigest()
        if sha256_prefix and not hexdigest.startswith(sha256_prefix):
            raise DinoV2Error(
                f"{url}: sha256 {hexdigest[:16]}... does not start with {sha256_prefix} "
                "(evaluate.dinov2_sha256_prefix); the download was removed"
            )
        if not sha256_prefix and expected is not None and done != expected:
            raise DinoV2Error(
                f"{url}: {done:,} bytes, where the published file has {expected:,}; the download "
                "was removed. Try again, or pin evaluate.dinov2_sha256_prefix."
            )
    return hexdigest


def make_test_dinov2(out: str | Path, seed: int = 0, small: bool = False) -> dict:
    """Seeded random weights saved as Meta's file is laid out (518 px, with a mask token), of
    DINOv2 ViT-L/14 or, `small`, of a 2-block ViT of its family. The sidecar marks them."""
    out = check_output_file(out)
    kind = SMALL_KIND if small else RANDOM_KIND
    torch.manual_seed(seed)
    vit = build(kind, img_size=518)
    state = dict(vit.state_dict())
    for name in [k for k in state if k.endswith(".gamma")]:
        # timm starts LayerScale at 1e-5, where the blocks barely move the CLS token: features
        # of random weights would then not tell images apart
        state[name] = torch.ones_like(state[name])
    state["mask_token"] = torch.zeros(1, vit.num_features)
    save_torch(out, state)
    note = "random weights: FD_DINOv2 computed with them ranks nothing"
    atomic_write_json(weights_sidecar(out), {"kind": kind, "seed": seed, "note": note})
    return weights_info(out)


def make_weights(eval_cfg, out: str | Path) -> str:
    """The stage: the weights file from `evaluate.dinov2_source`; returns a line to print."""
    if eval_cfg.dinov2_source in ("test", "test-small"):
        info = make_test_dinov2(out, small=eval_cfg.dinov2_source == "test-small")
        return f"{out}: random DINOv2 weights ({info['kind']}); FD_DINOv2 with them ranks nothing"
    prefix = eval_cfg.dinov2_sha256_prefix
    info = fetch_dinov2(eval_cfg.dinov2_url, out, prefix)
    if prefix:
        return f"{out}: sha256 {info['sha256']} (starts with the pinned {prefix})"
    return (
        f"{out}: sha256 {info['sha256']}, {Path(out).stat().st_size:,} bytes, loads as DINOv2 "
        "ViT-L/14; no checksum is pinned: to pin this one, set evaluate.dinov2_sha256_prefix: "
        f"{info['sha256'][:8]}"
    )

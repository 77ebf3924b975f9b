"""FD_DINOv2's feature network: DINOv2 ViT-L/14 (Oquab et al. 2023) as timm defines it, loaded
from Meta's original weights file, fed as EDM2 (Karras et al. 2024) feeds it.

Each uint8 image is resized to 224 x 224 (bicubic, antialiased), scaled to [0, 1] and normalised
with ImageNet's mean and standard deviation; its feature is the final normalised CLS token, 1,024
numbers. FD_DINOv2 is the Frechet distance between Gaussians fitted to the real and generated
features, computed by the same torchmetrics class as FID (`scores.RealFID`).

Meta's file holds the network at 518 px (37 x 37 patches). At 224 px (16 x 16), its position
embeddings are resampled the way Meta's own model does it for every forward pass: bicubic
without antialiasing, at scale (16 + 0.1) / 37 (`_resample_positions`). timm's own loader
antialiases, which gives other embeddings and so other features than the published FD_DINOv2.

The weights file's sidecar (`OUT.json`) says what it holds: Meta's weights (`dinov2`), random
weights of the same architecture (`random-test-dinov2`, offline tests), or random weights of a
2-block, 64-wide ViT of the same family (`random-test-dinov2-small`, plumbing tests).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ddpm.pipeline.layout import weights_sidecar
from ddpm.plumbing.errors import PipelineError
from ddpm.plumbing.files import file_digest, load_torch


class DinoV2Error(PipelineError):
    """DINOv2's weights or reference cannot be used (the message names the file and the fix)."""


ARCH = "vit_large_patch14_dinov2"  # timm's definition of DINOv2 ViT-L/14
KIND = "dinov2"
RANDOM_KIND = "random-test-dinov2"
SMALL_KIND = "random-test-dinov2-small"
SMALL = {"depth": 2, "embed_dim": 64, "num_heads": 4}  # the plumbing tests' ViT
SIZE = 224  # the input size, as in EDM2
PATCH = 14
MEAN = (0.485, 0.456, 0.406)  # ImageNet's, as DINOv2 was trained with
STD = (0.229, 0.224, 0.225)
OFFSET = 0.1  # Meta's interpolate_offset for the position embeddings
EXTRACTOR = "DINOv2 ViT-L/14 (timm's vit_large_patch14_dinov2, Meta's weights): the CLS token"
RESIZE = "bicubic with antialiasing to 224 x 224, ImageNet normalisation"


def sidecar(path: str | Path) -> dict:
    """What a DINOv2 weights file holds, from its sidecar: the real weights without one."""
    side = weights_sidecar(Path(path))
    return json.loads(side.read_text()) if side.exists() else {"kind": KIND}


def build(kind: str = KIND, img_size: int = SIZE) -> nn.Module:
    """timm's DINOv2 ViT-L/14 without a head (its output: the normalised CLS token), or for
    `SMALL_KIND` the 2-block ViT of the plumbing tests."""
    import timm  # 1.3 s to import: only in the jobs that compute FD_DINOv2

    overrides = SMALL if kind == SMALL_KIND else {}
    return timm.create_model(ARCH, pretrained=False, num_classes=0, img_size=img_size, **overrides)


def _resample_positions(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Meta's position embeddings [1 x 1 + G*G x D] for a `grid` x `grid` patch grid, as its
    model computes them: the class token's unchanged, the patches' bicubic at scale
    (grid + 0.1) / G, without antialiasing."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    old = int(round(len(patches[0]) ** 0.5))
    if old == grid:
        return pos_embed
    dim = patches.shape[-1]
    square = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    scale = (grid + OFFSET) / old
    resized = nn.functional.interpolate(
        square, scale_factor=(scale, scale), mode="bicubic", antialias=False
    )
    if resized.shape[-2:] != (grid, grid):
        raise DinoV2Error(f"position embeddings resampled to {tuple(resized.shape[-2:])}")
    resized = resized.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat([cls, resized.to(pos_embed.dtype)], dim=1)


def from_meta(state: dict, vit: nn.Module) -> dict:
    """Meta's state dict as the 224-px timm model takes it: the mask token (used only in
    DINOv2's training) dropped, the position embeddings resampled to the 16 x 16 grid."""
    state = {k: v for k, v in state.items() if k != "mask_token"}
    if "pos_embed" in state:
        state["pos_embed"] = _resample_positions(state["pos_embed"], SIZE // PATCH)
    return state


class DinoFeatures(nn.Module):
    """uint8 images of any size in, the ViT's 1,024 features (float32) out."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255)

    @property
    def num_features(self) -> int:
        return self.vit.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[-2:] != (SIZE, SIZE):
            x = nn.functional.interpolate(x, size=SIZE, mode="bicubic", antialias=True)
        return self.vit((x - self.mean) / self.std).float()


def load_dinov2(path: str | Path, device: torch.device) -> DinoFeatures:
    """The feature network of a DINOv2 weights file (Meta's format), on `device`."""
    kind = sidecar(path).get("kind", KIND)
    again = "fetch it again with `python -m ddpm dinov2-weights`"
    state = load_torch(path, DinoV2Error, missing=f"{path} not found; {again}", damaged=again)
    vit = build(kind)
    try:
        if not isinstance(state, dict):
            raise TypeError(f"a {type(state).__name__}, not a state dict")
        vit.load_state_dict(from_meta(state, vit))
    except (RuntimeError, TypeError, KeyError) as e:
        raise DinoV2Error(
            f"{path} does not hold DINOv2 ViT-L/14 weights in Meta's format ({str(e)[:200]}); "
            f"{again}"
        ) from None
    return DinoFeatures(vit).eval().to(device)


def weights_info(path: str | Path) -> dict:
    """sha256 of a DINOv2 weights file and what its sidecar says it is."""
    path = Path(path)
    if not path.exists():
        raise DinoV2Error(
            f"DINOv2 weights {path} not found; fetch them with `python -m ddpm dinov2-weights "
            f"--settings SETTINGS --out {path}` (the pipeline's dinov2_weights stage)"
        )
    meta = sidecar(path)
    return {
        "sha256": file_digest(path),
        "kind": meta.get("kind", KIND),
        "test_weights": meta.get("kind", KIND) != KIND,
        "pinned": bool(meta.get("pinned", False)),
    }


def check_weights(path: str | Path) -> dict:
    """Refuse Meta's weights that are not the file the `dinov2_weights` stage checked (its
    sidecar records the sha256 it verified); random test weights are built, not checked. The
    pinned prefix itself is the stage's to check: pinning it reruns that stage only."""
    info = weights_info(path)
    recorded = sidecar(path).get("sha256")
    if info["kind"] == KIND and recorded != info["sha256"]:
        raise DinoV2Error(
            f"{path} has sha256 {info['sha256'][:16]}..., not the file that the dinov2_weights "
            f"stage checked ({(recorded or 'none recorded')[:16]}); fetch the weights again with "
            "`python -m ddpm dinov2-weights`"
        )
    return info


@torch.inference_mode()
def extract(
    net: DinoFeatures,
    images: torch.Tensor,
    batch_size: int,
    device: torch.device,
    desc: str = "dinov2",
    bars: bool = True,
) -> torch.Tensor:
    """DINOv2 features (float32 [N x 1024]) of uint8 images [N x 3 x H x W], in float32 (on
    CUDA with TF32 matrix products where torch allows them)."""
    if images.dtype != torch.uint8:
        raise DinoV2Error("images for evaluation must be uint8 (clamped and rounded)")
    out = []
    with tqdm(total=len(images), unit="img", desc=desc, disable=not bars) as bar:
        for lo in range(0, len(images), batch_size):
            batch = images[lo : lo + batch_size].to(device)
            out.append(net(batch).cpu())
            bar.update(len(batch))
    return torch.cat(out) if out else torch.empty(0, net.num_features)


def load_reference(path: str | Path, info: dict) -> dict:
    """The real side of FD_DINOv2 (the `dinov2_reference` stage's file), computed with the
    weights that `info` describes."""
    again = "run `python -m ddpm dinov2-reference` again"
    ref = load_torch(path, DinoV2Error, missing=f"{path} not found; {again}", damaged=again)
    needed = {"fid_state", "floor", "weights_sha256", "dataset_sha256", "image_size", "n_real"}
    if not isinstance(ref, dict) or not needed <= set(ref):
        raise DinoV2Error(f"{path} is not a DINOv2 reference file of this version; {again}")
    if ref["weights_sha256"] != info["sha256"]:
        raise DinoV2Error(
            f"{path} was computed with other DINOv2 weights than the ones given; {again}"
        )
    return ref

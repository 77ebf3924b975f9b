"""The noise-prediction U-Net (Ho et al. 2020, appendix B; the PixelCNN++-style backbone).

It knows nothing about diffusion: `UNet(x, t)` maps images [N x C x H x W] and a time value per
image [N] (any real number; the diffusion process passes t normalised to (0, 1]) to a tensor
shaped like x.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.diffusion.presets import UNetSpec, resolve_unet_config


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch so each block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding [N x dim] of real-valued times t [N] (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding as a scale and shift in between."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float):
        super().__init__()
        self.norm1 = _group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_ch, 2 * out_ch)
        self.norm2 = _group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (N, C, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, as a residual block."""

    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (N, heads, HW, head_ch)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, HW, head_ch)
        out = out.transpose(-1, -2).reshape(n, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, emb=None):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, emb=None):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.ModuleList):
    """Blocks applied in order, each given the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = block(x, emb)
        return x


class UNet(nn.Module):
    def __init__(self, spec: UNetSpec):
        super().__init__()
        self.spec = spec
        ch = spec.base_channels
        emb_ch = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.stem = nn.Conv2d(spec.in_channels, ch, 3, padding=1)

        def res_attn(in_ch: int, out_ch: int, side: int) -> Stage:
            blocks = [ResBlock(in_ch, out_ch, emb_ch, spec.dropout)]
            if side in spec.attention_resolutions:
                blocks.append(Attention(out_ch, spec.head_channels))
            return Stage(blocks)

        # 1. Down: each level's blocks, then a stride-2 conv (not after the last level).
        self.down = nn.ModuleList()
        skip_channels = [ch]
        side, cur = spec.image_size, ch
        for level, mult in enumerate(spec.channel_mults):
            for _ in range(spec.num_res_blocks):
                self.down.append(res_attn(cur, ch * mult, side))
                cur = ch * mult
                skip_channels.append(cur)
            if level < len(spec.channel_mults) - 1:
                self.down.append(Stage([Downsample(cur)]))
                skip_channels.append(cur)
                side //= 2
        # 2. Middle: residual, attention, residual at the lowest resolution.
        self.middle = Stage(
            [
                ResBlock(cur, cur, emb_ch, spec.dropout),
                Attention(cur, spec.head_channels),
                ResBlock(cur, cur, emb_ch, spec.dropout),
            ]
        )
        # 3. Up: one more block per level than on the way down, each eating one skip connection.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(spec.channel_mults))):
            for i in range(spec.num_res_blocks + 1):
                stage = res_attn(cur + skip_channels.pop(), ch * mult, side)
                cur = ch * mult
                if level > 0 and i == spec.num_res_blocks:
                    stage.append(Upsample(cur))
                    side *= 2
                self.up.append(stage)
        assert not skip_channels, "every skip connection must be consumed"
        self.head = nn.Sequential(
            _group_norm(cur), nn.SiLU(), _zero(nn.Conv2d(cur, spec.in_channels, 3, padding=1))
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: [N x C x H x W], t: [N] (or a scalar) -> [N x C x H x W]."""
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t * self.spec.time_scale, self.spec.base_channels))
        h = self.stem(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)


def build_unet(model_cfg, image_size: int) -> UNet:
    return UNet(resolve_unet_config(model_cfg, image_size))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

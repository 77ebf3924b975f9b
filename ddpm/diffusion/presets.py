"""The U-Net's architecture as data: presets and the resolved spec a config gives (no torch, so
that validating a config or planning the pipeline never loads it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetSpec:
    """The architecture, fully resolved (a preset with the config's overrides applied)."""

    image_size: int  # side of the square input in pixels
    in_channels: int = 3
    base_channels: int = 128  # width of the first resolution level
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)  # width of level i = base_channels * mults[i]
    num_res_blocks: int = 2  # residual blocks per level on the way down (one more on the way up)
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sides that get self-attention
    dropout: float = 0.1
    head_channels: int = 64  # channels per attention head
    time_scale: float = 1000.0  # t is multiplied by this before the sinusoidal embedding


PRESETS: dict[str, dict] = {
    # CPU demos and tests.
    "tiny": dict(
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        dropout=0.0,
    ),
    # The DDPM paper's CIFAR-10 network (35.7M parameters there), its four levels now at 64..8 px;
    # 38.3M here because the time embedding gives a scale and a shift (improved-diffusion).
    "ddpm": dict(
        base_channels=128,
        channel_mults=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16,),
        dropout=0.1,
    ),
    # The Flowers default: the ddpm preset 1.25x wider (about 60M parameters).
    "base": dict(
        base_channels=160,
        channel_mults=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16,),
        dropout=0.1,
    ),
}


def resolve_unet_config(model_cfg, image_size: int) -> UNetSpec:
    """A `UNetSpec` from a `ModelConfig` (preset + non-null overrides); checks that it fits."""
    if model_cfg.preset not in PRESETS:
        raise ValueError(f"model.preset: unknown {model_cfg.preset!r}; choose {', '.join(PRESETS)}")
    params = dict(PRESETS[model_cfg.preset])
    for key in (
        "base_channels",
        "channel_mults",
        "num_res_blocks",
        "attention_resolutions",
        "dropout",
    ):
        value = getattr(model_cfg, key)
        if value is not None:
            params[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    spec = UNetSpec(image_size=image_size, **params)
    levels = len(spec.channel_mults)
    if levels == 0 or any(m < 1 for m in spec.channel_mults):
        raise ValueError(f"model.channel_mults: {spec.channel_mults} must be positive integers")
    if image_size % 2 ** (levels - 1):
        raise ValueError(
            f"model.channel_mults: {levels} levels halve the image {levels - 1} times, so "
            f"data.image_size ({image_size}) must be divisible by {2 ** (levels - 1)}"
        )
    sides = [image_size // 2**i for i in range(levels)]
    unused = [r for r in spec.attention_resolutions if r not in sides]
    if unused:
        raise ValueError(
            f"model.attention_resolutions: {unused} match no feature map; at image size "
            f"{image_size} the sides are {sides}"
        )
    return spec

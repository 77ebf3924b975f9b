import pytest
import torch

from ddpm.diffusion.presets import PRESETS, resolve_unet_config
from ddpm.diffusion.unet import build_unet, count_parameters
from ddpm.pipeline.config import ModelConfig

# Documented sizes (README / ddpm/diffusion/unet.py): tiny <= 2M; ddpm ~35.7M in the paper,
# 38.3M with scale-shift time conditioning; base ~60M.
RANGES = {"tiny": (0.5e6, 2e6), "ddpm": (35e6, 40e6), "base": (55e6, 65e6)}


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("size", [32, 64])
def test_shape_and_parameter_count(preset, size):
    model = build_unet(ModelConfig(preset=preset), size)
    lo, hi = RANGES[preset]
    assert lo <= count_parameters(model) <= hi
    if preset != "tiny" and size == 64:
        return  # the big presets at 64 px cost seconds on CPU; 32 px checks the same wiring
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert model(x, torch.rand(2)).shape == x.shape


def test_one_optimiser_step_lowers_the_loss():
    torch.manual_seed(0)
    model = build_unet(ModelConfig(preset="tiny", attention_resolutions=(8,)), 16)
    x = torch.randn(4, 3, 16, 16)
    t = torch.rand(4)
    target = torch.randn(4, 3, 16, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = (model(x, t) - target).pow(2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]


def test_time_changes_the_output():
    torch.manual_seed(0)
    model = build_unet(ModelConfig(preset="tiny"), 16)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(model(x, torch.tensor([0.1])), model(x, torch.tensor([0.9])))


def test_overrides_and_bad_architectures():
    spec = resolve_unet_config(ModelConfig(preset="ddpm", base_channels=64, dropout=0.0), 64)
    assert spec.base_channels == 64 and spec.dropout == 0.0 and spec.num_res_blocks == 2
    with pytest.raises(ValueError, match="attention_resolutions"):
        resolve_unet_config(ModelConfig(preset="tiny", attention_resolutions=(12,)), 32)
    with pytest.raises(ValueError, match="divisible"):
        resolve_unet_config(ModelConfig(preset="ddpm"), 36)
    # The overrides reach the network that is built: its width, its attention and its depth.
    net = build_unet(ModelConfig(preset="tiny", base_channels=16, attention_resolutions=(8,)), 32)
    assert net.stem.out_channels == 16
    attention = [m for m in net.modules() if type(m).__name__ == "Attention"]
    # the middle block's, and at 8 px the one block down and the two blocks up
    assert len(attention) == 1 + 1 + 2

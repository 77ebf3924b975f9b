"""The builder that training and sampling share: the layout, and what `compile_` adds around
torch.compile (through its `eager` backend; inductor itself is run in test_train.py)."""

import torch

from ddpm.diffusion.model import build, compile_, wants_compile
from ddpm.pipeline.config import DiffusionConfig, ModelConfig

CPU = torch.device("cpu")
BATCH = 8  # the tiny training config's batch, so test_train's compiled run reuses this compile


def tiny_networks():
    torch.manual_seed(0)
    nets = build(ModelConfig(preset="tiny"), DiffusionConfig(T=50), 16, CPU)
    with torch.no_grad():  # away from the zero-initialised output layers, so outputs differ
        for p in nets.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return nets


def test_compile_is_on_by_default_on_cuda_only():
    assert wants_compile("auto", torch.device("cuda")) is True
    assert wants_compile("auto", CPU) is False
    assert wants_compile(True, CPU) is True
    assert wants_compile(False, torch.device("cuda")) is False


def test_networks_are_built_in_nchw_and_weights_freeze_them():
    nets = tiny_networks()
    conv = nets.model.stem.weight
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)
    assert nets.net is nets.model
    frozen = build(
        ModelConfig(preset="tiny"), DiffusionConfig(T=50), 16, CPU, weights=nets.model.state_dict()
    )
    assert not frozen.model.training
    assert not any(p.requires_grad for p in frozen.model.parameters())
    assert torch.equal(frozen.model.stem.weight, conv.detach())


def test_compiling_draws_no_random_number_and_the_compiled_network_computes_the_same():
    """What `compile_` adds around torch.compile (the warm-up passes, the timing, the report),
    through the `eager` backend; inductor's code generation is checked once, on a whole
    training and sampling run, in test_train.py."""
    nets = tiny_networks()
    rng_before = torch.get_rng_state()
    compiled = compile_(nets, BATCH, "bf16", train=True, backend="eager")
    # Compiling ran the network forward and backward, yet drew no random number.
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert compiled.compiled and compiled.compile_s > 0
    assert compiled.compile_error is None
    assert all(p.grad is None for p in nets.model.parameters())

    x = torch.randn(BATCH, 3, 16, 16)
    t = torch.randint(0, 50, (BATCH,))
    grads = []
    for net in (nets.model, compiled.net):
        out = net(x, t)
        out.square().mean().backward()
        grads.append([p.grad.clone() for p in nets.model.parameters()])
        nets.model.zero_grad(set_to_none=True)
        if net is nets.model:
            reference = out.detach()
        else:
            torch.testing.assert_close(out.detach(), reference, rtol=1e-4, atol=1e-5)
    assert reference.abs().max() > 0.1  # a real output, not the initial zeros
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-6)


def test_a_compiler_that_fails_is_reported_and_the_plain_network_runs(capsys):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler on this machine")

    nets = tiny_networks()
    result = compile_(nets, BATCH, "bf16", train=True, backend=broken_backend)
    assert not result.compiled and result.net is nets.model and result.compile_s is None
    assert "no C++ compiler on this machine" in result.compile_error
    err = capsys.readouterr().err
    assert "torch.compile failed" in err and "running the network uncompiled" in err
    assert all(p.grad is None for p in nets.model.parameters())

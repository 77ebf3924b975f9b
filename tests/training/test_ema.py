import pytest
import torch

from ddpm.training.ema import EMA


def test_ema_follows_the_closed_form_with_warmup():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.9, warmup=True)
    expected = torch.zeros(1, 2)
    for n in range(30):
        model.weight.data.fill_(float(n + 1))
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * float(n + 1)
        ema.update(model)
    torch.testing.assert_close(ema.model.weight, expected)
    assert ema.current_decay() == pytest.approx(31 / 40)  # still warming up
    ema.num_updates = 1000
    assert ema.current_decay() == pytest.approx(0.9)


def test_ema_state_round_trips_and_is_frozen():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.99, warmup=False)
    ema.update(model)
    other = EMA(torch.nn.Linear(2, 2), decay=0.99, warmup=False)
    other.load_state_dict(ema.state_dict())
    torch.testing.assert_close(other.model.weight, ema.model.weight)
    assert other.num_updates == 1
    assert not any(p.requires_grad for p in ema.model.parameters())
    with pytest.raises(ValueError):
        EMA(model, decay=1.0)

"""vlmcls.dropout: LoRA's dropout drawn as gaps drops what nn.Dropout drops, as often, and is what LoRA uses."""
import pytest
import torch

from conftest import load_tiny
from vlmcls.dropout import GapDropout, dropped_positions
from vlmcls.training import prepare_model

P = 0.05


def drop_rates(draws, count, **chunk):
    """How often each index of range(count) is dropped over `draws` seeded draws, and how often index i and i + 1
    are dropped together."""
    generator = torch.Generator().manual_seed(0)
    dropped = torch.zeros(draws, count)
    for row in range(draws):
        positions = dropped_positions(count, P, generator, **chunk)
        assert positions.dtype == torch.int64
        assert torch.all(positions[1:] > positions[:-1]) and positions.min() >= 0 and positions.max() < count
        dropped[row, positions] = 1
    return dropped.mean(0), (dropped[:, 1:] * dropped[:, :-1]).mean()


@pytest.mark.parametrize("chunk", [{}, {"chunk": 3}])  # 3 gaps at a time: drawing more is needed at every call
def test_each_position_is_dropped_with_probability_p_independently(chunk):
    rates, together = drop_rates(3000, 400, **chunk)
    sigma = (P * (1 - P) / 3000) ** 0.5
    # the first and the last index as often as any (an off-by-one would never drop one of them)
    for index in (0, 1, 399):
        assert abs(rates[index] - P) < 5 * sigma
    assert abs(rates.mean() - P) < 5 * sigma / 20
    assert abs(rates[:200].mean() - rates[200:].mean()) < 5 * sigma / 10
    assert abs(together - P * P) < 0.0005  # neighbours independent: dropped together p^2 of the time


def test_gap_dropout_zeroes_a_share_p_scales_the_rest_and_its_gradient_alike():
    torch.manual_seed(0)
    x = (torch.rand(64, 300) + 0.5).requires_grad_()
    dropout = GapDropout(P)
    torch.manual_seed(1)
    out = dropout(x)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - P) < 0.01
    torch.testing.assert_close(out[~dropped], x[~dropped] / (1 - P))
    out.sum().backward()
    torch.testing.assert_close(x.grad, (~dropped).float() / (1 - P))
    # seeded: the same draws again, other draws after
    torch.manual_seed(1)
    assert torch.equal(dropout(x), out)
    assert not torch.equal(dropout(x), out)
    # a non-contiguous input keeps its values where kept
    transposed = x.detach().t()
    out = dropout(transposed)
    torch.testing.assert_close(out[out != 0], transposed[out != 0] / (1 - P))
    dropout.eval()
    assert dropout(x) is x


def test_lora_branches_use_gap_dropout_with_the_configured_p(tiny_smolvlm):
    _, model = load_tiny(tiny_smolvlm)
    model = prepare_model(model, use_lora=True, lora_dropout=0.1)
    branches = [d for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)
                for d in m.lora_dropout.values()]
    assert branches and all(type(d) is GapDropout and d.p == 0.1 for d in branches)
    _, model = load_tiny(tiny_smolvlm)
    model = prepare_model(model, use_lora=True, lora_dropout=0)
    assert not any(isinstance(m, GapDropout) for m in model.modules())  # peft's Identity, nothing to draw

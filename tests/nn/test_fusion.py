import torch
from torch import nn

from dmrnet.nn import MaskedLinearFusion, masked_concat


def test_masked_linear_fusion_equals_masked_concat_then_linear():
    torch.manual_seed(0)
    fusion = MaskedLinearFusion(3, 5, 4)
    linear = nn.Linear(15, 4)
    linear.weight.data.copy_(fusion.weight.data)
    linear.bias.data.copy_(fusion.bias.data)
    features = torch.randn(6, 3, 5)
    mask = torch.rand(6, 3) > 0.4
    expected = linear(masked_concat(list(features.unbind(1)), mask))
    assert torch.allclose(fusion(features, mask), expected, atol=1e-6)


def test_forward_many_equals_one_forward_per_combination():
    torch.manual_seed(1)
    fusion = MaskedLinearFusion(3, 5, 4)
    features = torch.randn(6, 3, 5)
    masks = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    many = fusion.forward_many(features, masks)
    assert many.shape == (3, 6, 4)
    for index, mask in enumerate(masks):
        assert torch.allclose(many[index], fusion(features, mask.expand(6, -1)), atol=1e-6)


def test_masked_concat_zeroes_absent_maps():
    maps = [torch.ones(2, 3, 4, 4), 2 * torch.ones(2, 1, 4, 4)]
    mask = torch.tensor([[True, False], [False, True]])
    fused = masked_concat(maps, mask)
    assert fused.shape == (2, 4, 4, 4)
    assert fused[0, :3].eq(1).all() and fused[0, 3].eq(0).all()
    assert fused[1, :3].eq(0).all() and fused[1, 3].eq(2).all()

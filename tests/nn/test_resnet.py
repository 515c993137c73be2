import pytest
import torch

from dmrnet.nn import ENCODERS, ResNet, build_encoder


@pytest.mark.parametrize(
    ("depth", "channels"),
    [(18, (64, 128, 256, 512)), (34, (64, 128, 256, 512)), (50, (256, 512, 1024, 2048))],
)
def test_stage_channels_follow_the_standard_resnets(depth, channels):
    assert ResNet(depth).channels == channels


def test_resnet18_parameter_count_matches_the_reference_architecture():
    # torchvision's resnet18 without its fc layer has 11,176,512 parameters.
    assert sum(p.numel() for p in ResNet(18).parameters()) == 11_176_512


def test_stage_strides_for_both_stems():
    x = torch.randn(2, 3, 64, 64)
    shapes = [t.shape[-1] for t in ResNet(18, width=8).forward_stages(x)]
    assert shapes == [16, 8, 4, 2]
    shapes = [t.shape[-1] for t in ResNet(10, width=8, stem="thin").forward_stages(x)]
    assert shapes == [64, 32, 16, 8]


def test_se_and_width_and_input_channels():
    net = ResNet(18, in_channels=1, width=16, se=True)
    assert net.channels == (16, 32, 64, 128)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 128)


def test_resnet_encoder_is_registered_and_accepts_single_channel_maps():
    assert "resnet" in ENCODERS
    encoder = build_encoder("resnet", (40, 30), 12, {"depth": 10, "width": 8, "stem": "thin"})
    assert encoder(torch.randn(3, 40, 30)).shape == (3, 12)
    with pytest.raises(ValueError, match="depth"):
        ResNet(19)

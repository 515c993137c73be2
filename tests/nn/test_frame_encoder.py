import pytest
import torch

from dmrnet.nn import ENCODERS, FrameSequenceEncoder, build_encoder


def test_frame_encoder_averages_frames_before_the_head():
    encoder = build_encoder("frames-resnet", (3, 3, 16, 16), 6, {"depth": 10, "width": 4})
    assert "frames-resnet" in ENCODERS
    encoder.eval()
    frames = torch.randn(2, 3, 3, 16, 16)
    pooled = encoder.backbone(frames.flatten(0, 1)).unflatten(0, (2, 3)).mean(1)
    assert torch.allclose(encoder(frames), encoder.head(pooled), atol=1e-6)


def test_single_images_are_one_frame_clips():
    encoder = FrameSequenceEncoder((3, 16, 16), 6, depth=10, width=4).eval()
    image = torch.randn(2, 3, 16, 16)
    assert torch.allclose(encoder(image), encoder(image.unsqueeze(1)))


def test_frame_encoder_rejects_vectors():
    with pytest.raises(ValueError, match=r"\(frames, channels, height, width\)"):
        FrameSequenceEncoder((784,), 6)

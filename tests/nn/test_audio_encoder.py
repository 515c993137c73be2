import pytest
import torch

from dmrnet.nn import ENCODERS, SpectrogramEncoder, build_encoder


def test_audio_encoder_is_registered_and_takes_both_spectrogram_layouts():
    assert "audio-resnet" in ENCODERS
    encoder = build_encoder(
        "audio-resnet", (129, 49), 12, {"depth": 10, "width": 4, "stem": "thin"}
    )
    assert encoder(torch.randn(3, 129, 49)).shape == (3, 12)
    assert encoder(torch.randn(3, 1, 129, 49)).shape == (3, 12)
    assert (
        build_encoder("audio-resnet", (1, 33, 20), 5, {"depth": 10, "width": 4}).out_features == 5
    )


def test_audio_encoder_has_one_input_channel_and_the_paper_depths():
    encoder = SpectrogramEncoder((257, 188), 512, depth=34, width=8)
    assert encoder.backbone.stem[0].in_channels == 1
    assert [len(stage) for stage in encoder.backbone.stages] == [3, 4, 6, 3]


def test_audio_encoder_rejects_multichannel_inputs():
    with pytest.raises(ValueError, match=r"spectrograms of shape \(frequency, time\)"):
        SpectrogramEncoder((3, 64, 64), 8)

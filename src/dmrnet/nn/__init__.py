"""Neural building blocks: encoders (registry), masked fusion, the heads."""

from dmrnet.nn.audio import SpectrogramEncoder
from dmrnet.nn.encoders import ENCODERS, build_encoder
from dmrnet.nn.fusion import MaskedLinearFusion, masked_concat
from dmrnet.nn.gaussian import gaussian_kl
from dmrnet.nn.heads import (
    DeterministicHead,
    DeterministicHeadConfig,
    GaussianHead,
    GaussianHeadConfig,
    Head,
    HeadOutput,
    PooledLinear,
)
from dmrnet.nn.resnet import ResNet, ResNetEncoder, SqueezeExcitation
from dmrnet.nn.standardize import Standardize
from dmrnet.nn.video import FrameSequenceEncoder

__all__ = [
    "ENCODERS",
    "DeterministicHead",
    "DeterministicHeadConfig",
    "FrameSequenceEncoder",
    "GaussianHead",
    "GaussianHeadConfig",
    "Head",
    "HeadOutput",
    "MaskedLinearFusion",
    "PooledLinear",
    "ResNet",
    "ResNetEncoder",
    "SpectrogramEncoder",
    "SqueezeExcitation",
    "Standardize",
    "build_encoder",
    "gaussian_kl",
    "masked_concat",
]

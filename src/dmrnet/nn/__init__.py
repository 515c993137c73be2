"""Neural building blocks: encoders (registry), masked fusion, the Gaussian embedding."""

from dmrnet.nn.audio import SpectrogramEncoder
from dmrnet.nn.encoders import ENCODERS, build_encoder
from dmrnet.nn.fusion import MaskedLinearFusion, masked_concat
from dmrnet.nn.gaussian import GaussianEmbedding, GaussianOutput, gaussian_kl
from dmrnet.nn.resnet import ResNet, ResNetEncoder, SqueezeExcitation
from dmrnet.nn.standardize import Standardize
from dmrnet.nn.video import FrameSequenceEncoder

__all__ = [
    "ENCODERS",
    "FrameSequenceEncoder",
    "GaussianEmbedding",
    "GaussianOutput",
    "MaskedLinearFusion",
    "ResNet",
    "ResNetEncoder",
    "SpectrogramEncoder",
    "SqueezeExcitation",
    "Standardize",
    "build_encoder",
    "gaussian_kl",
    "masked_concat",
]

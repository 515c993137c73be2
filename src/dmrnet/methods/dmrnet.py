"""DMRNet: Decoupled Multimodal Representation Network (Wei et al., ECCV 2024, arXiv 2407.04458).

Per-modality encoders -> masked concat fusion -> Gaussian embedding N(mu, std^2) (mu and logvar
heads) -> classifier on a sampled z in training and on mu in evaluation. Loss:

    L = CE + alpha * KL(N(mu, std^2) || N(0, I)) + beta * L_hcr

Modelling each input's embedding as a distribution lets the different modality combinations of
one sample occupy different regions instead of being forced onto one point, and the variance
says how uncertain the embedding of a combination is (paper sections 3.2-3.3).

The network is the vector family (`EncoderHeadMethod`) with the Gaussian head
(dmrnet.nn.heads.GaussianHead), which holds the mu / logvar heads, the sampling, the KL term and
the one-pass decode of all combinations.
"""

from __future__ import annotations

from pydantic import Field

from dmrnet.config import HCRConfig
from dmrnet.methods.base import METHODS, EncoderFusionConfig, EncoderHeadMethod
from dmrnet.nn.heads import ExpertsSection, GaussianHead, GaussianHeadConfig


class DMRNetConfig(EncoderFusionConfig, GaussianHeadConfig, ExpertsSection):
    method: str = "dmrnet"
    hcr: HCRConfig = Field(default_factory=lambda: HCRConfig(rule="unimodal-max"))


@METHODS.register("dmrnet")
class DMRNet(EncoderHeadMethod):
    config: DMRNetConfig
    config_class = DMRNetConfig
    head_class = GaussianHead

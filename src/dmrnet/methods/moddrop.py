"""ModDrop: modality dropout on a deterministic common embedding (Neverova et al., TPAMI 2016).

The paper's baseline and the first rung of its ablation ladder: the same network as DMRNet with
the logvar head, the sampling and the KL term removed (the vector family with the deterministic
head, dmrnet.nn.heads.DeterministicHead). Absent modalities are zeroed at feature level, so every
combination is mapped to one point of a shared embedding.
"""

from __future__ import annotations

from dmrnet.methods.base import METHODS, EncoderFusionConfig, EncoderHeadMethod
from dmrnet.nn.heads import DeterministicHead, DeterministicHeadConfig, ExpertsSection


class ModDropConfig(EncoderFusionConfig, DeterministicHeadConfig, ExpertsSection):
    method: str = "moddrop"


@METHODS.register("moddrop")
class ModDrop(EncoderHeadMethod):
    config: ModDropConfig
    config_class = ModDropConfig
    head_class = DeterministicHead

"""Score networks. They map ``(x, labels) -> output`` and know nothing about SDEs.

``NCSNpp`` is NCSN++ and DDPM++ (Song et al., 2021); ``DDPM`` (Ho et al., 2020), ``NCSN`` and
``NCSNv2`` (Song & Ermon, 2019, 2020) are the paper's baselines; ``SmallUNet`` and ``ScoreMLP``
are small networks for the digits demo and 2-D toy data. ``NoiseConditionalWideResNet`` and
``NoiseConditionalMLPClassifier`` (:mod:`scoresde.nn.classifiers`) are the time-dependent
classifiers ``(x, sigma) -> logits`` of classifier guidance. Class-conditional networks take
``class_labels``; :data:`NULL_LABEL` marks a row without a label (classifier-free guidance).
Official checkpoints and diffusers folders load through :mod:`scoresde.interop`;
:func:`scoresde.setup.build.build_model` builds a network from a config, and the paper's network
options are in :mod:`scoresde.setup.presets`.
"""

from scoresde.nn.classifiers import NoiseConditionalMLPClassifier, NoiseConditionalWideResNet
from scoresde.nn.ddpm import DDPM
from scoresde.nn.embeddings import NULL_LABEL
from scoresde.nn.mlp import ScoreMLP
from scoresde.nn.ncsn import NCSN, NCSNv2
from scoresde.nn.ncsnpp import NCSNpp
from scoresde.nn.unet import SmallUNet

__all__ = [
    "DDPM",
    "NCSN",
    "NULL_LABEL",
    "NCSNpp",
    "NCSNv2",
    "NoiseConditionalMLPClassifier",
    "NoiseConditionalWideResNet",
    "ScoreMLP",
    "SmallUNet",
]

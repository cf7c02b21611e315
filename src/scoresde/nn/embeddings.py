"""Noise-level embeddings shared by the score networks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar (Tancik et al., 2020), as in NCSN++.

    The frequencies ``W`` are drawn once at construction (``N(0, scale^2)``) and never trained.
    Maps ``(B,) -> (B, 2 * embedding_size)`` as ``[sin(2 pi x W), cos(2 pi x W)]``.
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        x_proj = x[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(x_proj), torch.cos(x_proj)], dim=-1)


def sinusoidal_embedding(
    timesteps: Tensor,
    embedding_dim: int,
    max_positions: int = 10000,
    *,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Sinusoidal embedding of ``(B,)`` timesteps as in DDPM: ``(B, embedding_dim)``.

    ``[sin(t w_k), cos(t w_k)]`` with ``w_k = max_positions^(-k / (embedding_dim / 2 - 1))``, zero
    padded to an odd ``embedding_dim``. It is computed (and returned) in ``dtype``: by default the
    dtype of floating ``timesteps``, else the default dtype (float32 unless changed). The networks
    pass their input's dtype, so that a float64 network embeds in float64; float32 results are the
    same as the official (float32) code's.
    """
    if dtype is None:
        dtype = timesteps.dtype if timesteps.is_floating_point() else torch.get_default_dtype()
    half_dim = embedding_dim // 2
    scale = math.log(max_positions) / (half_dim - 1)
    freqs = torch.exp(torch.arange(half_dim, dtype=dtype, device=timesteps.device) * -scale)
    args = timesteps.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if embedding_dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


NULL_LABEL = -1
"""The class label meaning "no label" (classifier-free guidance; Ho & Salimans, 2022): a network
given it for a row computes that row exactly as with ``class_labels=None``. Every negative label is
treated so; :data:`NULL_LABEL` is the one to write."""


def embed_classes(embedding: nn.Embedding, class_labels: Tensor) -> Tensor:
    """Embed ``class_labels (*B,)`` int64 as ``(*B, D)`` in the embedding's dtype, with all-zero
    rows for :data:`NULL_LABEL` (any negative label).

    Rows with labels ``>= 0`` are exactly ``embedding(class_labels)``; labels ``>= num_classes``
    raise as ``nn.Embedding`` does. The zero rows add nothing to a time embedding, so a batch may
    mix labelled and unlabelled rows (label dropout in training). Differentiable in the embedding
    weights (null rows contribute no gradient).
    """
    null = class_labels < 0
    return embedding(class_labels.clamp(min=0)).masked_fill(null.unsqueeze(-1), 0.0)


def check_class_labels(
    embedding: nn.Embedding | None, class_labels: Tensor | None, network: str
) -> None:
    """Reject ``class_labels`` with a one-line ``ValueError`` naming ``network`` if the network has
    no class ``embedding`` (it was built without ``num_classes``)."""
    if class_labels is not None and embedding is None:
        raise ValueError(f"{network} was built without num_classes: class_labels must be None")


def add_class_embedding(
    temb: Tensor, embedding: nn.Embedding | None, class_labels: Tensor | None, network: str
) -> Tensor:
    """Return ``temb (B, D)`` plus the class embedding ``(B, D)`` of ``class_labels (B,)``
    (:func:`embed_classes`; null labels add nothing), or ``temb`` itself if ``class_labels`` is
    ``None``; labels given to a network without ``embedding`` raise (:func:`check_class_labels`)."""
    check_class_labels(embedding, class_labels, network)
    if class_labels is None or embedding is None:
        return temb
    return temb + embed_classes(embedding, class_labels)

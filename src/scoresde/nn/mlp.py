"""A residual MLP score network for flat vectors, e.g. the 2-D toy datasets.

Noise labels have the NCSN++ meaning: with ``embedding_type="fourier"`` they are ``sigma`` (VE
SDEs) and ``log(sigma)`` is embedded with random Fourier features; with ``"positional"`` they are
``999 * t`` (VP SDEs) and are embedded directly with the sinusoidal embedding.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from scoresde.core._tensor import append_dims
from scoresde.nn.embeddings import add_class_embedding
from scoresde.nn.unet import EmbeddingType, NoiseEmbedding


class ScoreMLP(nn.Module):
    """Score network ``(x (B, D), labels (B,)) -> (B, D)``.

    ``x`` is lifted to ``hidden`` features, then ``depth`` residual layers each compute
    ``h <- h + Linear(SiLU(h + Dense(temb)))``, where ``temb`` is the embedded noise label, and a
    final zero-initialised ``Linear(SiLU(h))`` maps back to ``D``.

    Args:
        dim: data dimension ``D``.
        hidden: width of the hidden layers.
        depth: number of residual hidden layers.
        embedding_type: ``"fourier"`` (labels are ``sigma``) or ``"positional"`` (labels are
            ``999 t``).
        fourier_scale: scale of the random Fourier frequencies.
        scale_by_sigma: divide the output by ``labels``; only valid with ``"fourier"``.
        num_classes: if set, an ``nn.Embedding(num_classes, hidden)`` (``class_embed``) whose
            vector for ``class_labels`` is added to ``temb`` before its SiLU (none for
            :data:`~scoresde.nn.embeddings.NULL_LABEL`); ``None``: unconditional, class labels
            are an error.
    """

    def __init__(
        self,
        *,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        embedding_type: EmbeddingType = "fourier",
        fourier_scale: float = 16.0,
        scale_by_sigma: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if scale_by_sigma and embedding_type != "fourier":
            raise ValueError("scale_by_sigma needs sigma labels, i.e. embedding_type='fourier'")
        if hidden % 4:
            raise ValueError(f"hidden must be a multiple of 4, got {hidden}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be positive or None, got {num_classes}")
        self.scale_by_sigma = scale_by_sigma
        self.embed = NoiseEmbedding(hidden // 4, embedding_type, fourier_scale)  # -> hidden
        self.inp = nn.Linear(dim, hidden)
        self.temb_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # Created last, so that the seeded initial weights of the other layers do not change.
        self.class_embed = nn.Embedding(num_classes, hidden) if num_classes is not None else None

    def forward(self, x: Tensor, labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """Return the network output ``(B, D)`` for points ``x``, noise ``labels (B,)`` and
        optional ``class_labels (B,)`` int64 (needs ``num_classes``; ``NULL_LABEL`` rows are
        unconditional)."""
        temb = F.silu(
            add_class_embedding(self.embed(labels), self.class_embed, class_labels, "ScoreMLP")
        )
        h = self.inp(x)
        for proj, layer in zip(self.temb_proj, self.layers, strict=True):
            h = h + layer(F.silu(h + proj(temb)))
        out = self.out(F.silu(h))
        if self.scale_by_sigma:
            out = out / append_dims(labels.to(out.dtype), out.ndim)
        return out

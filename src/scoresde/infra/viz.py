"""Pictures of samples and training curves: PNG image grids, 2-D scatter plots, loss curves.

Image grids are drawn with Pillow. Plots use Matplotlib's object API with an explicit Agg
canvas, so importing this module never selects or changes the global Matplotlib backend.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor


def _to_numpy(x: Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def save_image_grid(
    images: Tensor | np.ndarray,
    path: str | os.PathLike[str],
    *,
    nrow: int = 8,
    upscale: int = 4,
    padding: int = 1,
    pad_value: float = 1.0,
) -> Path:
    """Tile images into one PNG, enlarged with nearest-neighbour so 8x8 digits stay crisp.

    Args:
        images: ``(N, C, H, W)`` with ``C`` in ``{1, 3}``, or ``(N, H, W)``; values in ``[0, 1]``
            (clipped).
        path: the PNG to write (parent folders are created).
        nrow: images per grid row (as in ``torchvision.utils.make_grid``).
        upscale: integer enlargement factor of each image.
        padding: pixels (in the output) between images and around the border.
        pad_value: grey level in ``[0, 1]`` of the padding and of empty cells.

    Returns:
        ``path``. The PNG is ``ncol * (W * upscale + padding) + padding`` wide and
        ``nrows * (H * upscale + padding) + padding`` high, with ``ncol = min(nrow, N)`` and
        ``nrows = ceil(N / ncol)``; greyscale (mode ``L``) for one channel, else RGB.
    """
    arr = _to_numpy(images)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or arr.shape[0] == 0:
        raise ValueError(f"expected (N, C, H, W) with C in (1, 3) or (N, H, W), got {arr.shape}")
    if nrow < 1 or upscale < 1 or padding < 0:
        raise ValueError("nrow and upscale must be >= 1 and padding >= 0")
    n, c, h, w = arr.shape
    pixels = np.rint(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)
    pixels = pixels.repeat(upscale, axis=2).repeat(upscale, axis=3).transpose(0, 2, 3, 1)
    cell_h, cell_w = h * upscale + padding, w * upscale + padding
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    fill = round(min(max(pad_value, 0.0), 1.0) * 255)
    grid = np.full((nrows * cell_h + padding, ncol * cell_w + padding, c), fill, dtype=np.uint8)
    for i in range(n):
        top = (i // ncol) * cell_h + padding
        left = (i % ncol) * cell_w + padding
        grid[top : top + h * upscale, left : left + w * upscale] = pixels[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)  # mode L or RGB
    return path


def save_scatter(
    points: Tensor | np.ndarray,
    path: str | os.PathLike[str],
    *,
    reference: Tensor | np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Scatter-plot 2-D points ``(N, 2)`` to a PNG, optionally over ``reference`` points ``(M, 2)``.

    Both sets share equal axis scales; the reference (e.g. data samples) is drawn in grey
    underneath.
    """
    pts = _to_numpy(points)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {pts.shape}")
    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    size = max(1.0, min(8.0, 4000 / max(len(pts), 1)))
    if reference is not None:
        ref = _to_numpy(reference)
        if ref.ndim != 2 or ref.shape[1] != 2:
            raise ValueError(f"reference must have shape (M, 2), got {ref.shape}")
        ax.scatter(ref[:, 0], ref[:, 1], s=size, c="0.7", alpha=0.5, label="reference", lw=0)
    ax.scatter(pts[:, 0], pts[:, 1], s=size, c="C0", alpha=0.7, label="samples", lw=0)
    if reference is not None:
        ax.legend(loc="upper right", markerscale=3)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title)
    fig.tight_layout()
    return _save_figure(fig, path)


def save_loss_curve(
    steps: Sequence[int] | np.ndarray | Tensor,
    losses: Sequence[float] | np.ndarray | Tensor,
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """Plot ``losses`` against ``steps`` (equal-length 1-D sequences) to a PNG.

    The loss axis is logarithmic when every loss is positive.
    """
    x, y = _to_numpy(steps).reshape(-1), _to_numpy(losses).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"steps and losses differ in length: {x.shape[0]} vs {y.shape[0]}")
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(x, y, lw=1)
    if y.size and np.all(y > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, path)


def _save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path

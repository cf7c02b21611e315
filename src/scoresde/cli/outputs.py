"""What commands write: arrays (atomically) and pictures."""

from __future__ import annotations


def save_array(path, tensor) -> None:
    """``tensor`` as an ``.npy`` file at ``path``, written atomically."""
    from scoresde.infra.rundir import atomic_save_arrays

    atomic_save_arrays(path, tensor.numpy())


def save_picture(x, path, *, nrow: int, title: str) -> None:
    """Images as a grid, toy points as a scatter."""
    from scoresde.infra.viz import save_image_grid, save_scatter

    if x.ndim == 4:
        save_image_grid(x, path, nrow=nrow)
    else:
        save_scatter(x, path, title=title)

"""Image files and lmdb exports, decoded with Pillow and numpy (no TensorFlow, no torchvision).

* :class:`DatasetError`: a missing, empty or corrupt dataset; one-line messages that name the path
  and the expected layout.
* Files: :func:`list_image_files` (sorted, deterministic), :func:`decode_image` (to RGB) and
  :func:`image_to_tensor` (``(3, H, W)`` float32 with values ``k / 255``).
* Preprocessing on PIL images as in the official score_sde code (``datasets.py``), with Pillow's
  filters. Pillow widens a filter's support by the downscaling factor, as
  ``tf.image.resize(..., antialias=True)`` does; both use Keys' cubic (a = -0.5) for bicubic.
  Results agree with TensorFlow up to small numerical differences (and are rounded to uint8
  here), not bit for bit.
* Datasets over storage: :class:`ImageArrayDataset` (uint8 in memory), :class:`ImageFileDataset`
  (files), :class:`LmdbImageDataset` (LSUN's lmdb export; optional dependency ``lmdb``) and
  :class:`MirroredDataset` (flip augmentation by mirrored copies).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

RESAMPLE_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)

Preprocess = Callable[[Image.Image], Image.Image]
Item = Tensor | tuple[Tensor, Tensor]


class DatasetError(ValueError):
    """A missing, empty or corrupt dataset; the message names the path and the expected layout."""


def list_image_files(folder: Path, *, recursive: bool = True) -> list[Path]:
    """The image files under ``folder``, sorted by their relative POSIX path for determinism.

    Extensions (any case): png, jpg, jpeg, webp, bmp. Hidden files and folders (names starting
    with ``.``, e.g. macOS ``._x.jpg`` forks) are skipped.
    """
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    files = [
        p
        for p in candidates
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    ]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def decode_image(source: Path | bytes, name: str | None = None) -> Image.Image:
    """Decode a file (or its encoded bytes) to an RGB image; raise :class:`DatasetError` if corrupt.

    Args:
        source: an image file path, or its encoded bytes (PNG, JPEG, WebP, BMP, ...).
        name: what to call the image in error messages (defaults to the path).
    """
    label = name if name is not None else str(source)
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(stream) as img:
            return img.convert("RGB")
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(
            f"cannot decode image {label}: {reason} (expected a PNG, JPEG, WebP or BMP image)"
        ) from exc


def image_to_tensor(img: Image.Image) -> Tensor:
    """An RGB image as a float32 tensor ``(3, H, W)`` with values ``k / 255`` in ``[0, 1]``."""
    arr = np.array(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255


def resample_filter(name: str) -> Image.Resampling:
    """Pillow's filter for ``name`` in :data:`RESAMPLE_FILTERS`."""
    try:
        return RESAMPLE_FILTERS[name]
    except KeyError:
        raise ValueError(
            f"unknown resample {name!r}; choose from {list(RESAMPLE_FILTERS)}"
        ) from None


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The central ``size x size`` window, top-left at ``((H - size) // 2, (W - size) // 2)``.

    This is score_sde's ``central_crop`` (and torchvision's ``CenterCrop`` for even margins).
    """
    w, h = img.size
    if size > min(w, h):
        raise ValueError(f"cannot center crop {size}x{size} from a {w}x{h} image")
    top, left = (h - size) // 2, (w - size) // 2
    return img.crop((left, top, left + size, top + size))


def center_crop_square(img: Image.Image) -> Image.Image:
    """The largest central square (side ``min(H, W)``), as score_sde's ``crop_resize`` takes it."""
    return center_crop(img, min(img.size))


def resize_shorter_side(img: Image.Image, size: int, resample: str = "bilinear") -> Image.Image:
    """Scale so that the shorter side is ``size`` (score_sde's ``resize_small``).

    The other side becomes ``round(side * size / min(H, W))`` (round half to even, as ``tf.round``).
    """
    w, h = img.size
    ratio = size / min(w, h)
    return img.resize((round(w * ratio), round(h * ratio)), resample_filter(resample))


def celeba_preprocess(
    img: Image.Image, image_size: int, *, crop_size: int = 140, resample: str = "bilinear"
) -> Image.Image:
    """CelebA as in Song & Ermon (2020) and score_sde: central ``140 x 140`` crop, then resize.

    The resize is Pillow's antialiased ``resample`` filter (default bilinear: score_sde's
    ``resize_small`` is ``tf.image.resize(antialias=True)`` with its default bilinear method, and
    NCSNv2's torchvision ``Resize`` is PIL bilinear too).
    """
    img = center_crop(img, crop_size)
    return img.resize((image_size, image_size), resample_filter(resample))


def lsun_preprocess(img: Image.Image, image_size: int) -> Image.Image:
    """LSUN as in score_sde's ``datasets.py``.

    * ``image_size == 128``: resize the shorter side to 128 (antialiased bilinear), then take the
      central ``128 x 128`` crop (``resize_small`` then ``central_crop``).
    * any other size: take the largest central square, then resize it to ``image_size``
      (antialiased bicubic; ``crop_resize``).
    """
    if image_size == 128:
        return center_crop(resize_shorter_side(img, image_size, "bilinear"), image_size)
    return square_preprocess(img, image_size, resample="bicubic")


def square_preprocess(
    img: Image.Image, image_size: int, *, resample: str = "bicubic"
) -> Image.Image:
    """Largest central square, then an antialiased ``resample`` resize to ``image_size``."""
    square = center_crop_square(img)
    if square.size == (image_size, image_size):
        return square
    return square.resize((image_size, image_size), resample_filter(resample))


_LMDB_ENVS: dict[Path, Any] = {}


def open_lmdb(path: Path) -> Any:
    """The read-only, lock-free lmdb environment of a folder with ``data.mdb``, one per process.

    py-lmdb refuses to open one environment twice in a process, so environments are cached by
    resolved path and shared by every dataset reading them. Forked ``DataLoader`` workers read
    through the inherited environment (no lock file, no reader table: as torchvision's LSUN
    reader does); spawned workers open their own.
    """
    try:
        import lmdb
    except ImportError as exc:
        raise ImportError(
            "reading an lmdb dataset needs the lmdb package: pip install lmdb"
        ) from exc
    key = Path(path).resolve()
    if key not in _LMDB_ENVS:
        try:
            _LMDB_ENVS[key] = lmdb.open(
                str(key), readonly=True, lock=False, readahead=False, meminit=False, subdir=True
            )
        except lmdb.Error as exc:
            raise DatasetError(
                f"cannot open lmdb {path}: {exc}; expected a folder with data.mdb mapping keys "
                "to encoded images (the LSUN export)"
            ) from exc
    return _LMDB_ENVS[key]


def lmdb_keys(env: Any, path: Path) -> list[bytes]:
    """All keys of an lmdb environment, in its (byte-wise sorted) order."""
    import lmdb

    try:
        with env.begin(write=False) as txn:
            return list(txn.cursor().iternext(keys=True, values=False))
    except lmdb.Error as exc:
        raise DatasetError(f"cannot read the keys of lmdb {path}: {exc} (corrupt?)") from exc


def lmdb_get(env: Any, key: bytes, name: str) -> bytes:
    """The value stored under ``key``; :class:`DatasetError` (naming ``name``) if unreadable."""
    import lmdb

    try:
        with env.begin(write=False) as txn:
            value = txn.get(key)
    except lmdb.Error as exc:
        raise DatasetError(f"cannot read {name}: {exc} (corrupt lmdb?)") from exc
    if value is None:
        raise DatasetError(f"{name} vanished from the lmdb")
    return bytes(value)


class ImageArrayDataset(Dataset):
    """Images held in memory as uint8, with optional integer labels.

    Attributes:
        images: uint8 ``(N, C, H, W)``.
        labels: int64 ``(N,)`` or ``None``.
        with_labels: whether items are ``(image, label)`` pairs rather than images.
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray | None = None, *, with_labels: bool = False
    ):
        if with_labels and labels is None:
            raise ValueError("with_labels=True needs labels")
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        self.labels = None if labels is None else torch.from_numpy(np.asarray(labels, np.int64))
        self.with_labels = with_labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Item:
        """Image float32 ``(C, H, W)`` in ``[0, 1]``, paired with its int64 label if requested."""
        image = self.images[index].float() / 255
        return (image, self.labels[index]) if self.with_labels else image


class ImageFileDataset(Dataset):
    """Image files decoded on access (to RGB), then preprocessed.

    Attributes:
        paths: the files, in dataset order.
        preprocess: PIL image -> PIL image (crop/resize), or ``None``.
    """

    def __init__(self, paths: Sequence[Path], preprocess: Preprocess | None = None):
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        """Float32 ``(3, H, W)`` in ``[0, 1]``; :class:`DatasetError` for a corrupt file."""
        path = self.paths[index]
        return _finish(decode_image(path), self.preprocess, str(path))


class LmdbImageDataset(Dataset):
    """Encoded images (webp/jpeg/png bytes) stored as lmdb values, as in LSUN's official export.

    The environment is shared per process (:func:`open_lmdb`), so the dataset works with
    ``DataLoader`` workers, forked or spawned. Listing the keys of the full LSUN bedroom set
    (3 million) takes a while at construction.

    Attributes:
        path: the lmdb folder (holding ``data.mdb``).
        keys: the lmdb keys, in dataset (byte-sorted) order.
        preprocess: PIL image -> PIL image, or ``None``.
    """

    def __init__(self, path: Path, preprocess: Preprocess | None = None):
        self.path = Path(path)
        self.preprocess = preprocess
        self._env: Any = open_lmdb(self.path)
        self.keys = lmdb_keys(self._env, self.path)
        if not self.keys:
            raise DatasetError(f"lmdb {self.path} holds no images; expected keys -> encoded images")

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_env": None}

    def __getitem__(self, index: int) -> Tensor:
        """Float32 ``(3, H, W)`` in ``[0, 1]``; :class:`DatasetError` for a corrupt value."""
        if self._env is None:
            self._env = open_lmdb(self.path)
        key = self.keys[index]
        name = f"{self.path} key {key.decode('utf-8', 'replace')!r}"
        value = lmdb_get(self._env, key, name)
        return _finish(decode_image(value, name), self.preprocess, name)


class MirroredDataset(Dataset):
    """A dataset followed by its horizontally mirrored copy: item ``i + N`` is item ``i`` flipped.

    Deterministic flip augmentation that needs no random draws in the dataset (StyleGAN's
    ``--mirror``): shuffled, each draw is flipped with probability 1/2, and each epoch shows both.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        base = getattr(dataset, "labels", None)
        self.labels = None if base is None else torch.cat([base, base])

    def __len__(self) -> int:
        return 2 * len(self.dataset)

    def __getitem__(self, index: int) -> Item:
        n = len(self.dataset)
        if not 0 <= index < 2 * n:
            raise IndexError(f"index {index} out of range for {2 * n} images")
        item = self.dataset[index % n]
        if index < n:
            return item
        if isinstance(item, tuple):
            return (item[0].flip(-1), *item[1:])
        return item.flip(-1)


def _finish(img: Image.Image, preprocess: Preprocess | None, name: str) -> Tensor:
    if preprocess is not None:
        try:
            img = preprocess(img)
        except ValueError as exc:
            raise DatasetError(f"cannot preprocess image {name}: {exc}") from exc
    return image_to_tensor(img)

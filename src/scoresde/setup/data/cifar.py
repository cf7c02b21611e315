"""CIFAR-10's python release, read without extracting and without trusting its pickles.

The release (``cifar-10-python.tar.gz``) holds ``cifar-10-batches-py/data_batch_1..5`` (train,
10000 images each) and ``test_batch`` (test, 10000): pickled dicts with ``b'data'``, a uint8
``(N, 3072)`` array (red, green then blue planes of 32x32, row-major) and ``b'labels'``, a list
of ``N`` ints in ``0..9``. They are unpickled by :class:`RestrictedUnpickler`, which refuses
every global but the three numpy needs to rebuild an array, so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from scoresde.setup.data.image_formats import DatasetError

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
CIFAR10_LAYOUT = (
    f"expected {CIFAR10_TARBALL} or a folder {CIFAR10_DIR}/ holding data_batch_1..5 and "
    "test_batch (pickled dicts with b'data' (N, 3072) uint8 and b'labels')"
)


def _numpy_array_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickled ndarray references: its reconstructor, ``ndarray`` and ``dtype``."""
    reconstruct = np.empty(0).__reduce__()[0]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for CIFAR-10 batches that refuses every global but numpy's array rebuilders.

    The batches hold only dicts, lists, bytes, ints and uint8 arrays, so nothing else is needed;
    a global such as ``os.system`` raises ``pickle.UnpicklingError`` before it is looked up.
    """

    _ALLOWED = _numpy_array_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is forbidden") from None


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (python 2 strings become bytes)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def parse_cifar10_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 of one pickled CIFAR-10 batch."""
    try:
        batch = restricted_loads(data)
    except Exception as exc:  # any failure of a corrupt or hostile pickle
        raise DatasetError(
            f"refusing or unable to unpickle {source}: {exc}; {CIFAR10_LAYOUT}"
        ) from exc
    if not isinstance(batch, dict):
        raise DatasetError(f"{source} holds a {type(batch).__name__}, not a dict; {CIFAR10_LAYOUT}")
    batch = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    images, labels = batch.get("data"), batch.get("labels")
    if not (
        isinstance(images, np.ndarray)
        and images.dtype == np.uint8
        and images.ndim == 2
        and images.shape[1] == 3 * 32 * 32
    ):
        raise DatasetError(f"{source} has no uint8 (N, 3072) array under b'data'; {CIFAR10_LAYOUT}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != images.shape[0]:
        raise DatasetError(f"{source} has no list of {images.shape[0]} b'labels'; {CIFAR10_LAYOUT}")
    if not all(isinstance(y, (int, np.integer)) and 0 <= y < 10 for y in labels):
        raise DatasetError(f"{source} has labels outside 0..9; {CIFAR10_LAYOUT}")
    return images.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _locate_cifar10(root: Path) -> Path:
    """The tarball or the batch folder that ``root`` names or contains."""
    if root.is_file():
        return root
    if not root.is_dir():
        raise DatasetError(f"CIFAR-10 path {root} does not exist; {CIFAR10_LAYOUT}")
    if any((root / name).is_file() for names in CIFAR10_BATCHES.values() for name in names):
        return root
    if (root / CIFAR10_DIR).is_dir():
        return root / CIFAR10_DIR
    if (root / CIFAR10_TARBALL).is_file():
        return root / CIFAR10_TARBALL
    raise DatasetError(f"no CIFAR-10 data in {root}; {CIFAR10_LAYOUT}")


def _read_tar_members(path: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The bytes of members ``cifar-10-batches-py/<name>``, in one pass without extracting."""
    wanted = {f"{CIFAR10_DIR}/{name}": name for name in names}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                fileobj = tar.extractfile(member) if name is not None else None
                if fileobj is not None:
                    found[name] = fileobj.read()
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(
            f"cannot read CIFAR-10 tarball {path}: {exc} (truncated or corrupt?); {CIFAR10_LAYOUT}"
        ) from exc
    return found


def read_cifar10(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` ("train": data_batch_1..5, "test": test_batch) from the python release.

    Args:
        root: ``cifar-10-python.tar.gz`` (read in place, not extracted), the extracted
            ``cifar-10-batches-py/`` folder, or a folder holding either.

    Returns:
        Images ``(N, 3, 32, 32)`` uint8 (N = 50000 or 10000 for the real data) and labels
        ``(N,)`` int64 in ``0..9``, batches in file order.
    """
    if split not in CIFAR10_BATCHES:
        raise ValueError(f"unknown CIFAR-10 split {split!r}; choose from {list(CIFAR10_BATCHES)}")
    names = CIFAR10_BATCHES[split]
    location = _locate_cifar10(Path(root))
    if location.is_file():
        raw = _read_tar_members(location, names)
    else:
        raw = {n: (location / n).read_bytes() for n in names if (location / n).is_file()}
    missing = [n for n in names if n not in raw]
    if missing:
        raise DatasetError(f"{location} lacks {CIFAR10_DIR}/{missing[0]}; {CIFAR10_LAYOUT}")
    parts = [parse_cifar10_batch(raw[n], f"{location}:{n}") for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

"""Image datasets from local files: tiny fakes of CIFAR-10, CelebA, LSUN and image folders."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde.core.transforms import center, random_horizontal_flip, uncenter, uniform_dequantize
from scoresde.setup.data.image_formats import DatasetError, ImageFileDataset, MirroredDataset
from scoresde.setup.data.images import (
    IMAGE_DATASETS,
    celeba,
    cifar10,
    image_batches,
    image_folder,
    load_image_dataset,
    lsun,
)

PER_BATCH = 10
BATCH_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 ``k / 255``: what the datasets must return."""
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as python 2's cPickle wrote CIFAR-10: strings as BINSTRING, numpy.core names."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _py2_dumps(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _cifar_batches(seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(seed)
    return {
        name: (
            rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
            rng.integers(0, 10, PER_BATCH).tolist(),
        )
        for name in BATCH_NAMES
    }


def _cifar_payloads(batches, *, py2: bool) -> dict[str, bytes]:
    payloads = {}
    for name, (data, labels) in batches.items():
        batch = {
            "batch_label": f"fake {name}",
            "labels": labels,
            "data": data,
            "filenames": [f"img_{i}.png" for i in range(PER_BATCH)],
        }
        if py2:
            payloads[name] = _py2_dumps(batch)
        else:
            payloads[name] = pickle.dumps({k.encode(): v for k, v in batch.items()}, protocol=4)
    return payloads


def _write_tarball(path: Path, payloads: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [("readme.html", b"<html/>"), *payloads.items()]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _write_folder(folder: Path, payloads: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in payloads.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    batches = _cifar_batches()
    root = tmp_path_factory.mktemp("cifar")
    tarball = _write_tarball(root / "cifar-10-python.tar.gz", _cifar_payloads(batches, py2=True))
    folder = _write_folder(root / "x" / "cifar-10-batches-py", _cifar_payloads(batches, py2=False))
    return batches, tarball, folder


def test_cifar10_tarball_images_labels_and_splits(fake_cifar):
    batches, tarball, _ = fake_cifar
    train = cifar10(tarball, split="train")
    test = cifar10(tarball.parent, split="test", with_labels=True)
    assert len(train) == 5 * PER_BATCH and len(test) == PER_BATCH
    x = train[13]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    data, _ = batches["data_batch_2"]
    assert torch.equal(x, torch.from_numpy(data[3].reshape(3, 32, 32)).float() / 255)
    expected_labels = [y for n in BATCH_NAMES[:5] for y in batches[n][1]]
    assert train.labels.tolist() == expected_labels and train.labels.dtype == torch.int64
    image, label = test[7]
    assert label.item() == batches["test_batch"][1][7]
    assert torch.equal(
        image * 255, torch.from_numpy(batches["test_batch"][0][7]).float().view(3, 32, 32)
    )
    levels = train.images.float()
    assert levels.min() >= 0 and levels.max() <= 255


def test_cifar10_extracted_folder_matches_tarball(fake_cifar):
    _, tarball, folder = fake_cifar
    from_tar = cifar10(tarball)
    for root in (folder, folder.parent):
        from_dir = cifar10(root)
        assert torch.equal(from_dir.images, from_tar.images)
        assert torch.equal(from_dir.labels, from_tar.labels)


def test_cifar10_truncated_tarball(fake_cifar, tmp_path):
    _, tarball, _ = fake_cifar
    cut = tmp_path / "cifar-10-python.tar.gz"
    cut.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(
        DatasetError, match=r"cannot read CIFAR-10 tarball .*cifar-10-python"
    ) as err:
        cifar10(cut)
    assert "\n" not in str(err.value) and "expected cifar-10-python.tar.gz" in str(err.value)


class _Evil:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("container", ["tarball", "folder"])
def test_cifar10_malicious_pickle_is_refused(tmp_path, container):
    marker = tmp_path / "pwned"
    payloads = _cifar_payloads(_cifar_batches(), py2=False)
    payloads["data_batch_3"] = pickle.dumps(
        {b"data": _Evil(f"touch {marker}"), b"labels": [0]}, protocol=4
    )
    if container == "tarball":
        root = _write_tarball(tmp_path / "cifar-10-python.tar.gz", payloads)
    else:
        root = _write_folder(tmp_path / "cifar-10-batches-py", payloads)
    with pytest.raises(DatasetError, match=r"data_batch_3: global (posix|os)\.system is forbidden"):
        cifar10(root)
    assert not marker.exists()


def test_cifar10_missing_or_wrong_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"CIFAR-10 path .*nowhere does not exist; expected"):
        cifar10(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"no CIFAR-10 data in .*; expected cifar-10-python"):
        cifar10(tmp_path)
    bad = _cifar_payloads(_cifar_batches(), py2=False)
    bad["test_batch"] = pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]})
    folder = _write_folder(tmp_path / "cifar-10-batches-py", bad)
    with pytest.raises(DatasetError, match=r"test_batch has no uint8 \(N, 3072\) array"):
        cifar10(folder, split="test")
    (folder / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match=r"lacks cifar-10-batches-py/data_batch_4"):
        cifar10(folder)
    with pytest.raises(ValueError, match="unknown CIFAR-10 split 'val'"):
        cifar10(folder, split="val")


def _save(arr: np.ndarray, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kwargs)
    return path


def test_celeba_crop_resize_and_partition(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "img_align_celeba"
    files = [_save(_rgb(rng, 218, 178), folder / f"{i:06d}.jpg") for i in (3, 1, 2, 4)]
    ds = celeba(tmp_path)
    assert [p.name for p in ds.paths] == ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]
    decoded = np.asarray(Image.open(files[0]).convert("RGB"))
    crop = decoded[39 : 39 + 140, 19 : 19 + 140]
    expected = Image.fromarray(crop).resize((64, 64), Image.Resampling.BILINEAR)
    x = ds[2]
    assert x.shape == (3, 64, 64)
    assert torch.equal(x, _as_tensor(np.asarray(expected)))
    small = celeba(folder, image_size=32, resample="bicubic")[2]
    expected_small = Image.fromarray(crop).resize((32, 32), Image.Resampling.BICUBIC)
    assert torch.equal(small, _as_tensor(np.asarray(expected_small)))
    with pytest.raises(DatasetError, match=r"needs list_eval_partition\.txt"):
        celeba(tmp_path, split="test")
    lines = ["000001.jpg 0", "000002.jpg 0", "000003.jpg 1", "000004.jpg 2"]
    (tmp_path / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    assert [len(celeba(folder, split=s)) for s in ("train", "validation", "test")] == [2, 1, 1]
    assert celeba(tmp_path, split="test").paths[0].name == "000004.jpg"


def _webp(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="WEBP", lossless=True)
    return buf.getvalue()


def _write_lmdb(path: Path, items: dict[bytes, bytes]) -> Path:
    lmdb = pytest.importorskip("lmdb")
    path.mkdir(parents=True)
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, value)
    env.close()
    return path


@pytest.fixture(scope="module")
def lsun_images():
    rng = np.random.default_rng(2)
    keys = [b"b7a1", b"0f3c", b"a000"]
    return {key: _rgb(rng, 36, 48) for key in keys}


def _lsun_expected(arr: np.ndarray, size: int) -> torch.Tensor:
    img = Image.fromarray(arr)
    if size == 128:
        wide = img.resize((171, 128), Image.Resampling.BILINEAR)
        out = wide.crop((21, 0, 149, 128))
    else:
        out = img.crop((6, 0, 42, 36)).resize((size, size), Image.Resampling.BICUBIC)
    return _as_tensor(np.asarray(out))


def test_lsun_lmdb_and_folder(tmp_path, lsun_images):
    export = _write_lmdb(
        tmp_path / "bedroom_train_lmdb", {k: _webp(v) for k, v in lsun_images.items()}
    )
    ds = lsun(export, image_size=16)
    assert ds.keys == sorted(lsun_images) and len(ds) == 3
    for i, key in enumerate(sorted(lsun_images)):
        assert ds[i].shape == (3, 16, 16)
        assert torch.equal(ds[i], _lsun_expected(lsun_images[key], 16))
    big = lsun(export / "data.mdb", image_size=128)
    assert torch.equal(big[0], _lsun_expected(lsun_images[b"0f3c"], 128))
    restored = pickle.loads(pickle.dumps(ds))
    assert torch.equal(restored[1], ds[1])
    batch = next(image_batches(ds, 2, seed=0, random_flip=False, num_workers=1))
    assert all(any(torch.equal(img, ds[i]) for i in range(3)) for img in batch)

    _write_lmdb(tmp_path / "bedroom_val_lmdb", {b"k": _webp(lsun_images[b"a000"])})
    assert len(lsun(tmp_path, split="train", image_size=16)) == 3
    val = lsun(tmp_path, split="validation", image_size=16)
    assert len(val) == 1 and torch.equal(val[0], ds[1])

    folder = tmp_path / "images"
    for key, arr in lsun_images.items():
        _save(arr, folder / f"{key.decode()}.png")
    from_folder = lsun(folder, image_size=16)
    assert len(from_folder) == 3
    for i in range(3):
        assert torch.equal(from_folder[i], ds[i])


def test_lsun_corrupt_value_and_bad_lmdb(tmp_path):
    export = _write_lmdb(tmp_path / "church_train_lmdb", {b"bad": b"not an image at all"})
    with pytest.raises(DatasetError, match=r"cannot decode image .*church_train_lmdb key 'bad'"):
        lsun(export)[0]
    broken = tmp_path / "broken_lmdb"
    broken.mkdir()
    (broken / "data.mdb").write_bytes(b"\0" * 8192)
    with pytest.raises(DatasetError, match=r"cannot open lmdb .*broken_lmdb"):
        lsun(broken)


@pytest.fixture
def nested_folder(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {}
    specs = [
        ("b/02.png", {}),
        ("a/x/10.bmp", {}),
        ("a/01.webp", {"lossless": True}),
        ("c.PNG", {}),
        ("a/05.jpg", {"quality": 95}),
        ("d/03.JPEG", {"format": "JPEG"}),
    ]
    for name, kwargs in specs:
        arrays[name] = _rgb(rng, 12, 16)
        _save(arrays[name], tmp_path / name, **kwargs)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    _save(_rgb(rng, 12, 16), tmp_path / ".hidden" / "skip.png")
    return tmp_path, arrays


def test_image_folder_order_pixels_and_resize(nested_folder):
    root, arrays = nested_folder
    ds = image_folder(root)
    names = [p.relative_to(root).as_posix() for p in ds.paths]
    assert names == ["a/01.webp", "a/05.jpg", "a/x/10.bmp", "b/02.png", "c.PNG", "d/03.JPEG"]
    for name in ("a/01.webp", "a/x/10.bmp", "b/02.png", "c.PNG"):
        assert torch.equal(ds[names.index(name)], _as_tensor(arrays[name]))
    jpeg = ds[names.index("a/05.jpg")]
    assert jpeg.shape == (3, 12, 16) and jpeg.min() >= 0 and jpeg.max() <= 1
    assert torch.equal(jpeg * 255, (jpeg * 255).round())
    decoded = np.asarray(Image.open(root / "a" / "05.jpg").convert("RGB"))
    assert torch.equal(jpeg, _as_tensor(decoded))
    small = image_folder(root, image_size=8)
    square = Image.fromarray(arrays["b/02.png"]).crop((2, 0, 14, 12))
    expected = square.resize((8, 8), Image.Resampling.BICUBIC)
    assert torch.equal(small[names.index("b/02.png")], _as_tensor(np.asarray(expected)))
    for name in ("celebahq", "ffhq", "folder"):
        same = load_image_dataset(name, root, image_size=8)
        assert len(same) == 6 and torch.equal(same[3], small[3])
    assert [p.name for p in image_folder(root, split="a").paths] == ["01.webp", "05.jpg", "10.bmp"]


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"image path .*missing does not exist; expected image"):
        image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no images in image folder .*empty; expected image"):
        load_image_dataset("ffhq", tmp_path / "empty")
    with pytest.raises(DatasetError, match=r"no test/ subfolder"):
        image_folder(tmp_path / "empty", split="test")
    with pytest.raises(DatasetError, match=r"no images in CelebA folder"):
        celeba(tmp_path / "empty")
    with pytest.raises(DatasetError, match=r"LSUN path .*nope does not exist"):
        lsun(tmp_path / "nope")
    bad = tmp_path / "bad"
    _save(np.zeros((4, 4, 3), np.uint8), bad / "ok.png")
    (bad / "truncated.png").write_bytes((bad / "ok.png").read_bytes()[:20])
    ds = image_folder(bad)
    assert ds[0].shape == (3, 4, 4)
    with pytest.raises(DatasetError, match=r"cannot decode image .*truncated\.png") as err:
        ds[1]
    assert "\n" not in str(err.value)


def test_dispatcher_choices_and_mirroring(fake_cifar, nested_folder):
    with pytest.raises(ValueError, match=r"unknown image dataset 'mnist'; choose from .*'cifar10'"):
        load_image_dataset("mnist", ".")
    assert IMAGE_DATASETS == ("cifar10", "celeba", "lsun", "celebahq", "ffhq", "folder")
    _, tarball, _ = fake_cifar
    with pytest.raises(ValueError, match="32x32"):
        load_image_dataset("cifar10", tarball, image_size=64)
    mirrored = load_image_dataset(
        "cifar10", tarball, split="test", random_flip=True, with_labels=True
    )
    assert isinstance(mirrored, MirroredDataset) and len(mirrored) == 2 * PER_BATCH
    (a, ya), (b, yb) = mirrored[2], mirrored[PER_BATCH + 2]
    assert torch.equal(b, a.flip(-1)) and ya == yb and len(mirrored.labels) == 2 * PER_BATCH
    root, _ = nested_folder
    folder = load_image_dataset("folder", root, image_size=8, random_flip=True)
    assert torch.equal(folder[6 + 1], folder[1].flip(-1))
    with pytest.raises(IndexError):
        folder[12]


def test_random_horizontal_flip_exact():
    x = torch.arange(8 * 2 * 3 * 4, dtype=torch.float32).view(8, 2, 3, 4)
    out = random_horizontal_flip(x, torch.Generator().manual_seed(0))
    flipped = [True, False, True, True, True, False, True, False]  # torch.rand(8) < 0.5, seed 0
    for i, f in enumerate(flipped):
        assert torch.equal(out[i], x[i].flip(-1) if f else x[i])
    assert torch.equal(x, torch.arange(8 * 2 * 3 * 4, dtype=torch.float32).view(8, 2, 3, 4))


def test_center_uncenter_and_dequantize():
    x = torch.tensor([0.0, 0.5, 1.0])
    assert torch.equal(center(x), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(uncenter(center(x)), x)
    u = uniform_dequantize(x, generator=torch.Generator().manual_seed(0))
    assert torch.all((u * 256).floor() == torch.tensor([0.0, 128.0, 255.0]))


def test_image_batches_shuffle_epochs_flips_and_labels(fake_cifar):
    _, tarball, _ = fake_cifar
    ds = cifar10(tarball, split="train")
    originals = {ds.images[i].numpy().tobytes(): i for i in range(len(ds))}
    mirrors = {ds.images[i].flip(-1).numpy().tobytes(): i for i in range(len(ds))}

    def take(seed, n, **kwargs):
        it = image_batches(ds, 16, seed=seed, **kwargs)
        return [next(it) for _ in range(n)]

    plain = take(0, 3, random_flip=False)
    assert all(b.shape == (16, 3, 32, 32) and b.dtype == torch.float32 for b in plain)
    ids = [
        originals[(img * 255).round().to(torch.uint8).numpy().tobytes()] for b in plain for img in b
    ]
    assert len(set(ids)) == 48 and ids != sorted(ids)
    more = take(0, 7, random_flip=False)
    assert all(torch.equal(a, b) for a, b in zip(plain, more[:3], strict=True))
    assert len(more) == 7
    assert not torch.equal(take(1, 1, random_flip=False)[0], plain[0])

    flipped_batches = take(0, 4, random_flip=True)
    assert all(
        torch.equal(a, b)
        for a, b in zip(flipped_batches, take(0, 4, random_flip=True), strict=True)
    )
    n_flipped = 0
    for batch in flipped_batches:
        for img in batch:
            key = (img * 255).round().to(torch.uint8).numpy().tobytes()
            assert key in originals or key in mirrors
            n_flipped += key not in originals
    assert 0 < n_flipped < 64

    labeled = cifar10(tarball, split="test", with_labels=True)
    images, labels = next(
        image_batches(labeled, 4, seed=0, random_flip=False)
    )
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4,) and labels.dtype == torch.int64
    for img, y in zip(images, labels, strict=True):
        i = next(j for j in range(PER_BATCH) if torch.equal(labeled[j][0], img))
        assert labeled.labels[i] == y
    with pytest.raises(ValueError, match="yields no batch of 64"):
        next(image_batches(labeled, 64, seed=0, random_flip=False))
    partial = image_batches(
        labeled, 4, seed=0, random_flip=False, drop_last=False
    )
    assert [len(next(partial)[0]) for _ in range(4)] == [4, 4, 2, 4]


def test_image_batches_with_workers(nested_folder):
    root, _ = nested_folder
    ds = image_folder(root, image_size=8)
    assert isinstance(ds, ImageFileDataset)
    kwargs = {"random_flip": True, "num_workers": 2}
    a = image_batches(ds, 3, seed=5, **kwargs)
    b = image_batches(ds, 3, seed=5, **kwargs)
    for _ in range(3):
        assert torch.equal(next(a), next(b))


def test_image_batches_resume_at_any_batch(fake_cifar):
    """Batch k depends on the seed and k only: start=k continues a run exactly, across epochs
    and with flips and workers."""
    _, tarball, _ = fake_cifar
    ds = cifar10(tarball, split="train", with_labels=True)
    per_epoch = len(ds) // 16
    straight = image_batches(ds, 16, seed=3, random_flip=True)
    batches = [next(straight) for _ in range(per_epoch + 3)]
    for k in (1, per_epoch - 1, per_epoch + 1):
        resumed = image_batches(ds, 16, seed=3, random_flip=True, start=k, num_workers=k % 2)
        for expected in batches[k:k + 2]:
            images, labels = next(resumed)
            assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])
    assert not torch.equal(batches[0][0], batches[per_epoch][0])  # the next epoch reshuffles

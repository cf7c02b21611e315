import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde.infra.viz import save_image_grid, save_loss_curve, save_scatter


def test_image_grid_geometry_and_pixels(tmp_path):
    images = torch.arange(10, dtype=torch.float32).div(10).reshape(10, 1, 1, 1).expand(10, 1, 8, 8)
    images = images.clone()
    images[0, 0, 1, 5] = 1.0  # one bright pixel in the first image
    path = save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=4, upscale=3, padding=2)
    assert path == tmp_path / "sub" / "grid.png"
    img = Image.open(path)
    assert img.mode == "L"
    assert img.size == (4 * (8 * 3 + 2) + 2, 3 * (8 * 3 + 2) + 2) == (106, 80)
    px = np.asarray(img)
    cell = 8 * 3 + 2
    for i in range(10):
        top, left = (i // 4) * cell + 2, (i % 4) * cell + 2
        assert px[top + 20, left + 20] == round(i / 10 * 255)
    assert px[0, 0] == 255 and px[2 + 24, 2 + 24] == 255  # border and gap: pad_value 1.0
    assert px[2 * cell + 2 + 5, 3 * cell + 2 + 5] == 255  # empty 12th cell
    # nearest-neighbour upscaling: source pixel (1, 5) is the 3x3 block at rows 5-7, cols 17-19
    assert (px[2 + 3 : 2 + 6, 2 + 15 : 2 + 18] == 255).all()
    assert px[2 + 2, 2 + 16] == 0 and px[2 + 6, 2 + 16] == 0 and px[2 + 4, 2 + 14] == 0


def test_image_grid_accepts_numpy_nhw_clips_and_rgb(tmp_path):
    arr = np.zeros((3, 2, 2), dtype=np.float64)
    arr[0] = -1.0
    arr[1] = 2.0
    arr[2] = 0.5
    px = np.asarray(Image.open(save_image_grid(arr, tmp_path / "a.png", upscale=1, padding=0)))
    assert px.shape == (2, 6)
    assert px[:, :2].max() == 0 and px[:, 2:4].min() == 255 and (px[:, 4:] == 128).all()

    rgb = torch.zeros(2, 3, 4, 4)
    rgb[1, 0] = 1.0  # red
    rgb[1, 2] = 0.2
    img = Image.open(save_image_grid(rgb, tmp_path / "rgb.png", nrow=8, upscale=2, padding=1))
    assert img.mode == "RGB" and img.size == (2 * 9 + 1, 9 + 1)
    assert img.getpixel((9 + 1 + 3, 1 + 3)) == (255, 0, 51)
    assert img.getpixel((1, 1)) == (0, 0, 0)


def test_image_grid_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        save_image_grid(torch.zeros(2, 2, 8, 8), tmp_path / "x.png")
    with pytest.raises(ValueError, match="expected"):
        save_image_grid(torch.zeros(0, 1, 8, 8), tmp_path / "x.png")
    with pytest.raises(ValueError, match="nrow"):
        save_image_grid(torch.zeros(2, 1, 8, 8), tmp_path / "x.png", upscale=0)


def _count_near(px: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(px[..., :3].astype(int) - np.array(rgb)).max(axis=-1) < tol).sum())


def test_scatter_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = save_scatter(
        torch.randn(500, 2, generator=g),
        tmp_path / "s.png",
        reference=np.random.default_rng(0).normal(size=(300, 2)) + 3,
        title="samples",
    )
    img = Image.open(path)
    assert img.format == "PNG" and img.size == (500, 500)
    px = np.asarray(img.convert("RGB"))
    assert _count_near(px, (31, 119, 180)) > 200  # Matplotlib's C0 blue: the samples
    assert _count_near(px, (179, 179, 179), tol=15) > 100  # grey reference points
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        save_scatter(torch.zeros(5, 3), tmp_path / "bad.png")


def test_loss_curve_png(tmp_path):
    steps = np.arange(1, 201)
    path = save_loss_curve(steps, 1.0 / steps, tmp_path / "l.png", title="loss")
    img = Image.open(path)
    assert img.format == "PNG" and img.size == (600, 400)
    assert _count_near(np.asarray(img.convert("RGB")), (31, 119, 180)) > 100
    path = save_loss_curve(torch.arange(3), torch.tensor([0.5, -0.1, 0.2]), tmp_path / "n.png")
    assert Image.open(path).size == (600, 400)
    with pytest.raises(ValueError, match="differ in length"):
        save_loss_curve([1, 2], [0.5], tmp_path / "bad.png")


def test_import_leaves_the_matplotlib_backend_alone():
    code = (
        "import sys, matplotlib; raw = lambda: dict.__getitem__(matplotlib.rcParams, 'backend'); "
        "before = raw(); import scoresde.infra.viz; "
        "assert 'matplotlib.pyplot' not in sys.modules; "
        "assert raw() == before, (before, raw()); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"

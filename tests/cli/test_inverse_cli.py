"""The general linear inverse problem (app. I) with exact Gaussian scores, and the ``inpaint``
and ``colorize`` subcommands on a tiny digits run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde import VESDE
from scoresde.cli import main
from scoresde.methods.inverse import OrthogonalOperator, linear_inverse

F64 = torch.float64


def _gaussian_score_fn(sde, mu, sigma):
    """Exact score of ``N(m mu, m^2 Sigma + s^2 I)`` for data ``(B, D)``."""
    eye = torch.eye(len(mu), dtype=F64)

    def score_fn(x, t):
        m, s = sde.marginal_coeffs(t)
        cov = m[:, None, None] ** 2 * sigma + s[:, None, None] ** 2 * eye
        return -torch.linalg.solve(cov, x - m[:, None] * mu)

    return score_fn


@pytest.mark.usefixtures("single_thread")
def test_orthogonal_projection_samples_the_gaussian_conditional():
    """Measure ``z_k = (Q x)_{:k}`` for a random orthogonal ``Q``: in the ``Q`` basis the data
    are ``N(Q mu, Q Sigma Q^T)`` and the rest ``z_u`` follows the Gaussian conditional."""
    gen = torch.Generator().manual_seed(0)
    d, k, n = 3, 1, 3000
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    mu = torch.tensor([0.5, -1.0, 0.3], dtype=F64)
    a = torch.randn(d, d, generator=gen, dtype=F64)
    sigma = 0.2 * a @ a.T + 0.1 * torch.eye(d, dtype=F64)
    sde = VESDE()
    mask = torch.tensor([1.0] * k + [0.0] * (d - k), dtype=F64)
    op = OrthogonalOperator(q, mask)
    x0 = mu + torch.linalg.cholesky(sigma) @ torch.randn(d, generator=gen, dtype=F64)
    y = op.forward(x0.expand(n, d).clone())
    x = linear_inverse(
        sde,
        _gaussian_score_fn(sde, mu, sigma),
        y,
        op,
        generator=torch.Generator().manual_seed(1),
        predictor="reverse_diffusion",
        corrector="langevin",
        snr=0.16,
        n_steps=1,
        num_steps=300,
    )
    z = op.to_basis(x)
    torch.testing.assert_close(z[:, :k], y[:, :k], rtol=0, atol=1e-12)
    qmu, qs = q @ mu, q @ sigma @ q.T
    gain = qs[k:, :k] @ torch.linalg.inv(qs[:k, :k])
    cond_mean = qmu[k:] + gain @ (y[0, :k] - qmu[:k])
    cond_cov = qs[k:, k:] - gain @ qs[:k, k:]
    cond_std = cond_cov.diagonal().sqrt()
    zu = z[:, k:]
    err = (zu.mean(0) - cond_mean).abs()
    assert bool((err < 4 * cond_std / math.sqrt(n) + 0.015).all()), (zu.mean(0), cond_mean)
    cov = torch.cov(zu.T)
    tol = (4 / math.sqrt(n) + 0.05) * cond_std[:, None] * cond_std[None, :]
    assert bool(((cov - cond_cov).abs() < tol).all()), (cov, cond_cov)


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    from scoresde.jobs.training.loop import train
    from scoresde.setup.config_io import apply_overrides
    from scoresde.setup.presets import get_preset

    out = tmp_path_factory.mktemp("digitsrun")
    cfg = apply_overrides(
        get_preset("digits_subvp"),
        ["train.steps=2", "train.batch_size=16", "model.nf=8", "device=cpu"],
    )
    train(cfg, out, progress=False)
    return out / "checkpoint.safetensors"


def _one_line_error(code, err):
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def _inpaint_argv(checkpoint, folder, out):
    """``scoresde inpaint`` of ``folder/in.npy`` with ``folder/mask.png`` into ``out``."""
    return [
        "inpaint",
        "--checkpoint",
        str(checkpoint),
        "--image",
        str(folder / "in.npy"),
        "--mask",
        str(folder / "mask.png"),
        "--out",
        str(out),
    ]


def test_inpaint_cli_keeps_known_pixels(digits_checkpoint, tmp_path, capsys):
    gen = np.random.default_rng(0)
    images = gen.integers(0, 256, size=(2, 1, 8, 8)).astype(np.uint8)
    np.save(tmp_path / "in.npy", images)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:4] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    options = ["--set", "sample.num_steps=5", "--threads", "1", "--no-progress"]
    code = main([*_inpaint_argv(digits_checkpoint, tmp_path, out), *options])
    assert code == 0, capsys.readouterr().err
    result = np.load(out / "inpainted.npy")
    assert result.shape == (2, 1, 8, 8)
    known = images[:, :, :4].astype(np.float32) / 255
    np.testing.assert_allclose(result[:, :, :4], known, rtol=0, atol=1e-5)
    assert (out / "inpainted.png").is_file()
    # a second run refuses to overwrite, in one line
    code = main(_inpaint_argv(digits_checkpoint, tmp_path, out))
    _one_line_error(code, capsys.readouterr().err)


def test_inpaint_cli_rejects_a_mask_of_the_wrong_size(digits_checkpoint, tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.zeros((1, 1, 8, 8), dtype=np.float32))
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(tmp_path / "mask.png")
    code = main(_inpaint_argv(digits_checkpoint, tmp_path, tmp_path / "out"))
    _one_line_error(code, capsys.readouterr().err)


def test_colorize_cli_needs_an_rgb_model(digits_checkpoint, tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "grey.png")
    code = main(
        [
            "colorize",
            "--checkpoint",
            str(digits_checkpoint),
            "--image",
            str(tmp_path / "grey.png"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    _one_line_error(code, capsys.readouterr().err)


def test_colorize_cli_keeps_the_grey_of_an_rgb_model(tmp_path, capsys):
    from scoresde.jobs.training.loop import train
    from scoresde.setup.config_io import apply_overrides
    from scoresde.setup.presets import get_preset

    gen = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        Image.fromarray(gen.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"{i}.png"
        )
    cfg = apply_overrides(
        get_preset("vp_cifar10_ddpmpp_continuous"),
        [
            "data.dataset=folder",
            f"data.root={tmp_path / 'imgs'}",
            "data.image_size=8",
            "model.nf=8",
            "model.ch_mult=1",
            "model.num_res_blocks=1",
            "train.steps=1",
            "train.batch_size=4",
            "device=cpu",
        ],
    )
    result = train(cfg, tmp_path / "run", progress=False)
    grey = gen.integers(0, 256, (2, 8, 8)).astype(np.uint8)
    np.save(tmp_path / "grey.npy", grey)
    out = tmp_path / "out"
    code = main(
        [
            "colorize",
            "--checkpoint",
            str(result.checkpoint),
            "--image",
            str(tmp_path / "grey.npy"),
            "--out",
            str(out),
            "--set",
            "sample.num_steps=3",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    colour = np.load(out / "colorized.npy")
    assert colour.shape == (2, 3, 8, 8) and (out / "colorized.png").is_file()
    # The command is the library's colorization (whose grey is kept exactly: test_inverse.py),
    # with the run's seed and the same per-image streams.
    from scoresde.jobs.image_jobs import colorize_images
    from scoresde.jobs.runs import load_trained

    run = load_trained(result.checkpoint, device="cpu")
    expected = colorize_images(
        run, torch.from_numpy(grey / 255).float(), seed=run.cfg.seed, num_steps=3
    )
    np.testing.assert_allclose(colour, expected.numpy(), atol=1e-5)
    assert not np.allclose(colour[:, 0], colour[:, 1])  # colour was added


def test_user_images_come_from_a_file_a_folder_an_npy_or_an_npz(tmp_path):
    from scoresde.jobs.image_jobs import read_user_images

    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(pixels).save(tmp_path / "one.png")
    one = read_user_images(tmp_path / "one.png")
    assert one.shape == (1, 3, 8, 8) and float(one[0, 0, 0, 1]) == pytest.approx(1 / 255)
    np.savez(tmp_path / "named.npz", images=pixels[None], other=np.zeros(3))
    assert torch.equal(
        read_user_images(tmp_path / "named.npz"), torch.from_numpy(pixels[None] / 255).float()
    )
    np.savez(tmp_path / "two.npz", a=pixels[None], b=pixels[None])
    with pytest.raises(ValueError, match="expected an 'images' array or one array"):
        read_user_images(tmp_path / "two.npz")
    with pytest.raises(ValueError, match="does not exist"):
        read_user_images(tmp_path / "missing.npz")

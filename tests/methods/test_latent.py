"""The probability-flow latent space: encode/decode round trips with exact mixture scores, the
closed-form encoding of Gaussian data, slerp, interpolation, and the ``encode``/``interpolate``
commands on a tiny digits checkpoint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde.cli import main
from scoresde.core.mixture import GaussianMixture, mixture_score_fn
from scoresde.methods.latent import decode, encode, interpolate, slerp

F64 = torch.float64
SDES = {"VE": VESDE(sigma_max=50.0), "VP": VPSDE(), "subVP": SubVPSDE()}
EPS = 1e-3

# zero overall mean, so the latents of its samples follow the prior up to second order
MIX = GaussianMixture(
    torch.tensor([0.3, 0.7], dtype=F64),
    torch.tensor([[-2.8, 1.4], [1.2, -0.6]], dtype=F64),
    torch.tensor([0.3, 0.5], dtype=F64),
)
MU = torch.tensor([0.7, -0.4], dtype=F64)
S0 = 0.3
GAUSS = GaussianMixture(torch.ones(1, dtype=F64), MU[None], torch.tensor([S0], dtype=F64))


def gaussian_encoding(sde, x):
    """The exact probability-flow map from ``eps`` to ``T`` of data ``N(mu, s0^2 I)``.

    The marginals are ``N(m(t) mu, v(t) I)`` with ``v = m^2 s0^2 + std^2``; the flow is affine
    and maps quantiles: ``z = m(T) mu + sqrt(v(T) / v(eps)) (x - m(eps) mu)``.
    """
    m0, s0 = (float(v) for v in sde.marginal_coeffs(torch.tensor([EPS], dtype=F64)))
    m1, s1 = (float(v) for v in sde.marginal_coeffs(torch.tensor([sde.T], dtype=F64)))
    v0, v1 = m0**2 * S0**2 + s0**2, m1**2 * S0**2 + s1**2
    return m1 * MU + math.sqrt(v1 / v0) * (x - m0 * MU)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_decode_inverts_encode(name):
    sde = SDES[name]
    score_fn = mixture_score_fn(sde, MIX)
    x = MIX.sample(64, generator=torch.Generator().manual_seed(0))
    z, nfe_z = encode(sde, score_fn, x)
    back, nfe_x = decode(sde, score_fn, z)
    assert z.shape == x.shape and back.shape == x.shape and nfe_z > 0 and nfe_x > 0
    assert float((back - x).abs().max()) < 1e-3
    assert float((z - x).abs().max()) > 0.1  # the encoding moved the points


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_latents_of_data_follow_the_prior(name):
    sde = SDES[name]
    x = MIX.sample(2000, generator=torch.Generator().manual_seed(1))
    z, _ = encode(sde, mixture_score_fn(sde, MIX), x, rtol=1e-4, atol=1e-4)
    prior_std = sde.prior_std
    # 2000 draws: the standard error of the mean is 2% and of the std 1.6% of prior_std
    assert float(z.mean(0).abs().max()) < 0.08 * prior_std
    assert float((z.std(0) / prior_std - 1).abs().max()) < 0.06
    assert abs(float((z[:, 0] * z[:, 1]).mean()) / prior_std**2) < 0.08  # uncorrelated


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("name", ["VE", "VP", "subVP"])
def test_encoding_of_gaussian_data_is_the_closed_form_affine_map(name):
    sde = SDES[name]
    score_fn = mixture_score_fn(sde, GAUSS)
    x = GAUSS.sample(32, generator=torch.Generator().manual_seed(2))
    z, _ = encode(sde, score_fn, x)
    expected = gaussian_encoding(sde, x)
    scale = float(expected.abs().max())
    assert float((z - expected).abs().max()) < 1e-3 * max(scale, 1.0)


def test_slerp_endpoints_norms_and_fallback():
    gen = torch.Generator().manual_seed(3)
    z0 = torch.randn(3, 4, 4, generator=gen, dtype=F64)
    z1 = torch.randn(3, 4, 4, generator=gen, dtype=F64)
    z1 = z1 * z0.norm() / z1.norm()
    alphas = torch.linspace(0, 1, 7, dtype=F64)
    frames = slerp(z0, z1, alphas)
    assert frames.shape == (7, 3, 4, 4)
    assert torch.equal(frames[0], z0) and torch.equal(frames[-1], z1)
    norms = frames.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, float(z0.norm())))
    # the angle grows linearly with alpha
    angles = torch.arccos(((frames.flatten(1) @ z0.flatten()) / norms**2).clamp(-1, 1))
    torch.testing.assert_close(angles, alphas * angles[-1])
    # parallel vectors fall back to linear interpolation
    par = slerp(z0, 2 * z0, alphas)
    torch.testing.assert_close(par, (1 + alphas).reshape(-1, 1, 1, 1) * z0)
    zero = slerp(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64), alphas)
    torch.testing.assert_close(zero, alphas[:, None].expand(7, 2))
    assert torch.isfinite(par).all() and torch.isfinite(zero).all()
    with pytest.raises(ValueError, match="one shape"):
        slerp(z0, z1[0], alphas)


@pytest.mark.usefixtures("single_thread")
def test_interpolate_ends_at_the_inputs():
    sde = SDES["VP"]
    score_fn = mixture_score_fn(sde, MIX)
    x0, x1 = MIX.sample(2, generator=torch.Generator().manual_seed(4))
    frames, info = interpolate(sde, score_fn, x0, x1, num=5)
    assert frames.shape == (5, 2) and info["alphas"].shape == (5,)
    assert info["latents"].shape == (2, 2) and info["nfe_encode"] > 0 and info["nfe_decode"] > 0
    torch.testing.assert_close(frames[0], x0, rtol=0, atol=1e-3)
    torch.testing.assert_close(frames[-1], x1, rtol=0, atol=1e-3)
    z = info["latents"]
    torch.testing.assert_close(frames, decode(sde, score_fn, slerp(z[0], z[1], info["alphas"]))[0])
    with pytest.raises(ValueError, match="num >= 2"):
        interpolate(sde, score_fn, x0, x1, num=1)


# --------------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------------

FAST = ["--set", "sample.ode_rtol=1e-3", "--set", "sample.ode_atol=1e-3", "--threads", "1"]


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    from scoresde.jobs.training.loop import train
    from scoresde.setup.config_io import apply_overrides
    from scoresde.setup.presets import get_preset

    out = tmp_path_factory.mktemp("digits")
    overrides = ["train.steps=2", "train.batch_size=16", "model.nf=8", "device=cpu"]
    result = train(apply_overrides(get_preset("digits_subvp"), overrides), out, progress=False)
    return result.checkpoint


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory):
    from scoresde.setup.data.digits import load_digits_split

    path = tmp_path_factory.mktemp("images") / "digits.npy"
    np.save(path, load_digits_split()[1][:4, 0].numpy())  # (4, 8, 8): no channel axis
    return path


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_encode_command_writes_latents_and_decoded(
    digits_checkpoint, digit_images, tmp_path, capsys
):
    out = tmp_path / "enc"
    args = ["encode", "--checkpoint", str(digits_checkpoint), "--images", str(digit_images)]
    code, stdout, err = _run(capsys, *args, "--out", str(out), "--device", "cpu", *FAST)
    assert code == 0, err
    assert np.load(out / "latents.npy").shape == (4, 1, 8, 8)
    assert (out / "decoded.png").exists()
    summary = json.loads(stdout)
    assert summary["num_images"] == 4 and summary["nfe_encode"] > 0
    # a second run into the same folder is refused before any work
    code, _, err = _run(capsys, *args, "--out", str(out), *FAST)
    assert code == 2 and "already holds" in err and len(err.strip().splitlines()) == 1


def test_interpolate_command_writes_frames_and_strip(
    digits_checkpoint, digit_images, tmp_path, capsys
):
    out = tmp_path / "interp"
    code, stdout, err = _run(
        capsys,
        "interpolate",
        "--checkpoint",
        str(digits_checkpoint),
        "--images",
        str(digit_images),
        "--first",
        "0",
        "--second",
        "3",
        "--num",
        "5",
        "--out",
        str(out),
        "--device",
        "cpu",
        *FAST,
    )
    assert code == 0, err
    frames = np.load(out / "frames.npy")
    assert frames.shape == (5, 1, 8, 8) and frames.min() >= 0 and frames.max() <= 1
    assert (out / "interpolation.png").exists()
    assert json.loads(stdout)["alphas"] == pytest.approx([0, 0.25, 0.5, 0.75, 1])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num", "1"], "--num must be >= 2"),
        (["--second", "9"], "holds 4 images"),
        (["--images", "missing.npy"], "does not exist"),
        (["--set", "train.lr=1"], "only sample.* fields"),
    ],
)
def test_interpolate_bad_arguments_are_one_line_errors(
    digits_checkpoint, digit_images, tmp_path, capsys, extra, message
):
    args = ["interpolate", "--checkpoint", str(digits_checkpoint), "--images", str(digit_images)]
    code, _, err = _run(capsys, *args, "--out", str(tmp_path / "o"), *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_encode_rejects_images_of_another_shape(digits_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 1, 4, 4), dtype=np.float32))
    code, _, err = _run(
        capsys,
        "encode",
        "--checkpoint",
        str(digits_checkpoint),
        "--images",
        str(bad),
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and "the model takes (1, 8, 8)" in err, err


@pytest.mark.parametrize("command", ["encode", "interpolate"])
def test_help_gives_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "example: scoresde " + command in capsys.readouterr().out

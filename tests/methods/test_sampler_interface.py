"""One sampler interface: ``sample(method=...)`` over the ``SAMPLERS`` table, projections,
callbacks, and samples that do not depend on the batch they are drawn in."""

import json

import numpy as np
import pytest
import torch

import scoresde
from scoresde.cli import main
from scoresde.core.mixture import GaussianMixture, mixture_score_fn
from scoresde.core.seeding import SampleStreams
from scoresde.methods.inverse import inpaint
from scoresde.methods.sampling import check_sampler, sampler_options

MIX = GaussianMixture(
    torch.tensor([0.3, 0.7]), torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), torch.tensor([0.3, 0.5])
)


@pytest.fixture(params=["ve", "vp", "subvp"])
def sde(request):
    return {"ve": scoresde.VESDE(sigma_max=8.0), "vp": scoresde.VPSDE(),
            "subvp": scoresde.SubVPSDE()}[request.param]


def test_the_table_holds_pc_and_ode():
    assert set(scoresde.SAMPLERS) >= {"pc", "ode"}
    assert "snr" in sampler_options("pc") and "rtol" in sampler_options("ode")


def test_sample_pc_equals_pc_sample_for_the_same_generator(sde):
    score_fn = mixture_score_fn(sde, MIX)
    x_T = sde.prior_sampling((50, 2), torch.Generator().manual_seed(0))
    direct = scoresde.pc_sample(sde, score_fn, x_T, num_steps=40,
                                generator=torch.Generator().manual_seed(1))
    via, info = scoresde.sample(sde, score_fn, x_T, method="pc", num_steps=40,
                                generator=torch.Generator().manual_seed(1))
    assert torch.equal(direct, via)
    assert info == {"nfe": 40 * 2 + 1, "num_steps": 40}


def test_sample_ode_equals_ode_sample(sde):
    score_fn = mixture_score_fn(sde, MIX)
    x_T = sde.prior_sampling((20, 2), torch.Generator().manual_seed(0))
    direct, nfe = scoresde.ode_sample(sde, score_fn, x_T, rtol=1e-4, atol=1e-4)
    via, info = scoresde.sample(sde, score_fn, x_T, method="ode", rtol=1e-4, atol=1e-4)
    assert torch.equal(direct, via) and info["nfe"] == nfe


def test_callbacks_see_every_step():
    sde = scoresde.VPSDE()
    score_fn = mixture_score_fn(sde, MIX)
    x_T = sde.prior_sampling((8, 2), torch.Generator().manual_seed(0))
    seen = []
    scoresde.sample(sde, score_fn, x_T, num_steps=10, generator=torch.Generator().manual_seed(0),
                    callback=lambda i, t, x: seen.append((i, float(t[0]), x.shape)))
    assert [i for i, _, _ in seen] == list(range(11))  # ten steps, then the denoising step
    assert seen[0][1] == pytest.approx(1 - 0.999 / 10) and seen[-1][1] == pytest.approx(1e-3)
    calls = []
    _, info = scoresde.sample(sde, score_fn, x_T, method="ode", rtol=1e-3, atol=1e-3,
                              callback=lambda i, t, x: calls.append(i))
    assert calls == list(range(info["nfe"]))  # every solver evaluation, then the denoised x


def test_projection_is_applied_after_every_pc_step():
    sde = scoresde.VPSDE()
    score_fn = mixture_score_fn(sde, MIX)
    x_T = sde.prior_sampling((8, 2), torch.Generator().manual_seed(0))
    times = []

    def project(x, t):
        times.append(t)
        return torch.cat([x[:, :1], torch.full_like(x[:, 1:], 0.25)], dim=1)

    x, _ = scoresde.sample(sde, score_fn, x_T, num_steps=5, n_steps=2, project=project,
                           generator=torch.Generator().manual_seed(0))
    assert len(times) == 5 * 3 + 1 and times[-1] is None
    assert torch.all(x[:, 1] == 0.25)


def test_black_box_ode_refuses_project_and_inpainting_with_it():
    sde = scoresde.VPSDE()
    score_fn = mixture_score_fn(sde, MIX)
    x_T = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="cannot apply project"):
        scoresde.sample(sde, score_fn, x_T, method="ode", project=lambda x, t: x)
    with pytest.raises(ValueError, match="cannot apply project"):
        inpaint(sde, score_fn, torch.zeros(4, 2), torch.tensor([1.0, 0.0]), method="ode")


@pytest.mark.parametrize("method, options, message", [
    ("euler", {}, "unknown sampling method 'euler'; choose from"),
    ("pc", {"rtol": 1e-3}, "sampler 'pc' takes no option 'rtol'"),
    ("ode", {"snr": 0.1}, "sampler 'ode' takes no option 'snr'"),
    ("pc", {"predictor": "eulr"}, "unknown predictor 'eulr'"),
    ("pc", {"corrector": "langevinn"}, "unknown corrector 'langevinn'"),
])
def test_names_and_options_are_checked_in_one_place(method, options, message):
    with pytest.raises(ValueError, match=message):
        check_sampler(method, options)
    with pytest.raises(ValueError, match=message):
        scoresde.sample(scoresde.VPSDE(), lambda x, t: x, torch.zeros(2, 2), method=method,
                        **options)


def _draw(sde, score_fn, n, batch_size, seed, method="pc", **options):
    """Samples 0..n-1 of ``seed`` drawn batch by batch, each batch with its own streams."""
    out = []
    for start in range(0, n, batch_size):
        streams = SampleStreams(seed, range(start, min(start + batch_size, n)))
        x_T = sde.prior_sampling((len(streams), 2), streams)
        out.append(scoresde.sample(sde, score_fn, x_T, method=method, generator=streams,
                                   **options)[0])
    return torch.cat(out)


@pytest.mark.parametrize("predictor, corrector", [
    ("reverse_diffusion", "langevin_per_example"),
    ("euler_maruyama", "ald"),
    ("ancestral_sampling", "none"),
])
def test_samples_do_not_depend_on_the_batch_size(sde, predictor, corrector):
    score_fn = mixture_score_fn(sde, MIX)
    n, kw = 7, {"num_steps": 30, "predictor": predictor, "corrector": corrector}
    runs = {b: _draw(sde, score_fn, n, b, seed=3, **kw) for b in (1, 3, n)}
    for b in (1, 3):
        torch.testing.assert_close(runs[b], runs[n], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(runs[n], _draw(sde, score_fn, n, n, seed=4, **kw))
    # Sample 5 alone is sample 5 of the batch.
    alone = SampleStreams(3, [5])
    x5 = scoresde.sample(sde, score_fn, sde.prior_sampling((1, 2), alone), generator=alone,
                         **kw)[0]
    torch.testing.assert_close(x5[0], runs[n][5], rtol=1e-5, atol=1e-5)


def test_batch_mean_langevin_couples_a_batch_as_the_official_code():
    sde = scoresde.VPSDE()
    score_fn = mixture_score_fn(sde, MIX)
    alone = _draw(sde, score_fn, 4, 1, seed=0, num_steps=20)
    together = _draw(sde, score_fn, 4, 4, seed=0, num_steps=20)
    assert not torch.allclose(alone, together, atol=1e-4)


def test_ode_samples_do_not_depend_on_the_batch_beyond_the_solver_tolerance():
    sde = scoresde.VPSDE()
    score_fn = mixture_score_fn(sde, MIX)
    alone = _draw(sde, score_fn, 6, 1, seed=0, method="ode", rtol=1e-6, atol=1e-6)
    together = _draw(sde, score_fn, 6, 6, seed=0, method="ode", rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-4)


def test_sample_streams_are_cheap_enough_and_refuse_a_wrong_batch():
    streams = SampleStreams(0, range(4))
    with pytest.raises(ValueError, match="a batch of 3 examples drawn from 4 sample streams"):
        streams.randn((3, 2))


# ---- the command line and the config --------------------------------------------------------

TINY = ["--no-progress", "--device", "cpu", "--threads", "1", "--set", "model.hidden=32",
        "--set", "model.depth=2", "--set", "train.batch_size=64"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "run"
    assert main(["train", "--preset", "toy_moons", "--out", str(out), "--steps", "5", *TINY]) == 0
    return out


def test_the_config_records_the_sampling_method(toy_run):
    assert json.loads((toy_run / "config.json").read_text())["sample"]["method"] == "pc"


PER_METHOD = {  # the ODE takes neither a step count nor a corrector: it would refuse them
    "pc": ["--set", "sample.num_steps=20", "--set", "sample.corrector=langevin_per_example"],
    "ode": [],
}


@pytest.mark.parametrize("method", ["pc", "ode"])
def test_cli_samples_do_not_depend_on_batch_size(method, toy_run, tmp_path, capsys):
    arrays = []
    for b in ("1", "3", "7"):
        out = tmp_path / b
        code = main(["sample", "--checkpoint", str(toy_run / "checkpoint.safetensors"),
                     "--out", str(out), "--num-samples", "7", "--batch-size", b, "--seed", "5",
                     "--method", method, "--no-progress", "--threads", "1",
                     *PER_METHOD[method]])
        assert code == 0
        info = json.loads(capsys.readouterr().out)
        assert info["method"] == method and info["nfe"] > 0
        arrays.append(np.load(out / "samples.npy"))
    tolerance = 1e-5 if method == "pc" else 1e-3
    for a in arrays[:2]:
        np.testing.assert_allclose(a, arrays[2], rtol=tolerance, atol=tolerance)


def test_cli_unknown_method_is_one_line(toy_run, tmp_path, capsys):
    code = main(["sample", "--checkpoint", str(toy_run / "checkpoint.safetensors"),
                 "--out", str(tmp_path / "s"), "--method", "euler"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown sampling method 'euler'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_sample_method_from_the_config(toy_run, tmp_path, capsys):
    code = main(["sample", "--checkpoint", str(toy_run / "checkpoint.safetensors"),
                 "--out", str(tmp_path / "s"), "--num-samples", "4", "--no-progress",
                 "--threads", "1", "--set", "sample.method=ode", "--seed", "9"])
    assert code == 0 and json.loads(capsys.readouterr().out)["method"] == "ode"
    # The samples' folder records the sampler, its options and the seed that made them.
    used = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (used["sample"]["method"], used["sample"]["num_samples"], used["seed"]) == ("ode", 4, 9)


def test_the_method_flag_wins_over_a_set_method(toy_run, tmp_path, capsys):
    code = main(["sample", "--checkpoint", str(toy_run / "checkpoint.safetensors"),
                 "--out", str(tmp_path / "s"), "--num-samples", "2", "--no-progress",
                 "--threads", "1", "--set", "sample.method=ode", "--method", "pc",
                 "--set", "sample.num_steps=3", "--set", "sample.batch_size=1"])
    assert code == 0 and json.loads(capsys.readouterr().out)["pc_steps"] == 3

"""``ScoreModel``: a network and its conventions as one score function (Song et al., 2021, app. H).

Checked here: the labels and stds it reads off the SDE (the numbers the SDE classes used to give),
the defaults derived from the SDE's mathematics, the three views ``score`` / ``eps`` / ``denoise``
against each other and against a Gaussian mixture's exact score and posterior mean, the old
``-eps / s(t)`` formula, conditioning keyword arguments, bfloat16 autocast, and the module side
(state dict, ``.to``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import scoresde
from conftest import Recorder
from scoresde import SDE, VESDE, VPSDE, ScoreModel, SubVPSDE, make_score_fn, tweedie_denoise
from scoresde.core.mixture import GaussianMixture, mixture_score_fn
from scoresde.nn.mlp import ScoreMLP
from scoresde.setup.build import build_score_fn
from scoresde.setup.config import Config
from scoresde.setup.config_io import apply_overrides

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
BETA_MIN, BETA_MAX, N = 0.1, 20.0, 1000


def sigma_ve(t, sigma_min=0.01, sigma_max=50.0):
    return sigma_min * (sigma_max / sigma_min) ** t




def _randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net


# --------------------------------------------------------------------------------------------
# Labels, stds and defaults (moved here from the SDE classes: same numbers)
# --------------------------------------------------------------------------------------------


def test_network_labels_ve():
    t = torch.tensor([0.0, 1 / 999, 0.25, 0.5, 1.0], dtype=F64)
    cont = ScoreModel(Recorder(), VESDE())
    torch.testing.assert_close(cont.network_labels(t), sigma_ve(t), rtol=1e-12, atol=0)
    disc_model = ScoreModel(Recorder(), VESDE(), continuous=False)
    disc = disc_model.network_labels(t)
    assert disc.dtype == torch.long
    # NCSN indexes its scales from the largest: index 0 at t = T, N - 1 at t = 0
    assert disc.tolist() == [999, 998, round(0.75 * 999), round(0.5 * 999), 0]
    # every grid time t_i = i / (N - 1) maps to index N - 1 - i
    t_i = torch.arange(N, dtype=torch.float32) / (N - 1)
    assert torch.equal(disc_model.network_labels(t_i), torch.arange(N - 1, -1, -1))


@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE])
def test_network_labels_vp(cls):
    sde = cls()
    t = torch.tensor([0.0, 0.001, 0.5, 1.0], dtype=F64)
    torch.testing.assert_close(ScoreModel(Recorder(), sde).network_labels(t), 999 * t,
                               rtol=1e-15, atol=0)
    if cls is SubVPSDE:
        with pytest.raises(ValueError, match="sub-VP"):
            ScoreModel(Recorder(), sde, continuous=False)
    else:
        disc = ScoreModel(Recorder(), sde, continuous=False)
        torch.testing.assert_close(disc.network_labels(t), (N - 1) * t)


def test_vp_discrete_std():
    """DDPM's ``sqrt(1 - alpha_bar_i)`` at ``i = round((N - 1) t)`` from the (float32) table."""
    sde = VPSDE()
    model = ScoreModel(Recorder(), sde, continuous=False)
    i = torch.tensor([0, 1, 10, 500, 998, 999])
    t = i.to(torch.float32) / (N - 1)
    expected = (1 - sde.alphas_cumprod[i]).sqrt()
    torch.testing.assert_close(model.std(t), expected, rtol=1e-6, atol=0)
    # rounding, not flooring: t just below t_i still reads index i
    torch.testing.assert_close(model.std(t - 1e-5), expected, rtol=1e-6, atol=0)
    # and the table agrees with the formula to its float32 rounding (~6e-8 / beta_1 = 6e-4 rel)
    betas = torch.linspace(BETA_MIN / N, BETA_MAX / N, N, dtype=F64)
    by_hand = (1 - torch.cumprod(1 - betas, 0)[i]).sqrt().float()
    torch.testing.assert_close(model.std(t), by_hand, rtol=1e-3, atol=0)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["VE", "VP", "subVP"])
def test_continuous_std_is_the_marginal_std(sde):
    t = torch.tensor([1e-3, 0.3, 1.0], dtype=F64)
    assert torch.equal(ScoreModel(Recorder(), sde).std(t), sde.marginal_coeffs(t)[1])


def test_default_parametrization():
    assert ScoreModel(Recorder(), VESDE()).parametrization == "score"
    assert ScoreModel(Recorder(), VPSDE()).parametrization == "eps"
    assert ScoreModel(Recorder(), SubVPSDE()).parametrization == "eps"
    assert ScoreModel(Recorder(), VESDE()).labels == "sigma"
    assert ScoreModel(Recorder(), VPSDE()).labels == "time"
    assert ScoreModel(Recorder(), SubVPSDE()).labels == "time"


@dataclass(frozen=True)
class _LinearVE(SDE):
    """A variance-exploding SDE that is none of the package's classes: ``s(t) = 2 t``, so
    ``dx = sqrt(8 t) dw``; its family's networks output the score, conditioned on sigma."""

    N: int = 10
    T: float = 1.0
    network_convention = ("score", "sigma")

    def sde(self, x, t):
        return torch.zeros_like(x), torch.sqrt(8 * t)

    def marginal_coeffs(self, t):
        return torch.ones_like(t), 2 * t


@dataclass(frozen=True)
class _ScaledVP(SDE):
    """Not variance exploding: ``m(t) = exp(-t)``, ``s(t) = t``; the default convention."""

    N: int = 10
    T: float = 1.0

    def sde(self, x, t):  # d(s^2)/dt - 2 (d log m / dt) s^2 = 2 t + 2 t^2
        return -x, torch.sqrt(2 * t + 2 * t**2)

    def marginal_coeffs(self, t):
        return torch.exp(-t), t


def test_defaults_come_from_the_sde_familys_convention():
    t = torch.tensor([0.25, 0.5], dtype=F64)
    ve = ScoreModel(Recorder(), _LinearVE())
    assert (ve.parametrization, ve.labels) == ("score", "sigma")
    torch.testing.assert_close(ve.network_labels(t), 2 * t)
    other = ScoreModel(Recorder(), _ScaledVP())
    assert (other.parametrization, other.labels) == ("eps", "time")
    with pytest.raises(ValueError, match="variance-preserving"):
        ScoreModel(Recorder(), _ScaledVP(), continuous=False)  # no DDPM table


def test_bad_conventions_raise():
    for bad in ({"parametrization": "x0"}, {"labels": "index"},
                {"compute_dtype": torch.float64}):
        with pytest.raises(ValueError):
            ScoreModel(Recorder(), VPSDE(), **bad)


def test_make_score_fn_builds_a_score_model():
    sm = make_score_fn(Recorder(), VESDE(), continuous=False, parametrization="eps",
                       model_kwargs={"shift": 1.0})
    assert isinstance(sm, ScoreModel)
    assert (sm.continuous, sm.parametrization, sm.labels, sm.model_kwargs) == (
        False, "eps", "sigma", {"shift": 1.0})
    assert scoresde.ScoreModel is ScoreModel


@pytest.mark.parametrize(("kind", "continuous", "expected"), [
    ("ve", True, ("score", "sigma")),
    ("ve", False, ("score", "sigma")),
    ("vp", True, ("eps", "time")),
    ("vp", False, ("eps", "time")),
    ("subvp", True, ("eps", "time")),
])
def test_build_score_fn_takes_the_conventions_from_the_config(kind, continuous, expected):
    cfg = apply_overrides(Config(), [f"sde.kind={kind}", f"model.continuous={continuous}"])
    sde = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}[kind]()
    sm = build_score_fn(Recorder(), sde, cfg)
    assert (sm.parametrization, sm.labels) == expected
    assert sm.continuous is continuous
    # an explicit choice wins; a bare ModelConfig still gives the time convention
    assert build_score_fn(Recorder(), sde, cfg, parametrization="score").parametrization == "score"
    assert build_score_fn(Recorder(), sde, cfg.model).continuous is continuous


# --------------------------------------------------------------------------------------------
# The three views against a Gaussian mixture's exact score and posterior mean
# --------------------------------------------------------------------------------------------

MIX = GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64),
                      torch.tensor([[-2.0, 1.0], [1.0, 0.5]], dtype=F64),
                      torch.tensor([0.3, 0.5], dtype=F64))


def posterior_mean(mix, m, s, x):
    """``E[x0 | x_t = x]`` for mixture data, written out: responsibilities times the Gaussian
    posterior means ``mu_k + m sd_k^2 / (m^2 sd_k^2 + s^2) (x - m mu_k)``. ``m, s`` ``(B, 1)``."""
    log_r, means = [], []
    for w, mu, sd in zip(mix.weights.tolist(), mix.means, mix.stds.tolist(), strict=True):
        var = m**2 * sd**2 + s**2
        log_r.append(math.log(w) - ((x - m * mu) ** 2).sum(1, keepdim=True) / (2 * var)
                     - x.shape[1] / 2 * torch.log(2 * math.pi * var))
        means.append(mu + m * sd**2 / var * (x - m * mu))
    r = torch.softmax(torch.cat(log_r, 1), 1)
    return sum(r[:, k:k + 1] * means[k] for k in range(len(means)))


def labels_to_time(sde, continuous, labels):
    """Invert the label conventions by hand (a network that knows exactly where it is)."""
    if isinstance(sde, VESDE):
        if continuous:
            return torch.log(labels / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
        return sde.T - labels.to(F64) / (sde.N - 1)
    return labels / 999 if continuous else labels / (sde.N - 1)


def ddpm_std_by_hand(t):
    i = torch.round(t * (N - 1)).long()
    betas = torch.linspace(BETA_MIN / N, BETA_MAX / N, N)  # float32, as the SDE's table
    return torch.sqrt(1.0 - torch.cumprod(1.0 - betas, 0))[i].to(F64)


class ExactNet:
    """A perfect network in either parametrization: the mixture's exact score at the time its
    labels encode, or ``-std * score`` (the std the convention uses, written out by hand)."""

    def __init__(self, sde, continuous, parametrization):
        self.sde, self.continuous, self.param = sde, continuous, parametrization
        self.exact = mixture_score_fn(sde, MIX)

    def __call__(self, x, labels):
        t = labels_to_time(self.sde, self.continuous, labels)
        score = self.exact(x, t)
        if self.param == "score":
            return score
        ddpm = not self.continuous and not isinstance(self.sde, VESDE)
        std = ddpm_std_by_hand(t) if ddpm else self.sde.marginal_coeffs(t)[1]
        return -std[:, None] * score


CASES = [(VESDE(), True), (VESDE(), False), (VPSDE(), True), (VPSDE(), False),
         (SubVPSDE(), True)]
IDS = ["VE-cont", "VE-disc", "VP-cont", "VP-disc", "subVP-cont"]


@pytest.mark.parametrize("param", ["score", "eps"])
@pytest.mark.parametrize(("sde", "continuous"), CASES, ids=IDS)
def test_views_agree_with_the_exact_mixture(sde, continuous, param):
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([10, 120, 250, 500, 700, 999], dtype=F64) / (N - 1)  # on the grid
    x = 2 * torch.randn(t.shape[0], 2, generator=gen, dtype=F64)
    sm = ScoreModel(ExactNet(sde, continuous, param), sde, continuous=continuous,
                    parametrization=param)
    exact = mixture_score_fn(sde, MIX)(x, t)
    score = sm.score(x, t)
    assert torch.equal(sm(x, t), score)
    torch.testing.assert_close(score, exact, rtol=1e-9, atol=1e-12)
    # eps = -s(t) score with the convention's std; both ways round
    std = sm.std(t)[:, None]
    torch.testing.assert_close(sm.eps(x, t), -std * exact, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(-sm.eps(x, t) / std, score, rtol=1e-12, atol=1e-12)
    # denoise is tweedie_denoise and the mixture's posterior mean
    m, s = (v[:, None] for v in sde.marginal_coeffs(t))
    den = sm.denoise(x, t)
    assert torch.equal(den, tweedie_denoise(sde, sm, x, t))
    torch.testing.assert_close(den, (x + s**2 * score) / m, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(den, posterior_mean(MIX, m, s, x), rtol=1e-8, atol=1e-9)


# --------------------------------------------------------------------------------------------
# The old formula, conditioning, mixed precision, module behaviour
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sde", "continuous"), CASES, ids=IDS)
def test_eps_network_gives_the_old_make_score_fn_score(sde, continuous):
    """Bit for bit the formula of the former ``make_score_fn``: ``-out / std`` with the
    marginal std (continuous, and VE) or DDPM's table std (discrete VP)."""
    torch.manual_seed(0)
    embedding = "fourier" if isinstance(sde, VESDE) and continuous else "positional"
    net = _randomize(ScoreMLP(dim=3, hidden=16, depth=2, embedding_type=embedding))
    sm = ScoreModel(net, sde, continuous=continuous, parametrization="eps")
    t = torch.tensor([1e-3, 0.25, 0.5, 1.0])
    x = torch.randn(4, 3)
    if continuous:
        labels = sde.sigma(t) if isinstance(sde, VESDE) else 999 * t
        std = sde.marginal_coeffs(t)[1]
    elif isinstance(sde, VESDE):
        labels = torch.round((sde.T - t) * (sde.N - 1)).long()
        std = sde.marginal_coeffs(t)[1]
    else:
        labels = (sde.N - 1) * t
        std = torch.sqrt(1.0 - sde.alphas_cumprod)[torch.round(t * (sde.N - 1)).long()]
    with torch.no_grad():
        old = -net(x, labels) / std[:, None]
        assert torch.equal(sm(x, t), old)


class KwargsNet(nn.Module):
    """Records the keyword arguments of every call; output ``x + shift + class_labels``."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, labels, **kwargs):
        self.calls.append(dict(kwargs))
        y = kwargs.get("class_labels", torch.zeros(x.shape[0]))
        return self.scale * x + kwargs.get("shift", 0.0) + y[:, None]


def test_conditioning_reaches_the_network():
    net = KwargsNet()
    y = torch.tensor([1.0, 2.0])
    sm = ScoreModel(net, VESDE(), model_kwargs={"class_labels": y})
    x, t = torch.zeros(2, 3), torch.full((2,), 0.5)
    assert torch.equal(sm(x, t), y[:, None].expand(2, 3))
    assert net.calls[-1] == {"class_labels": y}
    # a call's own conditioning (e.g. a training batch's labels) is added and overrides
    y2 = torch.tensor([5.0, 7.0])
    assert torch.equal(sm(x, t, class_labels=y2), y2[:, None].expand(2, 3))
    assert torch.equal(net.calls[-1]["class_labels"], y2)
    sm.eps(x, t, shift=1.0)
    sm.denoise(x, t, shift=1.0)
    assert net.calls[-2] == {"class_labels": y, "shift": 1.0} == net.calls[-1]
    assert sm.model_kwargs == {"class_labels": y}  # calls leave the defaults alone
    # through a consumer that only knows score_fn(x, t)
    loss = scoresde.dsm_loss(VESDE(), lambda x_, t_: sm(x_, t_, class_labels=y2), x,
                             generator=torch.Generator().manual_seed(0))
    assert loss.shape == (2,)
    assert torch.equal(net.calls[-1]["class_labels"], y2)


@pytest.mark.parametrize(("sde", "embedding"), [(VESDE(), "fourier"), (VPSDE(), "positional")],
                         ids=["VE", "VP"])
def test_bfloat16_autocast_keeps_the_score_in_float32(sde, embedding):
    torch.manual_seed(0)
    net = _randomize(ScoreMLP(dim=4, hidden=32, depth=2, embedding_type=embedding), seed=1)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    t = torch.linspace(0.05, 1.0, 8)
    full = ScoreModel(net, sde)
    mixed = ScoreModel(net, sde, compute_dtype=torch.bfloat16)
    seen = []
    hook = net.inp.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    with torch.no_grad():
        ref = full(x, t)
        mixed(x, t)
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]  # the network really ran in bfloat16
    with torch.no_grad():
        for view in ("score", "eps", "denoise"):
            got = getattr(mixed, view)(x, t)
            want = getattr(full, view)(x, t)
            assert got.dtype == torch.float32, view
            assert not torch.equal(got, want)
            torch.testing.assert_close(got, want, rtol=0, atol=3e-2 * float(want.abs().max()))
        # a bfloat16 input still gives a float32 score
        assert mixed(x.bfloat16(), t).dtype == torch.float32
    assert ref.dtype == torch.float32
    assert next(net.parameters()).dtype == torch.float32  # the weights are left alone


def test_score_model_is_a_module_with_the_network_state():
    net = _randomize(ScoreMLP(dim=2, hidden=16, depth=1, embedding_type="positional"))
    sm = ScoreModel(net, VPSDE())
    assert isinstance(sm, nn.Module)
    sd, net_sd = sm.state_dict(), net.state_dict()
    assert list(sd) == [f"net.{k}" for k in net_sd]
    for k, v in net_sd.items():
        assert torch.equal(sd[f"net.{k}"], v)
    assert list(sm.parameters()) == list(net.parameters())
    # load_state_dict goes to the network
    other = ScoreModel(ScoreMLP(dim=2, hidden=16, depth=1, embedding_type="positional"), VPSDE())
    other.load_state_dict(sd)
    x, t = torch.randn(3, 2), torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        assert torch.equal(other(x, t), sm(x, t))
    # .to / .eval act on the wrapped network
    assert sm.to("cpu") is sm
    sm.to(torch.float64)
    assert next(net.parameters()).dtype == F64
    with torch.no_grad():
        assert sm(x.double(), t.double()).dtype == F64
    sm.eval()
    assert not net.training
    assert "parametrization='eps'" in repr(sm)
    # a plain callable has no state
    assert ScoreModel(Recorder(), VPSDE()).state_dict() == {}


# --------------------------------------------------------------------------------------------
# make_score_fn on a recording network: the score it returns, and Tweedie's formula
# --------------------------------------------------------------------------------------------


def alpha_bar(t):
    return torch.exp(-0.5 * (BETA_MAX - BETA_MIN) * t**2 - BETA_MIN * t)


X = torch.tensor([[[0.5, -1.0], [2.0, 0.0]], [[1.0, 1.0], [-3.0, 0.25]], [[0.0, 4.0], [1.0, -1.0]]],
                 dtype=F64)  # (B=3, 2, 2)
T_GRID = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
T_CONT = torch.tensor([1e-3, 0.42, 1.0], dtype=F64)


def out(x):
    return 3 * x + 0.5


def test_ve_continuous_labels_sigma_and_returns_output():
    model = Recorder()
    score_fn = make_score_fn(model, VESDE())
    score = score_fn(X, T_CONT)
    torch.testing.assert_close(model.labels[0], 0.01 * 5000.0**T_CONT, rtol=1e-12, atol=0)
    assert torch.equal(score, out(X))


def test_ve_discrete_labels_ncsn_index():
    model = Recorder()
    score_fn = make_score_fn(model, VESDE(), continuous=False)
    score = score_fn(X, T_GRID)
    assert model.labels[0].tolist() == [999, round(0.5 * 999), 0]
    assert torch.equal(score, out(X))


def test_vp_continuous_labels_999t_and_eps_parametrization():
    model = Recorder()
    score_fn = make_score_fn(model, VPSDE())
    score = score_fn(X, T_CONT)
    torch.testing.assert_close(model.labels[0], 999 * T_CONT, rtol=1e-15, atol=0)
    std = (1 - alpha_bar(T_CONT)).sqrt()
    torch.testing.assert_close(score, -out(X) / std[:, None, None], rtol=1e-10, atol=0)


def test_subvp_continuous_uses_its_own_std():
    model = Recorder()
    score_fn = make_score_fn(model, SubVPSDE())
    score = score_fn(X, T_CONT)
    torch.testing.assert_close(model.labels[0], 999 * T_CONT, rtol=1e-15, atol=0)
    std = 1 - alpha_bar(T_CONT)  # sub-VP: s(t) = 1 - m(t)^2, not its square root
    torch.testing.assert_close(score, -out(X) / std[:, None, None], rtol=1e-10, atol=0)


def test_subvp_discrete_raises():
    with pytest.raises(ValueError):
        score_fn = make_score_fn(Recorder(), SubVPSDE(), continuous=False)
        score_fn(X, T_GRID)


def test_vp_discrete_uses_ddpm_table():
    model = Recorder()
    sde = VPSDE()
    score_fn = make_score_fn(model, sde, continuous=False)
    i = torch.tensor([0, 123, 999])
    t = i.to(F64) / (N - 1)
    score = score_fn(X, t)
    torch.testing.assert_close(model.labels[0], i.to(F64), rtol=0, atol=1e-9)
    betas = torch.linspace(BETA_MIN / N, BETA_MAX / N, N, dtype=F64)
    std = (1 - torch.cumprod(1 - betas, 0)[i]).sqrt()
    # the table is float32 (as the official code): sqrt(1 - alpha_bar_0) = sqrt(beta_1) loses ~4e-4
    torch.testing.assert_close(score, -out(X) / std[:, None, None], rtol=1e-3, atol=0)
    exact_table = (1 - sde.alphas_cumprod[i]).sqrt().double()  # the table's own values
    torch.testing.assert_close(score, -out(X) / exact_table[:, None, None], rtol=1e-12, atol=0)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["VE", "VP", "subVP"])
def test_explicit_parametrization_overrides_default(sde):
    std = sde.marginal_coeffs(T_CONT)[1][:, None, None]
    as_score = make_score_fn(Recorder(), sde, parametrization="score")(X, T_CONT)
    as_eps = make_score_fn(Recorder(), sde, parametrization="eps")(X, T_CONT)
    assert torch.equal(as_score, out(X))
    torch.testing.assert_close(as_eps, -out(X) / std, rtol=1e-12, atol=0)


def test_model_kwargs_are_forwarded_every_call():
    model = Recorder()
    score_fn = make_score_fn(model, VESDE(), model_kwargs={"shift": 2.0})
    for _ in range(2):
        score = score_fn(X, T_CONT)
    assert model.kwargs == [{"shift": 2.0}, {"shift": 2.0}]
    assert torch.equal(score, out(X) + 2.0)


# --------------------------------------------------------------------------------------------
# Tweedie's formula
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["VE", "VP", "subVP"])
def test_tweedie_is_the_gaussian_posterior_mean(sde):
    """Data ``N(mu, s0^2 I)``: ``E[x0 | x_t] = mu + m s0^2 / (m^2 s0^2 + s^2) (x_t - m mu)``."""
    mu = torch.tensor([0.7, -1.2, 0.1], dtype=F64)
    s0 = 0.6
    gauss = GaussianMixture(torch.ones(1, dtype=F64), mu[None], torch.tensor([s0], dtype=F64))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=gen, dtype=F64) * 2
    t = torch.tensor([1e-4, 0.1, 0.3, 0.7, 1.0], dtype=F64)
    m, s = sde.marginal_coeffs(t)
    m, s = m[:, None], s[:, None]
    expected = mu + m * s0**2 / (m**2 * s0**2 + s**2) * (x - m * mu)
    got = tweedie_denoise(sde, mixture_score_fn(sde, gauss), x, t)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_tweedie_is_the_mixture_posterior_mean():
    """Two components: the posterior mean is the responsibility-weighted per-component one."""
    sde = VPSDE()
    w = torch.tensor([0.3, 0.7], dtype=F64)
    mus = torch.tensor([[-2.0, 1.0], [1.0, 0.5]], dtype=F64)
    sds = torch.tensor([0.3, 0.5], dtype=F64)
    mix = GaussianMixture(w, mus, sds)
    x = torch.tensor([[0.1, 0.2], [-1.0, 0.7], [0.5, 0.5]], dtype=F64)
    t = torch.tensor([0.05, 0.2, 0.4], dtype=F64)
    m, s = (v[:, None] for v in sde.marginal_coeffs(t))
    expected = torch.zeros_like(x)
    log_r = []
    for k in range(2):
        var = m**2 * sds[k] ** 2 + s**2
        log_r.append(math.log(w[k]) - ((x - m * mus[k]) ** 2).sum(1, keepdim=True) / (2 * var)
                     - torch.log(2 * math.pi * var))
    r = torch.softmax(torch.cat(log_r, 1), 1)
    for k in range(2):
        var = m**2 * sds[k] ** 2 + s**2
        expected += r[:, k:k + 1] * (mus[k] + m * sds[k] ** 2 / var * (x - m * mus[k]))
    got = tweedie_denoise(sde, mixture_score_fn(sde, mix), x, t)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_tweedie_monte_carlo_orthogonality():
    """``D(x_t) = E[x0 | x_t]`` iff ``E[(x0 - D(x_t)) h(x_t)] = 0`` for every test function ``h``.

    1-D mixture data, VE at sigma = 0.59: checked for h = 1, x, tanh(2x), x^2 by Monte Carlo
    (4 standard errors); the naive denoiser ``D(x) = x`` fails the same check by ~100 se.
    """
    sde = VESDE()
    gen = torch.Generator().manual_seed(3)
    n = 200_000
    mix = GaussianMixture(torch.tensor([0.4, 0.6], dtype=F64),
                          torch.tensor([[-1.0], [1.5]], dtype=F64),
                          torch.tensor([0.3, 0.4], dtype=F64))
    x0 = mix.sample(n, generator=gen)
    t = torch.full((n,), 0.75, dtype=F64)
    s = sde.marginal_coeffs(t)[1][:, None]
    xt = x0 + s * torch.randn(n, 1, generator=gen, dtype=F64)
    denoised = tweedie_denoise(sde, mixture_score_fn(sde, mix), xt, t)
    tests = [torch.ones_like(xt), xt, torch.tanh(2 * xt), xt**2]
    for h in tests:
        prod = (x0 - denoised) * h
        assert abs(float(prod.mean())) < 4 * float(prod.std()) / math.sqrt(n)
    naive = (x0 - xt) * xt
    assert abs(float(naive.mean())) > 50 * float(naive.std()) / math.sqrt(n)

"""The EDM-training benchmark's statistics over seeds (``benchmarks/edm_training.py``):
means, standard errors, the choice of the best fast sampler and the goal of issue 18, on
hand-made per-seed reports whose answers are worked out by hand."""

from __future__ import annotations

import math

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("edm_training")


def _cell(fid: float, at_real: float | None = None) -> dict[str, float]:
    cell = {"fid": fid, "is": 9.0, "kid": 1.0}
    if at_real is not None:
        cell["fid_at_real_size"] = at_real
    return cell


def _report(seed: int, pc: float, heun: float, dpmpp: float, bpd: float) -> dict:
    return {"seed": seed, "results": {
        "vp/paper": {"test_bpd": bpd, "samplers": {"pc": _cell(pc, pc + 3), "ode": _cell(20.0),
                                                   "heun": _cell(9.0), "dpmpp_2m": _cell(9.5)}},
        "vp/edm": {"test_bpd": bpd - 0.01, "samplers": {
            "ode": _cell(15.0), "heun": _cell(heun, heun + 5), "dpmpp_2m": _cell(dpmpp)}},
    }}


def test_mean_and_standard_error(bench):
    stat = bench._mean_se([1.0, 2.0, 6.0])
    # mean 3, sample variance ((-2)^2 + (-1)^2 + 3^2) / 2 = 7, se = sqrt(7 / 3)
    assert stat == {"mean": 3.0, "se": round(math.sqrt(7 / 3), 4), "n": 3}
    assert bench._mean_se([4.2]) == {"mean": 4.2, "se": 0.0, "n": 1}


def test_aggregate_cells_goal_and_paired_difference(bench):
    reports = [_report(0, 8.0, 7.0, 9.0, 1.80), _report(1, 9.0, 9.5, 8.0, 1.82),
               _report(2, 10.0, 8.5, 9.5, 1.84)]
    summary = bench.aggregate(reports)
    assert summary["seeds"] == [0, 1, 2]
    assert summary["cells"]["vp/paper/pc"]["fid"] == {"mean": 9.0, "se": round(1 / 3**0.5, 4),
                                                      "n": 3}
    assert summary["cells"]["vp/paper/pc"]["fid_at_real_size"]["mean"] == 12.0
    # a cell without an FD at real size (fewer samples than real digits) uses its FD
    assert summary["cells"]["vp/edm/dpmpp_2m"]["fid_at_real_size"]["mean"] == pytest.approx(
        26.5 / 3, abs=1e-4)
    assert summary["test_bpd"]["vp/edm"]["mean"] == pytest.approx(1.81)
    goal = summary["goal"]["vp"]
    # heun's mean FD 25/3 beats dpmpp_2m's 26.5/3, although dpmpp_2m wins on seed 1
    assert goal["edm_sampler"] == "heun"
    # paired differences -1.0, 0.5, -1.5: mean -2/3, se sqrt(((1/3)^2 + (7/6)^2 + (5/6)^2)/2/3)
    se = math.sqrt(((1 / 3) ** 2 + (7 / 6) ** 2 + (5 / 6) ** 2) / 2 / 3)
    assert goal["difference"] == {"mean": round(-2 / 3, 4), "se": round(se, 4), "n": 3}
    assert goal["met"] is True
    text = bench.table(summary)
    assert "| vp | edm | heun (best <= 20 NFE) | 8.333 ± 0.727 |" in text
    assert "| vp | heun | 8.333 ± 0.727 | 9.000 ± 0.577 | -0.667 ± 0.601 | yes |" in text


def test_goal_within_one_standard_error_but_not_beyond(bench):
    # differences +0.5, +1.5, +1.0: mean 1.0, se 0.2887 -> not met
    worse = [_report(0, 8.0, 8.5, 12.0, 1.8), _report(1, 8.0, 9.5, 12.0, 1.8),
             _report(2, 8.0, 9.0, 12.0, 1.8)]
    assert bench.aggregate(worse)["goal"]["vp"]["met"] is False
    # differences +0.5, -0.5, +0.6: mean 0.2, se 0.3512 -> within one standard error
    close = [_report(0, 8.0, 8.5, 12.0, 1.8), _report(1, 8.0, 7.5, 12.0, 1.8),
             _report(2, 8.0, 8.6, 12.0, 1.8)]
    goal = bench.aggregate(close)["goal"]["vp"]
    assert goal["difference"]["mean"] == pytest.approx(0.2, abs=1e-4)
    assert goal["difference"]["se"] == pytest.approx(0.3512, abs=1e-4)
    assert goal["met"] is True

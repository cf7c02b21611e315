"""The demo-quality benchmark's block statistics (``benchmarks/demo_quality.py``): the FD and
IS of all images and the mean and standard error over disjoint blocks, on a stand-in metric
whose values are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("demo_quality")


def test_block_statistics(bench, monkeypatch):
    # stand-in metrics: FD = the mean pixel value, IS = the number of images
    def fake_quality(cfg, images, *, seed):
        assert seed == 7
        return {"metrics": {"fid": float(images.mean()), "is": float(images.shape[0])}}

    monkeypatch.setattr(bench, "sample_quality", fake_quality)
    values = torch.tensor([1.0, 2.0, 6.0, 0.0])  # one value per block of 2 images
    images = values.repeat_interleave(2 * 64).reshape(8, 1, 8, 8)
    images = torch.cat([images, torch.full((1, 1, 8, 8), 9.0)])  # a ninth, in no block
    row = bench.block_quality(None, images, 2, 7)
    assert row["n"] == 9 and row["blocks"] == 4 and row["is"] == 9.0
    assert row["fd"] == pytest.approx((2 * 9.0 + 9.0) / 9)
    assert row["fd_2"] == pytest.approx(2.25) and row["is_2"] == 2.0
    # sample variance of (1, 2, 6, 0): (1.5625 + 0.0625 + 14.0625 + 5.0625) / 3 = 20.75 / 3
    assert row["fd_2_se"] == pytest.approx(math.sqrt(20.75 / 3 / 4))
    assert row["is_2_se"] == 0.0

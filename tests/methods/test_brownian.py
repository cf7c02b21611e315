"""The Brownian memory of the adaptive SDE solver: every value it hands out is the closed-form
known value, Brownian-bridge draw or fresh increment, whatever the order of rejections and
acceptances, each row on its own."""

from __future__ import annotations

import math

import pytest
import torch

from scoresde.methods.sampling.brownian import BrownianMemory

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def full(value, rows=2):
    return torch.full((rows,), value, dtype=F64)


def test_known_values_bridges_and_fresh_increments_in_closed_form():
    """Reject at 0.5, reject at 0.75 (bridge), reject at 0.6 (a bridge between two known values,
    pushed under 0.75), accept 0.75 and 0.5 (known: no noise used), then a fresh step."""
    zs = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    memory = BrownianMemory(torch.zeros(2, 3, dtype=F64), max_depth=3)
    no, yes = torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)

    w1 = memory.increment(full(1.0), full(0.5), zs[0])
    torch.testing.assert_close(w1, math.sqrt(0.5) * zs[0], rtol=0, atol=1e-15)
    memory.update(no, yes)
    w2 = memory.increment(full(1.0), full(0.75), zs[1])
    torch.testing.assert_close(w2, 0.5 * w1 + math.sqrt(0.25 * 0.25 / 0.5) * zs[1],
                               rtol=0, atol=1e-15)
    memory.update(no, yes)
    w3 = memory.increment(full(1.0), full(0.6), zs[2])
    expected = w2 + 0.15 / 0.25 * (w1 - w2) + math.sqrt(0.15 * 0.1 / 0.25) * zs[2]
    torch.testing.assert_close(w3, expected, rtol=0, atol=1e-15)
    memory.update(no, yes)
    assert memory.depth.tolist() == [3, 3]
    torch.testing.assert_close(memory.times[0], torch.tensor([0.5, 0.6, 0.75], dtype=F64))

    torch.testing.assert_close(memory.increment(full(1.0), full(0.75), zs[3]), w2,
                               rtol=0, atol=1e-15)
    memory.update(yes, no)
    torch.testing.assert_close(memory.increment(full(0.75), full(0.5), zs[4]), w1 - w2,
                               rtol=0, atol=1e-15)
    memory.update(yes, no)
    assert memory.depth.tolist() == [0, 0]
    torch.testing.assert_close(memory.increment(full(0.5), full(0.2), zs[5]),
                               math.sqrt(0.3) * zs[5], rtol=0, atol=1e-15)
    # a zero step is a zero increment; an example neither accepted nor rejected is left alone
    assert torch.equal(memory.increment(full(0.5), full(0.5), zs[5]), torch.zeros(2, 3, dtype=F64))
    memory.update(no, no)
    assert memory.depth.tolist() == [0, 0]


def test_rows_are_independent_of_each_other():
    """Two rows stepping differently give, row by row, what each gives alone."""
    gen = torch.Generator().manual_seed(1)
    plan = [  # (t, t_next, accept) for rows 0 and 1
        ((1.0, 0.4, False), (1.0, 0.8, True)),
        ((1.0, 0.7, False), (0.8, 0.3, False)),
        ((1.0, 0.55, True), (0.8, 0.6, False)),
        ((0.55, 0.4, False), (0.8, 0.7, True)),
        ((0.55, 0.45, True), (0.7, 0.3, True)),
    ]
    zs = torch.randn(len(plan), 2, 2, generator=gen, dtype=F64)

    def run(rows):
        memory = BrownianMemory(torch.zeros(len(rows), 2, dtype=F64), max_depth=4)
        out = []
        for step, z in zip(plan, zs, strict=True):
            t = torch.tensor([step[r][0] for r in rows], dtype=F64)
            t_next = torch.tensor([step[r][1] for r in rows], dtype=F64)
            accept = torch.tensor([step[r][2] for r in rows])
            out.append(memory.increment(t, t_next, z[rows]))
            memory.update(accept, ~accept)
        return torch.stack(out, 1)

    both = run([0, 1])
    for r in (0, 1):
        torch.testing.assert_close(both[r], run([r])[0], rtol=0, atol=0)
    # the known values come back: row 0's W(0.4) - W(1) (step 0) is its steps 2 and 3 (the
    # latter a hit on 0.4), row 1's W(0.3) - W(0.8) (step 1) its steps 3 and 4 (past 0.6, on 0.3)
    torch.testing.assert_close(both[0, 2] + both[0, 3], both[0, 0], rtol=0, atol=1e-14)
    torch.testing.assert_close(both[1, 3] + both[1, 4], both[1, 1], rtol=0, atol=1e-14)


def test_max_depth_is_a_one_line_error():
    memory = BrownianMemory(torch.zeros(2, 1, dtype=F64), max_depth=1)
    no, yes = torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    memory.increment(full(1.0), full(0.5), torch.ones(2, 1, dtype=F64))
    memory.update(no, yes)
    memory.increment(full(1.0), full(0.5), torch.ones(2, 1, dtype=F64))
    memory.update(no, yes)  # the same time again adds nothing
    memory.increment(full(1.0), full(0.7), torch.ones(2, 1, dtype=F64))
    with pytest.raises(RuntimeError, match=r"max_depth = 1") as excinfo:
        memory.update(no, yes)
    assert "\n" not in str(excinfo.value)
    with pytest.raises(ValueError, match="max_depth"):
        BrownianMemory(torch.zeros(2, 1), max_depth=0)

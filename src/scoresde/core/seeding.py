"""Random streams derived from a run's seed, without touching torch's global RNG.

Every random draw of a run comes from a stream whose seed is derived from the config's ``seed``
and a name (and, where needed, indices), so the same config gives the same result on every
machine and in every process, whatever else the process has drawn. Code that can only draw from
torch's global generator (weight initialisation in ``nn.init``, dropout) runs inside
:func:`private_global_rng`, which seeds the global generator for the duration of a block and puts
the caller's state back afterwards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed for the stream named by ``keys`` of a run seeded with ``seed``.

    A hash (SHA-256) of the seed and the keys: distinct names give unrelated streams, and the
    value is the same on every platform and Python version.
    """
    text = ":".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class SampleStreams:
    """One random stream per example of a batch: example ``i`` of a run seeded ``seed`` draws
    only from the stream ``(seed, i)``.

    Whatever the batch size, the batch boundaries or (later) the device count, example ``i``
    gets the same prior noise and the same noise at every sampler step, so its result is the
    same to float rounding. The cost is one small draw per example and call (measured in
    ``benchmarks/bench_sample_streams.py``).

    Args:
        seed: the run's seed.
        indices: the global indices of the examples in this batch, e.g. ``range(64, 128)``.
        device: where the draws are made (and returned).
    """

    def __init__(self, seed: int, indices, device: torch.device | str = "cpu") -> None:
        self.indices = list(indices)
        self.device = torch.device(device)
        self.generators = [stream(seed, "sample", i, device=self.device) for i in self.indices]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(
        self,
        shape: tuple[int, ...],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Standard normal ``(B, ...)`` with row ``k`` from the ``k``-th example's stream."""
        return self._rows(torch.randn, shape, device, dtype)

    def rand(
        self,
        shape: tuple[int, ...],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Uniform on ``[0, 1)``, ``(B, ...)``, row ``k`` from the ``k``-th example's stream."""
        return self._rows(torch.rand, shape, device, dtype)

    def _rows(self, draw, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(
                f"a batch of {shape[0]} examples drawn from {len(self.generators)} sample streams"
            )
        rows = [
            draw(shape[1:], generator=g, device=self.device, dtype=dtype) for g in self.generators
        ]
        out = torch.stack(rows) if rows else torch.empty(shape, device=self.device, dtype=dtype)
        return out.to(device) if device is not None else out


class BatchRows:
    """Rows ``start:stop`` of what one generator draws for a whole batch of ``total`` examples.

    Each draw of shape ``(stop - start, ...)`` is made at the whole batch's shape
    ``(total, ...)`` and sliced, so a part of a batch (one device's shard, one micro-batch of
    gradient accumulation) gets exactly the numbers the whole batch would have given those rows,
    and successive draws stay in step. A distributed training step is therefore the same
    computation on one device or on many. The cost is drawing ``total / (stop - start)`` times
    the noise, small next to a network's forward pass.

    Args:
        generator: the step's generator (e.g. ``stream(seed, "noise", step)``).
        total: the number of examples of the whole batch.
        start, stop: this part's rows.
    """

    def __init__(self, generator: torch.Generator, total: int, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= total:
            raise ValueError(f"rows {start}:{stop} are not inside a batch of {total}")
        self.generator, self.total, self.start, self.stop = generator, total, start, stop

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def __len__(self) -> int:
        return self.stop - self.start

    def _rows(self, full: torch.Tensor, shape: tuple[int, ...], device) -> torch.Tensor:
        if shape[0] != len(self):
            raise ValueError(f"a draw of {shape[0]} rows from a part of {len(self)} rows")
        out = full[self.start : self.stop]
        return out.to(device) if device is not None else out

    def randn(self, shape: tuple[int, ...], *, device=None, dtype=None) -> torch.Tensor:
        """Standard normal ``shape`` ``(stop - start, ...)``."""
        full_shape = (self.total, *shape[1:])
        full = torch.randn(full_shape, generator=self.generator, device=self.device, dtype=dtype)
        return self._rows(full, shape, device)

    def rand(self, shape: tuple[int, ...], *, device=None, dtype=None) -> torch.Tensor:
        """Uniform on ``[0, 1)``, ``shape`` ``(stop - start, ...)``."""
        full_shape = (self.total, *shape[1:])
        full = torch.rand(full_shape, generator=self.generator, device=self.device, dtype=dtype)
        return self._rows(full, shape, device)

    def randint(self, high: int, shape: tuple[int, ...], *, device=None) -> torch.Tensor:
        """Integers in ``[0, high)``, ``shape`` ``(stop - start, ...)``."""
        full_shape = (self.total, *shape[1:])
        full = torch.randint(0, high, full_shape, generator=self.generator, device=self.device)
        return self._rows(full, shape, device)


def stream(seed: int, *keys: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed` of ``seed, *keys``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))


@contextmanager
def private_global_rng(
    seed: int, device: torch.device | str = "cpu", *, state: dict | None = None
) -> Iterator[None]:
    """Run a block with the global RNG seeded by ``seed`` (or set to ``state``), then restore it.

    The CPU generator is always forked; on a CUDA ``device`` that device's generator as well.
    The caller's global RNG state is the same after the block as before it. Inside the block,
    :func:`global_rng_state` reads the private state, which ``state=`` takes to continue the
    same stream later (a resumed training run).
    """
    device = torch.device(device)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        if state is None:
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.manual_seed(seed)
        else:
            set_global_rng_state(state, device)
        yield


def global_rng_state(device: torch.device | str = "cpu") -> dict:
    """The global CPU (and, for a CUDA ``device``, that device's) RNG state as JSON-able lists."""
    device = torch.device(device)
    state = {"cpu": torch.get_rng_state().tolist()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return state


def set_global_rng_state(state: dict, device: torch.device | str = "cpu") -> None:
    """Inverse of :func:`global_rng_state`."""
    device = torch.device(device)
    torch.set_rng_state(torch.tensor(state["cpu"], dtype=torch.uint8))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8), device)

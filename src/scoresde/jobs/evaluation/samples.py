"""Many samples, written as they are made: sharded over ranks, resumable, batch-independent.

Sample ``i`` of seed ``s`` draws only from its own stream ``(s, i)``
(:class:`scoresde.core.seeding.SampleStreams`), so the samples of an evaluation are the same
whatever the batch size, the number of ranks or the order they are made in. A
:class:`SampleStore` keeps them in ``<out>/parts/`` as one ``.npz`` file per batch, named by the
index range it holds and written atomically; an interrupted evaluation makes only the missing
indices when it is run again, and the parts are put together in index order at the end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from scoresde.infra.distributed import World
from scoresde.infra.rundir import atomic_save_arrays
from scoresde.jobs.runs import TrainedModel, generate

PART_NAME = re.compile(r"^(\d+)-(\d+)\.npz$")


@dataclass(frozen=True)
class Part:
    """The file ``path`` holding samples ``start .. stop - 1``."""

    start: int
    stop: int
    path: Path


class SampleStore:
    """The parts of samples ``0 .. num_samples - 1`` in ``folder``.

    A part file ``{start:08d}-{stop:08d}.npz`` holds ``samples`` ``(stop - start, ...)``
    (float32, data scale) and ``nfe``. Parts never overlap: a resumed run makes only the
    indices no part holds (:meth:`missing`), in batches of its own size.
    """

    def __init__(self, folder: str | Path, num_samples: int) -> None:
        self.folder, self.num_samples = Path(folder), num_samples

    def parts(self) -> list[Part]:
        """The parts on disk that hold indices below ``num_samples``, in index order."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.iterdir():
            m = PART_NAME.match(path.name)
            if m and int(m.group(1)) < self.num_samples:
                found.append(Part(int(m.group(1)), int(m.group(2)), path))
        return sorted(found, key=lambda p: p.start)

    def missing(self, batch_size: int) -> list[range]:
        """The index ranges no part holds, cut into batches of at most ``batch_size``."""
        have = np.zeros(self.num_samples, dtype=bool)
        for part in self.parts():
            have[part.start : min(part.stop, self.num_samples)] = True
        batches: list[range] = []
        i = 0
        while i < self.num_samples:
            if have[i]:
                i += 1
                continue
            j = i
            while j < self.num_samples and not have[j] and j - i < batch_size:
                j += 1
            batches.append(range(i, j))
            i = j
        return batches

    def write(self, indices: range, samples: Tensor, nfe: int) -> Path:
        """Store samples ``indices`` (atomically: a killed write leaves no part)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{indices.start:08d}-{indices.stop:08d}.npz"
        samples = samples.numpy().astype(np.float32)
        return atomic_save_arrays(path, samples=samples, nfe=np.int64(nfe))

    def load(self) -> tuple[Tensor, list[int]]:
        """All samples ``(num_samples, ...)`` in index order and each part's NFE.

        Raises:
            ValueError: some indices are missing (the generation did not finish).
        """
        parts = self.parts()
        held = sum(min(p.stop, self.num_samples) - p.start for p in parts)
        if held != self.num_samples:
            raise ValueError(
                f"{self.folder} holds {held} of {self.num_samples} samples; run the same "
                "command again to make the rest"
            )
        arrays, nfes = [], []
        for part in parts:
            with np.load(part.path) as f:
                arrays.append(torch.from_numpy(f["samples"][: self.num_samples - part.start]))
                nfes.append(int(f["nfe"]))
        return torch.cat(arrays), nfes


def generate_into(
    store: SampleStore,
    run: TrainedModel,
    world: World,
    *,
    method: str,
    seed: int,
    batch_size: int,
    progress: bool = False,
    **overrides: Any,
) -> int:
    """Make the samples ``store`` is missing, this rank's share of them, and write each batch
    as soon as it is done; returns how many this rank made.

    The missing batches are dealt out round robin: rank ``r`` of ``W`` makes batches
    ``r, r + W, ...``. Which samples a batch holds does not change them.
    """
    batches = store.missing(batch_size)[world.rank :: world.size]
    made = 0
    for indices in tqdm(batches, desc="sampling", disable=not progress, unit="batch"):
        x, info = generate(
            run,
            len(indices),
            method=method,
            seed=seed,
            batch_size=len(indices),
            first_index=indices.start,
            progress=progress,  # the sampler's own bar in steps (the ODE's in time) per batch
            **overrides,
        )
        store.write(indices, x, info["nfe"])
        made += len(indices)
    return made


def as_uint8_images(samples: Tensor) -> np.ndarray:
    """Images ``(N, C, H, W)`` in ``[0, 1]`` as uint8 ``(N, H, W, C)``, the layout of the
    official code's sample files and of FID tools (``round(255 x)``)."""
    x = (samples.clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()

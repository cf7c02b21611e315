"""Several processes, one job: PyTorch's own distributed engine as ``torchrun`` starts it.

``torchrun --nproc_per_node=N -m scoresde train ...`` starts ``N`` copies of a command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their
environment. :func:`setup` joins the process group they form (``nccl`` on GPUs, ``gloo`` on
CPUs) and says which device this process uses; a plain command is a group of one and needs no
group at all. Only rank 0 writes files; every rank computes.

Two kinds of waiting. The step's collectives (the gradients' all-reduce, the stop vote:
:func:`all_reduce_sum`) run on the default group, whose timeout is the run's
``train.dist_timeout_minutes`` (NCCL's watchdog kills a job whose collective waits longer).
Everything else that makes one rank wait for another (:func:`barrier`, :func:`gather_objects`,
:func:`broadcast_object`: folder checks, rank 0's checkpoint writes and evaluations, the
results of work shared out by index) runs on a second, ``gloo`` group of host objects with a
timeout of :data:`PATIENT_TIMEOUT`, so a slow checkpoint or evaluation never trips the watchdog.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from scoresde.infra.devices import resolve_device

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_MINUTES = 30.0
PATIENT_TIMEOUT = timedelta(days=7)
"""The timeout of the host-side group of :func:`barrier` and friends: longer than any
evaluation or checkpoint write a rank may wait for."""

_patient_group: list[object] = []  # the gloo group of barrier/gather/broadcast, once made


@dataclass(frozen=True)
class World:
    """Where this process stands: its ``rank`` among ``size`` processes, and its device."""

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This rank's indices of ``0..n-1``: rank ``r`` takes ``r, r + size, r + 2 size, ...``,
        so every rank's share differs by at most one item."""
        return range(self.rank, n, self.size)


def launched_by_torchrun() -> bool:
    """Whether the environment holds a ``torchrun`` group of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "auto", *, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> World:
    """Join the ``torchrun`` process group (once) and pick this process's device.

    Without ``torchrun`` (or with one process) this is just
    :func:`scoresde.setup.build.resolve_device`.
    Under ``torchrun``, ``device="auto"`` or ``"cuda"`` means ``cuda:LOCAL_RANK`` with the
    ``nccl`` backend when CUDA is available, else the CPU with ``gloo``; ``"cpu"`` forces
    ``gloo`` on the CPU. ``timeout_minutes`` is the default group's timeout (that of the step's
    collectives; ``train.dist_timeout_minutes``); the host-side group of :func:`barrier` waits
    up to :data:`PATIENT_TIMEOUT`. A process that joined already keeps its groups.

    Raises:
        ValueError: the device is unavailable, or the ``torchrun`` environment is incomplete.
    """
    if not launched_by_torchrun():
        return World(0, 1, resolve_device(device))
    missing = [k for k in ENV_KEYS if k not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE > 1 but {', '.join(missing)} not set: start several processes "
            "with torchrun (torchrun --nproc_per_node=N -m scoresde ...)"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        timeout = timedelta(minutes=timeout_minutes)
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
        _patient_group[:] = [dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)]
    return World(dist.get_rank(), dist.get_world_size(), chosen)


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        _patient_group.clear()


def _patient() -> object:
    """The host-side group (made by :func:`setup`; the default group if another caller joined
    the process group itself)."""
    return _patient_group[0] if _patient_group else None


def current() -> tuple[int, int]:
    """``(rank, size)`` of the running group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over all ranks (``x`` itself without a group)."""
    if current()[1] > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def barrier() -> None:
    """Wait until every rank gets here (nothing without a group), on the host-side group: up to
    :data:`PATIENT_TIMEOUT`, whatever the step's timeout."""
    if current()[1] > 1:
        dist.barrier(group=_patient())


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (``obj`` without a group; host-side group)."""
    if current()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_patient())
    return box[0]


def gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a group;
    host-side group, so a rank may wait on a slower one as long as :func:`barrier`)."""
    if current()[1] == 1:
        return [obj]
    found: list[object] = [None] * current()[1]
    dist.all_gather_object(found, obj, group=_patient())
    return found

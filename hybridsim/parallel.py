"""Data-parallel training of one run under ``torchrun`` (PyTorch DistributedDataParallel).

``torchrun --nproc_per_node=N -m hybridsim train ...`` starts N processes (ranks). Rank 0 is the
command: it composes and validates the config with Hydra, guards the run directory, and alone
writes (checkpoints, ``metrics.jsonl``, ``meta.json``, plots, evaluation, trackers). It sends
the run directory and the resolved config to the other ranks (:func:`send_job`), which train
the same models without Hydra and without writing anything.

Every step draws the global batch (``recipe.batch_size``) from the same seeded generator on
every rank, and each rank computes the loss on its own contiguous slice of it
(:func:`shard`); DDP all-reduces (averages) the gradients, so the update is the one of the
global batch: the loss trajectory equals the single-process run with the same batch size, to
floating-point summation order. Validation runs on every rank (the same numbers, so every rank
takes the same decisions); signals are agreed on by all ranks at the end of each step, so a
SIGTERM stops all of them at the same step. Backends: gloo for CPU tensors, NCCL for CUDA
tensors (``cpu:gloo,cuda:nccl`` when CUDA is present), one GPU per rank (``LOCAL_RANK``).

No Hydra here; ``torch.distributed`` is imported only when a run is distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch


class DistributedError(RuntimeError):
    """A run that cannot be trained data-parallel as configured (the message says why)."""


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""
    sent: bool = field(default=False, repr=False)  # rank 0: the job went to the other ranks

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


_WORLD = World()


def world() -> World:
    return _WORLD


def launched() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init() -> World:
    """Join the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``)."""
    global _WORLD
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend)
    _WORLD = World(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    return _WORLD


def finish() -> None:
    """Leave the process group; rank 0 first releases ranks still waiting for a job that will
    not come (the command failed before training)."""
    global _WORLD
    if not _WORLD.active:
        return
    import torch.distributed as dist

    if _WORLD.main and not _WORLD.sent:
        send_job(None)
        barrier()  # the others leave after this one (torchrun stops the rest at the first exit)
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()


def _broadcast(obj: Any) -> Any:
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def send_job(job: dict[str, Any] | None) -> None:
    """Rank 0: the run directory and resolved config to train (None: nothing to do)."""
    _WORLD.sent = True
    _broadcast(job)


def receive_job() -> dict[str, Any] | None:
    """A rank other than 0: wait for rank 0's job."""
    return _broadcast(None)


def barrier() -> None:
    """Wait for every rank (on the CPU backend: NCCL's barrier needs a device of its own)."""
    import torch.distributed as dist

    dist.all_reduce(torch.zeros(1))


def mean(value: float) -> float:
    """The mean of a number over the ranks."""
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / _WORLD.size


def agreed_signal(signum: int | None) -> int | None:
    """The signal any rank has received (the largest number), or None: every rank stops at
    the same step."""
    import torch.distributed as dist

    t = torch.tensor([signum or 0], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t) or None


def shard(batch: Any, batch_size: int) -> Any:
    """This rank's contiguous slice of a global batch: every tensor of ``inputs``/``targets``
    whose first axis is the batch (``batch_size`` long) is cut; others (a scalar unroll length)
    are kept whole."""
    per = batch_size // _WORLD.size
    lo, hi = _WORLD.rank * per, (_WORLD.rank + 1) * per

    def cut(part: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v[lo:hi] if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == batch_size else v
            for k, v in part.items()
        }

    return type(batch)(inputs=cut(batch.inputs), targets=cut(batch.targets))


def check_supported(problem: Any, recipe: Any) -> None:
    """DistributedError unless this problem and recipe can be split across the ranks."""
    n = _WORLD.size
    reason = getattr(problem, "not_data_parallel", None)
    if reason:
        raise DistributedError(
            f"problem={problem.name} cannot be trained data-parallel ({n} processes under "
            f"torchrun): {reason}; run it in one process"
        )
    if recipe.polish != "none":
        raise DistributedError(
            f"recipe.polish={recipe.polish} is not data-parallel (L-BFGS on the full data); "
            "use recipe.polish=none under torchrun"
        )
    if recipe.batch_size % n:
        raise DistributedError(
            f"recipe.batch_size={recipe.batch_size} (the global batch) must be divisible by the "
            f"{n} processes of torchrun"
        )


def wrap(problem: Any, model: torch.nn.Module) -> torch.nn.Module:
    """DDP around the problem's loss of ``model``: ``wrapped(batch)`` is the loss of this rank's
    slice, and its backward all-reduces the gradients of ``model``'s parameters (a problem's
    loss may call any method of the model, not only ``forward``: DDP sees this forward)."""
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(_Loss(problem, model), device_ids=ids)


class _Loss(torch.nn.Module):
    def __init__(self, problem: Any, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self._problem = problem

    def forward(self, batch: Any) -> torch.Tensor:
        return self._problem.loss(self.model, batch)

"""Data-parallel training under ``torchrun``: the process group and the few collectives.

``torchrun --nproc_per_node=N -m training.train ...`` starts N processes and tells each its
place through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). :func:`setup` reads it and joins the process group: gloo on CPU, nccl on
CUDA with each process on ``cuda:LOCAL_RANK``. It does so for any world size, one included:
``torchrun --nproc_per_node=1`` runs the backend's collectives (identities then), which is how
the nccl path is exercised on a machine with one GPU. Without ``WORLD_SIZE`` (a plain
``python -m training.train``) nothing is initialised and every helper here is a no-op.

Gradients are reduced once per step, after every local backward of the step has run and
before ``optimizer.step()``: :func:`average_gradients` all-reduces one flat bucket of all
gradients and divides by the world size. This is the "one reduction after all local
backwards" of ``docs/auglocal.md`` (section "The training step") and is correct for BP,
AugLocal and DGL alike, without DDP's wrapper hooks (which assume one backward per step).
BatchNorm normalises with each rank's own micro-batch statistics, as plain DDP does;
:func:`average_buffers` averages the running statistics at the end of each epoch, so every
rank, the evaluation and the checkpoint share them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class World:
    rank: int = 0           # this process, 0 … world_size − 1
    world_size: int = 1     # processes in the run
    local_rank: int = 0     # this process on its machine (its GPU index)
    launched: bool = False  # started by torchrun: joins the process group, runs collectives

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, logs and writes checkpoints."""
        return self.rank == 0


SINGLE = World()


def world_from_env(env: dict[str, str] | None = None) -> World:
    """This process's place as torchrun describes it; :data:`SINGLE` outside torchrun."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return SINGLE
    try:
        world = World(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]),
                      int(env.get("LOCAL_RANK", "0")), launched=True)
    except ValueError as err:
        raise ValueError(f"torchrun environment not understood (RANK={env.get('RANK')!r}, "
                         f"WORLD_SIZE={env.get('WORLD_SIZE')!r}, LOCAL_RANK="
                         f"{env.get('LOCAL_RANK')!r}): {err}") from err
    if not 0 <= world.rank < world.world_size:
        raise ValueError(f"RANK={world.rank} lies outside 0…WORLD_SIZE−1 = "
                         f"{world.world_size - 1}; start the run with torchrun")
    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if key not in env]
    if missing:  # e.g. a cluster that exports WORLD_SIZE to every job
        raise ValueError(f"WORLD_SIZE={env['WORLD_SIZE']} is set but {' and '.join(missing)} "
                         "not: start the run with torchrun, or unset WORLD_SIZE for a "
                         "single-process run")
    return world


def setup(device: str) -> tuple[World, torch.device, bool]:
    """Join the process group when torchrun started this process, whatever its world size.

    ``device``: the requested ``--device``. Under torchrun a CUDA device becomes
    ``cuda:LOCAL_RANK`` (backend nccl), anything else stays as asked (backend gloo).
    Returns (world, device, whether this call created the process group, so the caller
    destroys it when done).
    """
    world = world_from_env()
    if not world.launched:
        return world, torch.device(device), False
    target = torch.device(device)
    if target.type == "cuda":
        target = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(target)
    if dist.is_initialized():
        return world, target, False
    cuda = target.type == "cuda"
    # device_id binds the nccl communicator to this process's GPU (barrier() warns otherwise)
    dist.init_process_group("nccl" if cuda else "gloo", rank=world.rank,
                            world_size=world.world_size, device_id=target if cuda else None)
    return world, target, True


def teardown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module, world: World) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical starting weights)."""
    if not world.launched:
        return
    tensors = [t.data for t in module.parameters()] + list(module.buffers())
    for t in tensors:
        dist.broadcast(t, src=0)


def average_gradients(module: nn.Module, world: World) -> None:
    """Replace each parameter's gradient by its mean over all ranks, in one all-reduce.

    Parameters without a gradient are left without one; every rank runs the same graph
    on micro-batches of the same size, so the set is the same on every rank.
    """
    if not world.launched:
        return
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    grads = [p.grad for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world.world_size
    for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(reduced)


def average_buffers(module: nn.Module, world: World) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over all ranks."""
    if not world.launched:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = _flatten_dense_tensors(buffers)
    dist.all_reduce(flat)
    flat /= world.world_size
    for b, reduced in zip(buffers, _unflatten_dense_tensors(flat, buffers)):
        b.copy_(reduced)


def sum_over_ranks(values: list[float | int], world: World, device: torch.device) -> list[float]:
    """Element-wise sums of a few numbers over all ranks (float64)."""
    if not world.launched:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(world: World) -> None:
    if world.launched:
        dist.barrier()

"""Data-parallel training across processes with ``torch.distributed`` (launched by ``torchrun``,
or on one CPU machine by ``npga fit`` itself: ``--processes``, see
:func:`npga_taichi.avatar.fitting.fit_avatar`).

One process per device (rank). Every rank holds the same avatar, optimiser and RNG states; a
step's views are drawn identically on every rank and split into contiguous equal shares, each
rank renders its share, and two ``all_reduce`` (SUM) per step combine the parameter gradients
(float32) and the screen-space gradient statistics of adaptive density control, the loss terms
and a finiteness flag (float64). Losses are divided by the step's *total* view count, so the
summed gradient is the single-process gradient of the same views (for two ranks bit for bit: one
correctly rounded float32 addition either way): learning rates and loss scale do not
change with the number of ranks, and every rank applies the same Adam update. After each
densification a checksum of the Gaussians is compared across ranks (:func:`check_replicas`).

Backends: ``gloo`` on CPU, ``nccl`` on CUDA (one device per rank: ``cuda:LOCAL_RANK``).
Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything here is a no-op.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

# How long a collective waits for a missing rank before the job fails with a message (a rank
# that died makes the others' all_reduce fail at once with gloo; this bounds the other cases).
COLLECTIVE_TIMEOUT_S = 600


class RankFailure(RuntimeError):
    """Another rank stopped answering (it died or was killed): the job cannot continue."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world`` processes, ``device`` it trains on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs, validation images and the summary."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def share(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` items (``count`` divisible by ``world``)."""
        if count % self.world:
            raise ValueError(f"the step's {count} frame groups (--views-per-step / --cameras-per-frame) must be "
                             f"a multiple of the number of ranks ({self.world})")
        per = count // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the rendezvous of local ranks)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_environment(rank: int, world: int, port: int) -> dict[str, str]:
    """The variables torchrun sets for rank ``rank`` of ``world`` processes on this machine."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu") -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT);
    a single process (no torchrun) gets the trivial context on ``device``."""
    if not launched_by_torchrun():
        return DistContext(device=torch.device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_cuda else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    return DistContext(rank, world, local_rank, dev)


def _lost_contact(ctx: DistContext, err: Exception) -> RankFailure:
    """The one message every collective gives when a peer is gone."""
    return RankFailure(f"rank {ctx.rank}: lost contact with the other ranks ({err}); a rank probably died. "
                       "The last checkpoint is intact: rerun with --resume.")


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op for one process); :class:`RankFailure` when a
    peer is gone."""
    if ctx.active:
        try:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        except (RuntimeError, dist.DistBackendError) as err:
            raise _lost_contact(ctx, err) from None
    return tensor


def agree(ctx: DistContext, ok: bool, what: str) -> None:
    """Every rank learns whether all ranks got through ``what``; the ones that did raise
    RuntimeError when another did not (instead of waiting for it in the next collective)."""
    if not ctx.active:
        return
    failed = all_reduce_sum(ctx, torch.tensor([0.0 if ok else 1.0], dtype=torch.float64, device=ctx.device))
    if ok and failed.item() > 0:
        raise RuntimeError(f"rank {ctx.rank}: another rank failed during {what}; see its message")


def check_replicas(ctx: DistContext, checksum: torch.Tensor, what: str) -> None:
    """Raise RuntimeError when ``checksum`` (a few float64 numbers) differs between ranks."""
    if not ctx.active:
        return
    local = checksum.detach().to(torch.float64).reshape(-1)
    gathered = [torch.empty_like(local) for _ in range(ctx.world)]
    try:
        dist.all_gather(gathered, local)
    except (RuntimeError, dist.DistBackendError) as err:
        raise _lost_contact(ctx, err) from None
    for r, other in enumerate(gathered):
        if not torch.equal(other, local):
            raise RuntimeError(f"ranks diverged after {what}: rank {ctx.rank} has checksum {local.tolist()}, "
                               f"rank {r} has {other.tolist()}")


def shutdown(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()

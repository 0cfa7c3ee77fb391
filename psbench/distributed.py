"""torch.distributed helpers: init from torchrun's environment, rank facts, gathers that keep gradients.

One process per device (``torchrun --nproc_per_node N -m psbench.cli run ...``). The protocol's batch
size is the *effective* batch: each process loads ``batch / world_size`` items (the batch samplers give
every rank a contiguous share of the same global batch), and the contrastive loss is computed over the
embeddings of all ranks, so the loss, its gradient and the numbers a run produces do not depend on the
number of processes.

Gradient rule. :func:`all_gather_with_grad` returns the concatenation of every rank's tensor; its
backward *sums* the gradient of the gathered tensor over ranks and returns this rank's slice. Every
rank then computes the same loss ``L`` over the gathered batch, and DDP's gradient average
``(1/W) sum_r g_r`` equals the single-process gradient of ``L`` exactly: parameters used directly by
the loss (the temperature, X-Pool's pooling head) get ``dL/dθ`` on every rank, and each rank's encoder
gets ``W * dL/de_r`` through the sum, averaged back to ``dL/de_r``. Per-sample terms computed on the
local share only (Prompt Switch's caption loss) are scaled by :func:`local_share` so that their rank
average is the global mean.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)

Encoded = dict[str, Tensor]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank and backend (``none`` when single)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def as_record(self) -> dict[str, Any]:
        return {"rank": self.rank, "world_size": self.world_size, "backend": self.backend}


def launched_by_torchrun() -> bool:
    """True when torchrun's variables say more than one process takes part."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def info() -> DistInfo:
    if not is_distributed():
        return DistInfo()
    return DistInfo(rank(), world_size(), int(os.environ.get("LOCAL_RANK", "0")), str(dist.get_backend()))


def init_from_env(device: str = "cpu") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...); no-op otherwise.

    NCCL for ``cuda`` (each process takes ``cuda:LOCAL_RANK``), gloo for ``cpu``. Returns this process's
    :class:`DistInfo`. Safe to call twice.
    """
    if not launched_by_torchrun() or is_distributed():
        return info()
    cuda = torch.device(device).type == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                "use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    here = info()
    log.info("joined process group: rank %d of %d (%s)", here.rank, here.world_size, here.backend)
    return here


def process_device(device: str) -> torch.device:
    """This process's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; small objects only: paths, flags)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def per_process_batch(batch_size: int, num_processes: int) -> int:
    """The share of the effective batch each process loads; error unless it divides evenly."""
    if num_processes < 1:
        raise ValueError(f"number of processes must be >= 1, got {num_processes}")
    if batch_size % num_processes:
        raise ValueError(
            f"train.batch_size={batch_size} (the effective batch) is not divisible by the {num_processes} "
            "processes; choose a batch size that is a multiple of the number of processes"
        )
    return batch_size // num_processes


# -- gathers -------------------------------------------------------------------------------------------
def _gather_sizes(n: int, device: torch.device) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s.item()) for s in sizes]


def _gather_padded(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every rank's ``x`` (leading dims ``sizes``) along dim 0 -> (sum(sizes), ...)."""
    longest = max(sizes)
    carrier = x.to(torch.uint8) if x.dtype == torch.bool else x  # gloo has no bool collectives
    padded = carrier.new_zeros((longest, *carrier.shape[1:]))  # (max n, ...)
    padded[: carrier.shape[0]] = carrier
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    out = torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])  # (sum n, ...)
    return out.to(torch.bool) if x.dtype == torch.bool else out


class _AllGatherSumGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gathered gradient over ranks and keeps the local slice."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int], rank_: int) -> Tensor:  # noqa: D102
        ctx.sizes, ctx.rank = sizes, rank_
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: D102
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # (sum n, ...)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Every rank's ``x`` concatenated in rank order (x may differ in length across ranks).

    The local part carries the gradient (summed over ranks, see the module docstring); tensors without
    a gradient (masks, ids) are gathered plainly. Identity when not distributed.
    """
    if not is_distributed():
        return x
    sizes = _gather_sizes(int(x.shape[0]), x.device)
    if x.requires_grad and torch.is_grad_enabled():
        return _AllGatherSumGrad.apply(x, sizes, rank())
    with torch.no_grad():
        return _gather_padded(x, sizes)


def gather_encoded(enc: Encoded) -> Encoded:
    """An ``Encoded`` dict with every rank's items, in rank order (local items keep their gradient)."""
    if not is_distributed():
        return enc
    return {key: all_gather_with_grad(value) for key, value in enc.items()}


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean over ranks of scalar log values (same keys on every rank)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)  # (K,)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def local_share(local_weight: Tensor) -> Tensor:
    """``W * w_r / sum_r w_r``: the factor that turns a local mean into its share of the global mean.

    A per-sample loss term averaged over this rank's items (total weight ``w_r``: item count, or the
    sum of class weights for a weighted cross-entropy) times this factor has a rank average equal to
    the mean over the whole gathered batch. 1 when not distributed. No gradient.
    """
    if not is_distributed():
        return torch.ones((), dtype=torch.float32, device=local_weight.device)
    w = local_weight.detach().to(torch.float64).reshape(1)  # (1,)
    total = w.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return (world_size() * w / total.clamp(min=1e-12)).reshape(()).float()


# -- sharded gallery encoding ----------------------------------------------------------------------------
def shard_bounds(n: int, num_shards: int, shard: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of shard ``shard`` when ``n`` items are split into ``num_shards``."""
    base, extra = divmod(n, num_shards)
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def all_gather_rows(local: Tensor, comm: torch.device) -> Tensor:
    """Concatenate every rank's rows in rank order (ranks may hold different counts; no gradient)."""
    return _gather_padded(local.to(comm), _gather_sizes(int(local.shape[0]), comm))

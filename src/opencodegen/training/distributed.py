"""torch.distributed plumbing: process group from torchrun, DDP or FSDP2 wrapping, collectives.

Launched by `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) the process joins
the group with NCCL on GPUs or gloo on CPUs. Started without torchrun it is one process; the
"ddp" and "fsdp" strategies then run in a group of one, which behaves exactly like them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn

from opencodegen.errors import ConfigError, OpenCodeGenError


@dataclass
class DistEnv:
    """Where this process stands: rank, world size, device, and the resolved strategy."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    strategy: str
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def group_exists() -> bool:
    return dist.is_available() and dist.is_initialized()


def report_failure(exc: BaseException) -> int:
    """Print `exc` as `opencodegen` does at its top level; returns the matching exit status."""
    if isinstance(exc, OpenCodeGenError):
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    traceback.print_exception(exc)
    return 1


_KEPT_UNTIL_EXIT: list[object] = []


def keep_until_exit(wrapped: object) -> None:
    """Hold a torchrun worker's wrapped model until `exit_worker`, never freeing it.

    Freeing a DDP model frees its reducer, whose process-group reference can be the last one;
    gloo's destructor then joins its worker threads while this thread holds the GIL, and a worker
    still releasing a finished collective's tensors waits for that GIL: a deadlock (seen when a
    rank failed and its traceback, holding the trainer, was dropped). The worker ends through
    os._exit, so what is held here is never destructed."""
    if launched_by_torchrun():
        _KEPT_UNTIL_EXIT.append(wrapped)


def exit_worker(status: int) -> NoReturn:
    """End this torchrun worker now with `status`, after its run has closed everything it opened.

    Skipping interpreter finalization is deliberate. Gloo runs collectives on worker threads,
    which drop their last reference to a finished collective's buffers a moment after the
    caller's wait() returns; for buffers made in Python (object collectives, barriers chained to
    them) that drop takes the GIL. A thread taking the GIL while the interpreter finalizes is
    ended by Python in a way C++ cannot unwind through: "terminate called without an active
    exception", SIGABRT, and torchrun reports a finished run as failed (the core dump's stack:
    ProcessGroupGloo::runLoop -> ~AsyncBarrierWork -> ~AsyncAllgatherWork -> decref -> take_gil
    -> pthread_exit, while the main thread is in Py_FinalizeEx). destroy_process_group does not
    join those threads, so no order of cleanup closes the window; not finalizing does.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def setup(strategy: str = "auto", device: str = "auto", timeout_s: float = 1800) -> DistEnv:
    """Join (or create) the process group and pick the device and strategy of this process."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for, but torch sees no CUDA device")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns_group = False
    if launched_by_torchrun() and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
        owns_group = True
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    if strategy == "auto":
        strategy = "ddp" if world > 1 else "none"
    if strategy == "none" and world > 1:
        raise ConfigError(f"strategy 'none' cannot train with {world} processes; use ddp or fsdp")
    if strategy in ("ddp", "fsdp") and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
        owns_group = True
    return DistEnv(rank, world, local_rank, dev, strategy, owns_group)


def teardown(env: DistEnv, failed: bool = False) -> None:
    """Close the process group this process created (a group made by the caller stays open).

    On success every rank has passed the run's final barrier, so the group is destroyed in
    order. After a failure the peers may be blocked in a collective this rank will never join:
    NCCL communicators are aborted (their destroy would wait for the peers), gloo's are shut
    down locally; either way the peers see the connection drop and fail too, and torchrun
    stops the job with a non-zero status.
    """
    if not (env.owns_group and dist.is_initialized()):
        return
    if failed and dist.get_backend() == "nccl":
        dist.distributed_c10d._abort_process_group()
    else:
        dist.destroy_process_group()


def wrap_model(model: nn.Module, env: DistEnv, cpu_offload: bool = False) -> nn.Module:
    """Wrap for the strategy: DDP, or FSDP2 `fully_shard` on every block and then the root."""
    if env.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    if env.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

        # FSDP2 warns that the root's output (logits, a view) must not be modified in place; the
        # trainer never does.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        mesh = init_device_mesh(env.device.type, (env.world_size,))
        # pinned host memory needs an accelerator; on a CPU-only machine the offload path runs unpinned
        offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh, offload_policy=offload)
        fully_shard(model, mesh=mesh, offload_policy=offload)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The CodeGenForCausalLM inside a DDP wrapper (FSDP2 modifies the module in place)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, env: DistEnv, enabled: bool) -> Iterator[None]:
    """Reduce gradients across processes only when `enabled` (the last micro-batch of a step)."""
    if env.strategy == "ddp" and not enabled:
        with model.no_sync():
            yield
        return
    if env.strategy == "fsdp":
        model.set_requires_gradient_sync(enabled)
    yield


def all_reduce_mean(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of `values` over the processes (every process gets it)."""
    if env.active and env.world_size > 1:
        values = values.detach().to(env.device, torch.float64)
        dist.all_reduce(values)
        values = values / env.world_size
    return values.cpu()


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's `obj` on every process."""
    if not (env.active and env.world_size > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every process's `obj`, in rank order, on every process."""
    if not (env.active and env.world_size > 1):
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.active and env.world_size > 1:
        dist.barrier()

"""Multi-process training: the few collectives our own loops need, and none at all when there is one process.

Under a launcher that starts one process per device (``accelerate launch --multi_gpu --num_processes N``, or
``torchrun --nproc_per_node N``; both set ``WORLD_SIZE``) every process runs the same job. ``init`` joins them into one
process group through accelerate's ``PartialState`` (gloo on CPU, NCCL on GPUs), the same group TRL's trainers then
use. Our PPO is data-parallel on top of it: every process holds a replica of policy and critic, samples its share of
each batch's prompts, and averages its gradients with the others before every optimiser step (``average_gradients``),
so the replicas take identical steps; the batch statistics (whitening, logged means) are sums over every process's
share (``all_reduce_sum``, ``batch_means``).

The rule that keeps a group from hanging: every process calls the same collectives, in the same order, the same
number of times. So a check that fails on one process fails on all (``raise_together``), and what only the main
process does (evaluate, write rows and checkpoints) goes through ``on_main``, which hands its result, or its error,
to every process in one collective.

With one process (no launcher, or a launcher with one process) every function here is the identity or a plain call:
nothing is sent anywhere and the numbers are those of a single-process run.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
# How long a process waits in a collective for the others. The main process evaluates and writes checkpoints while the
# others wait, and a stage build may wait for another job's build to finish (harness.runs.cache): longer than torch's 30 min.
TIMEOUT = timedelta(hours=6)
# Gradients are averaged in flat buckets of at most this many elements (a few collectives per step, bounded memory).
BUCKET = 2**24


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init(cpu: bool) -> None:
    """Join the launcher's processes into one group (gloo when ``cpu``, else the accelerator's backend); nothing
    when there is one process or the group exists already (e.g. a trainer made it)."""
    if launched_processes() > 1 and not (dist.is_available() and dist.is_initialized()):
        from accelerate import PartialState

        PartialState(cpu=cpu, timeout=TIMEOUT)
        if not is_main():  # every process logs the same progress: the main process's lines are enough
            import logging

            logging.getLogger("harness").setLevel(logging.WARNING)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def _comm_device() -> torch.device:
    """Where small tensors for a collective live: the current GPU under NCCL, else the CPU."""
    if world_size() > 1 and "nccl" in str(dist.get_backend()) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------------- splitting
def per_process(n: int, key: str, processes: int | None = None) -> int:
    """This process's share of ``n`` items (a batch); ConfigError when the processes cannot share it equally (equal
    shares keep every process's optimiser steps and collectives in step, and make the mean of the processes' means
    the batch mean). ``processes``: how many share it (default: the group's size)."""
    from harness.fields import ConfigError

    w = processes or world_size()
    if n % w:
        raise ConfigError(
            f"{key}: {n} cannot be split equally over {w} processes; pick a multiple of {w} "
            "or launch a number of processes that divides it"
        )
    return n // w


def shard(items: list[T], key: str = "pipeline.batch_size") -> list[T]:
    """This process's contiguous share of ``items`` (all of them with one process)."""
    n = per_process(len(items), key)
    return items[rank() * n : (rank() + 1) * n]


def process_seed(seed: int) -> int:
    """A seed for this process's own random stream: ``seed`` itself on the main process (so one process draws what a
    single-process run draws), a different stream derived from (seed, rank) on every other."""
    if rank() == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([int(seed), rank()]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------- reductions
def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over every process (a new tensor; ``t`` itself with one process)."""
    if world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def batch_means(columns: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean over the whole batch (every process's share) of each per-episode column (B,), in one collective."""
    names = list(columns)
    ref = columns[names[0]]
    sums = torch.stack(
        [columns[k].float().sum() for k in names] + [torch.tensor(float(ref.shape[0]), device=ref.device)]
    )
    sums = all_reduce_sum(sums)
    return {k: float(sums[i] / sums[-1]) for i, k in enumerate(names)}


def process_means(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the processes, in one collective (with equal shares, the mean of the processes'
    per-minibatch means is the mean of the data-parallel minibatches' losses, the ones whose gradients were applied)."""
    if world_size() == 1:
        return dict(values)
    names = sorted(values)
    t = all_reduce_sum(torch.tensor([float(values[k]) for k in names], dtype=torch.float64, device=_comm_device()))
    return {k: float(t[i]) / world_size() for i, k in enumerate(names)}


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every process's ``t`` (same shape on each) concatenated along dim 0, in rank order."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def average_gradients(parameters) -> None:
    """Replace each trainable parameter's gradient by its mean over the processes (the data-parallel step: every
    replica then takes the same optimiser step). A parameter without a gradient counts as a zero one, so every
    process reduces the same tensors."""
    w = world_size()
    if w == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    for i, p in enumerate(params):
        bucket.append(p.grad)
        size = sum(g.numel() for g in bucket)
        last = i == len(params) - 1
        if last or size + params[i + 1].numel() > BUCKET or params[i + 1].grad.dtype != p.grad.dtype:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= w
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket = []


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Every process's copy of ``module`` becomes the main process's (parameters and buffers)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            if isinstance(t, torch.Tensor):
                dist.broadcast(t, src=0)


# -------------------------------------------------------------------------------------- agreeing and raising
def agree(flag: bool) -> bool:
    """True on every process iff ``flag`` is True on every process."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _picklable(obj) -> bool:
    try:
        pickle.dumps(obj)
        return True
    except Exception:  # noqa: BLE001 - anything pickle cannot take
        return False


def raise_together(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` on every process; if it raises on any, every process raises (the lowest failing rank's
    error), instead of one stopping while the others wait for it in their next collective."""
    error = None
    try:
        result = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised below, on every process
        if world_size() == 1:
            raise
        error, result = e, None
    if agree(error is None):
        return result
    errors: list = [None] * world_size()
    dist.all_gather_object(errors, error if _picklable(error) else RuntimeError(f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    raise next(e for e in errors if e is not None)


def on_main(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` on the main process only; every process returns its result, or raises its error, after
    one collective (the others wait there while the main process works)."""
    if world_size() == 1:
        return fn(*args, **kwargs)
    box: list = [None]
    if is_main():
        try:
            box[0] = (fn(*args, **kwargs), None)
        except Exception as e:  # noqa: BLE001 - handed to every process below, then raised
            box[0] = (None, e)
        if not _picklable(box[0]):
            result, e = box[0]
            box[0] = (
                None,
                e
                if e is not None and _picklable(e)
                else RuntimeError(
                    f"{type(e).__name__}: {e}"
                    if e is not None
                    else f"the main process's {fn.__name__} returned "
                    "something that cannot be sent to the other processes"
                ),
            )
    dist.broadcast_object_list(box, src=0)
    result, error = box[0]
    if error is not None:
        raise error
    return result


def gather_objects(obj) -> list:
    """Every process's ``obj`` in rank order (``[obj]`` with one process)."""
    if world_size() == 1:
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()

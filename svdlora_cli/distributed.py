"""Per-tensor work split across the processes of a torchrun / accelerate launch.

Under a launch with WORLD_SIZE > 1 every process runs the same command. The work
(the cache misses) is listed by rank 0 and broadcast, so every rank splits the same
list; each rank takes a share balanced by estimated cost (largest first, to the
least loaded rank) and writes its results to the shared artifact cache; after a
barrier every rank reads the others' results from the cache. An item is computed by
the same code from the same bytes wherever it runs, so the split does not change a
result (on the CPU, given the same number of BLAS threads per process: BLAS sums in a
thread-dependent order).

The process group is the one already running, or one made on first use that lasts
until exit (accelerate then reuses it for training).
Several nodes need a --cache-dir on a shared filesystem; a result missing from the cache
after the barrier is computed locally, with a warning, rather than lost.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
V = TypeVar("V")

# A rank waits at a barrier for the others' shares, which the cost model keeps within a
# few percent of its own, so long waits mean a hung rank. A crashed rank ends the whole
# launch through torchrun, not through this timeout. `train` reuses the group, so it is
# also the timeout of its collectives.
BARRIER_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch (rank 0 of 1 outside one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Launch:
        """Read RANK, WORLD_SIZE and LOCAL_RANK as torchrun and accelerate set them."""
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def primary(self) -> bool:
        return self.rank == 0


def balance(costs: Sequence[float], parts: int) -> list[list[int]]:
    """Split item indices into `parts` bins of near-equal total cost.

    Longest processing time first: items in decreasing cost (ties by index) go to the
    least loaded bin (ties by bin number), which is within 4/3 of the best split and
    deterministic. Each bin lists its indices in their original order.
    """
    loads = [0.0] * parts
    bins: list[list[int]] = [[] for _ in range(parts)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        lightest = min(range(parts), key=lambda b: (loads[b], b))
        bins[lightest].append(index)
        loads[lightest] += costs[index]
    return [sorted(b) for b in bins]


class WorkGroup:
    """Collectives over the launch's processes; every rank must make the same calls."""

    def __init__(self, launch: Launch, active: bool) -> None:
        self.launch = launch
        self.active = active and launch.distributed

    def agree(self, work: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """Rank 0's list of (key, cost), on every rank."""
        if not self.active:
            return work
        import torch.distributed as dist

        box: list[object] = [work if self.launch.primary else None]
        dist.broadcast_object_list(box, src=0)
        return [(str(k), float(c)) for k, c in box[0]]  # type: ignore[union-attr]

    def split(
        self, todo: Sequence[T], key: Callable[[T], str], cost: Callable[[T], float]
    ) -> tuple[list[T], list[T]]:
        """(the items of `todo` this rank computes, those it reads from the cache later).

        Rank 0's `todo` is the work; every rank splits it the same way. An item this
        rank lists that rank 0 does not was already done when rank 0 looked.
        """
        if not self.active:
            return list(todo), []
        work = self.agree([(key(item), cost(item)) for item in todo])
        share = balance([c for _, c in work], self.launch.world_size)[self.launch.rank]
        keys = {work[i][0] for i in share}
        return (
            [item for item in todo if key(item) in keys],
            [item for item in todo if key(item) not in keys],
        )

    def wait(self) -> None:
        """Barrier: every rank's share is in the cache after it."""
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def run(
        self,
        todo: Sequence[T],
        key: Callable[[T], str],
        cost: Callable[[T], float],
        compute: Callable[[Sequence[T]], Mapping[str, V]],
        fetch: Callable[[T], V | None],
    ) -> tuple[dict[str, V], int]:
        """Results for every item of `todo`, by key, and how many had to be recomputed.

        This rank computes its share (which `compute` also stores in the shared cache),
        waits for the others, then `fetch`es theirs from the cache; anything not there
        (a cache that is not shared between nodes) is computed here.
        """
        mine, others = self.split(todo, key, cost)
        results = dict(compute(mine))
        self.wait()
        late = []
        for item in others:
            value = fetch(item)
            if value is None:
                late.append(item)
            else:
                results[key(item)] = value
        results.update(compute(late))
        return results, len(late)


def missing_warning(count: int, what: str, directory: object) -> str:
    return (
        f"{count} {what} made by other processes were not in the cache {directory}; they were "
        "recomputed here (on several nodes --cache-dir must be on a shared filesystem)"
    )


_SPLIT = contextvars.ContextVar("svdlora_split_across_processes", default=False)


@contextlib.contextmanager
def split_across_processes(enabled: bool = True) -> Iterator[None]:
    """Inside this block, extraction under a launch splits its work across the processes.

    Every process must then make the same calls (they meet in collectives). The CLI
    turns it on for every command; a library caller opts in, so that a script that
    decomposes on rank 0 alone does not wait forever for the other ranks.
    """
    token = _SPLIT.set(enabled)
    try:
        yield
    finally:
        _SPLIT.reset(token)


@contextlib.contextmanager
def work_group(share_through_cache: bool = True) -> Iterator[WorkGroup]:
    """The launch's process group for a step (joined, or made on first use), when
    splitting is on (`split_across_processes`).

    Without a cache the ranks cannot share results, so each computes everything.
    """
    launch = Launch.from_env()
    group = WorkGroup(launch, share_through_cache and _SPLIT.get())
    if group.active:
        _ensure_process_group(launch)
    yield group


def _ensure_process_group(launch: Launch) -> None:
    """Join the running process group, or make the one the whole process will use.

    A group cannot be made again after it is destroyed under torchrun (the rendezvous
    store keeps the old addresses), so the group made here lives until exit, and
    accelerate reuses it under `train`: gloo for CPU tensors and NCCL for CUDA tensors.
    """
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(
        backend, rank=launch.rank, world_size=launch.world_size, timeout=BARRIER_TIMEOUT
    )


def release_process_group(succeeded: bool = True) -> None:
    """Meet the other ranks, then destroy the process group, before the interpreter exits.

    A rank that tears gloo down while a peer still talks to it can abort ("terminate
    called without an active exception") after its own work is done, failing the whole
    launch. After a success every rank gets here, so a barrier first is safe; after a
    failure the others may be stuck elsewhere (torchrun stops them), so no barrier then.
    """
    import sys

    if "torch.distributed" not in sys.modules:  # never imported: nothing to release
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if succeeded:
            dist.barrier()
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port no one listens on now, from the OS (bind to port 0), for --master_port.

    Fixed ports collide when two launches (or a stale one) share the machine.
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

"""Several processes on torch.distributed, as launched by `torchrun` or `accelerate launch
--multi_gpu` (which runs torchrun; accelerate's `--cpu` multi-process mode uses mpirun instead).

Both launchers set the same environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT); without them everything here is the single-process identity (rank 0 of 1, no
process group, `gather` returns `[obj]`), so library code calls these functions
unconditionally. The process group is created lazily on first use (gloo on CPU, nccl when
CUDA is available), with two timeouts: a short one for the rendezvous, so a missing peer is a
clear `DistributedError` instead of a hang, and a long one for collectives, since ranks may
legitimately be minutes apart (one resumes a checkpoint while another recomputes).

Sharding is contiguous and by item: rank r gets items [r·n/W, (r+1)·n/W) (the first n mod W
ranks one more), so concatenating the ranks' results in rank order gives back the original
order, and every item keeps whatever seed it carries."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence, TypeVar

from interp.errors import CultureLensError

T = TypeVar("T")

# Seconds; override with the environment variables of the same names.
RENDEZVOUS_TIMEOUT = 300.0
COLLECTIVE_TIMEOUT = 1800.0


class DistributedError(CultureLensError):
    """A bad launch environment, a missing rendezvous, or work that cannot be split."""


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from None


def world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; (0, 1) when not launched."""
    r, w = _env_int("RANK"), _env_int("WORLD_SIZE")
    if r is None and w is None:
        return 0, 1
    if r is None or w is None:
        raise DistributedError(f"RANK={os.environ.get('RANK')!r}, WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}: "
                               "a launcher sets both (torchrun / accelerate launch) or neither")
    if w < 1 or not 0 <= r < w:
        raise DistributedError(f"RANK={r}, WORLD_SIZE={w}: need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    return r, w


def rank() -> int:
    """This process's global rank (0 when not launched)."""
    return world()[0]


def world_size() -> int:
    """Number of processes (1 when not launched)."""
    return world()[1]


def local_rank() -> int:
    """Rank on this node (LOCAL_RANK; selects the GPU)."""
    return _env_int("LOCAL_RANK") or 0


def is_main() -> bool:
    """True on rank 0: the process that writes reports, manifests and checkpoints."""
    return rank() == 0


def is_distributed() -> bool:
    """True when launched with more than one process."""
    return world_size() > 1


def _timeout(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not a number of seconds") from None


def init(backend: str | None = None, rendezvous_timeout: float | None = None,
         collective_timeout: float | None = None) -> bool:
    """Create the default process group if launched with WORLD_SIZE > 1 and none exists yet.

    Returns True when a process group is (now) in use. `backend` defaults to nccl with CUDA
    (and selects the GPU LOCAL_RANK), gloo otherwise. Timeouts in seconds default to the
    environment variables CULTURELENS_RENDEZVOUS_TIMEOUT (300) and
    CULTURELENS_COLLECTIVE_TIMEOUT (1800)."""
    import torch
    import torch.distributed as dist

    r, w = world()
    if w == 1:
        return False
    if dist.is_initialized():
        if dist.get_world_size() != w or dist.get_rank() != r:
            raise DistributedError(f"a process group of rank {dist.get_rank()}/{dist.get_world_size()} exists, "
                                   f"but the environment says rank {r}/{w}")
        return True
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(var):
            raise DistributedError(f"WORLD_SIZE={w} but {var} is not set: launch with torchrun or accelerate launch")
    rdzv = rendezvous_timeout if rendezvous_timeout is not None else \
        _timeout("CULTURELENS_RENDEZVOUS_TIMEOUT", RENDEZVOUS_TIMEOUT)
    coll = collective_timeout if collective_timeout is not None else \
        _timeout("CULTURELENS_COLLECTIVE_TIMEOUT", COLLECTIVE_TIMEOUT)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        # The env:// store (the torchrun agent's store when there is one) with the short timeout:
        # a peer that never arrives fails here. Collectives then get the long timeout.
        store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=rdzv)))
        dist.init_process_group(backend, store=store, rank=r, world_size=w, timeout=timedelta(seconds=coll))
        # Every peer must have joined the group, not just the store (gloo can bound the wait).
        if backend == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=rdzv))
        else:
            dist.barrier()
    except (RuntimeError, TimeoutError) as e:  # DistStoreError, DistNetworkError are RuntimeErrors
        if dist.is_initialized():
            dist.destroy_process_group()
        raise DistributedError(f"rank {r} of {w}: no rendezvous with all peers at {where} within {rdzv:g} s "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Are all "
                               f"{w} processes started (torchrun --nproc_per_node/--nnodes), is the port free "
                               "and reachable?") from e
    # A script that never calls shutdown() (the group is created lazily by library calls) must
    # not leave gloo's worker threads to interpreter finalisation, where freeing their last
    # tensors can abort the process (SIGABRT) after its work is done.
    atexit.register(shutdown, wait=False)
    return True


def shutdown(wait: bool = True) -> None:
    """Destroy the process group if this module (or anyone) created one.

    With `wait` (the end of a job that went well) every rank first waits for the others, so no
    rank closes its connections while a peer still works (rank 0 writes the results after the
    last collective) and all ranks leave together. Pass wait=False on an error path: a peer that
    failed elsewhere may never reach the barrier."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def shard_range(n: int, what: str = "items") -> range:
    """Indices of this rank's contiguous share of n items (see the module docstring).

    More ranks than items is a `DistributedError` (every rank raises it, so none waits)."""
    r, w = world()
    if n < w:
        raise DistributedError(f"{n} {what} cannot be split across {w} processes: every rank needs at least "
                               f"one; launch at most {n} processes (torchrun --nproc_per_node)")
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return range(start, start + base + (r < extra))


def shard(items: Sequence[T], what: str = "items") -> list[T]:
    """This rank's contiguous share of `items` (each keeps its own seed or id)."""
    return [items[i] for i in shard_range(len(items), what)]


def gather(obj: Any, everyone: bool = True) -> list[Any] | None:
    """Every rank's `obj` (picklable), in rank order.

    `everyone=True`: all ranks get the list (for work that continues on every rank);
    `everyone=False`: only rank 0 gets it, other ranks get None. One process: `[obj]`."""
    import torch.distributed as dist

    if not init():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    if everyone:
        dist.all_gather_object(out, obj)
        return out
    dist.gather_object(obj, out if is_main() else None, dst=0)
    return out if is_main() else None


def gather_shards(parts: Sequence[T], n: int) -> list[T]:
    """Concatenate every rank's `shard` results back into the original order of n items
    (on every rank), checking that nothing was lost or duplicated."""
    allparts = gather(list(parts))
    got = [x for p in allparts for x in p]
    if len(got) != n:
        raise DistributedError(f"gathered {len(got)} results from {len(allparts)} ranks "
                               f"({[len(p) for p in allparts]}); expected {n}")
    return got


def agree(value: Any, what: str = "value") -> bool:
    """Collective: True when every rank passed an equal `value` (a path, say), False when all
    differ (and in one process); some equal and some not is a `DistributedError`."""
    if world_size() == 1:
        return False
    vals = gather(value)
    if all(v == vals[0] for v in vals):
        return True
    if len({repr(v) for v in vals}) == len(vals):
        return False
    raise DistributedError(f"ranks disagree on the {what}: {vals}; all ranks must name the same one "
                           "(to share it) or each its own")


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (picklable)."""
    import torch.distributed as dist

    if not init():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    import torch.distributed as dist

    if init():
        dist.barrier()


_scratch: list[str] = []


def output_dir(path: str | Path) -> Path:
    """Where this rank writes: `path` on rank 0; a private temporary folder on other ranks
    (removed at exit), so redundant work on several ranks never writes the same file twice."""
    if is_main():
        return Path(path)
    d = tempfile.mkdtemp(prefix=f"culturelens-rank{rank()}-")
    if not _scratch:
        atexit.register(lambda: [shutil.rmtree(p, ignore_errors=True) for p in _scratch])
    _scratch.append(d)
    return Path(d)

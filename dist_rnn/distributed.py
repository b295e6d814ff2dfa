"""Process-group setup from torchrun's environment, and the few collectives the loop needs.

A plain `python -m dist_rnn.train` (or torchrun with one process) creates no process group and no
DDP wrapper; every helper here is then a no-op, so the train loop has one path for both.
"""

# No `from __future__ import annotations` here: DDP checks the comm hook's annotations as real types.

import contextlib
import copy
import datetime
import itertools
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from dist_rnn.config import DEFAULT_DIST_TIMEOUT_S, RuntimeOptions
from dist_rnn.errors import PeerLost, UserError, first_line, out_of_memory

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job: global rank, local rank (its GPU), world size, device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: Optional[str] = None  # the process group's backend ("gloo", "nccl"); None without a group

    @property
    def is_main(self) -> bool:
        """Global rank 0: the one process that prints and writes files (not local rank 0 of each node)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(choice: str, backend: str, local_rank: int, local_world_size: int,
                   cuda_devices: int) -> tuple[torch.device, str]:
    """This process's device and the process group's backend, from --device and --backend; every process
    of a node gets the same answer (so a refusal is printed once), and gloo may share GPUs, NCCL not
    (docs/design-notes.md, 'Choosing the device and backend')."""
    if choice == "auto":
        choice = "cuda" if cuda_devices > 0 else "cpu"
    if backend == "auto":
        backend = "nccl" if choice == "cuda" else "gloo"
    if choice == "cpu":
        if backend == "nccl":
            raise UserError("`backend`=nccl needs CUDA devices: use `backend`=gloo (or auto) on CPU")
        return torch.device("cpu"), backend
    if cuda_devices == 0:
        raise UserError("`device`=cuda: no CUDA device is available (use `device`=cpu)")
    if backend == "nccl" and local_world_size > cuda_devices:
        gpus = f"{cuda_devices} GPU" + ("s" if cuda_devices > 1 else "")
        raise UserError(f"torchrun started {local_world_size} processes on this node but it has {gpus}: "
                        f"use --nproc_per_node {cuda_devices}, or `backend`=gloo to share GPUs while debugging")
    return torch.device("cuda", local_rank % cuda_devices), backend


def visible_gpus(choice: str) -> int:
    """The CUDA devices --device may use (none asked for with --device cpu, where CUDA stays unloaded)."""
    return torch.cuda.device_count() if choice != "cpu" else 0


def single_process_device(choice: str) -> torch.device:
    """--device for a command that always runs as one process (bench, predict)."""
    return resolve_device(choice, "auto", 0, 1, visible_gpus(choice))[0]


def make_deterministic() -> None:
    """What PyTorch's reproducibility notes ask for, set before any CUDA work: deterministic cuDNN without
    autotuning, deterministic algorithms, the cuBLAS workspace they need; not the NaN-filling of fresh
    tensors, which catches nothing here and slows CPU training (docs/design-notes.md, 'Determinism settings')."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False


def is_peer_failure(error: BaseException) -> bool:
    """Whether an exception is a collective that failed because another process died or hangs."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        sign in text for sign in ("gloo", "nccl", "timeout", "timed out", "connection", "pair closure",
                                  "broken pipe"))


def threads_per_rank(requested: int, environ: Optional[dict] = None) -> int:
    """Intra-op CPU threads for this process: --threads when given (> 0), else an OMP_NUM_THREADS the
    user set (torchrun's own default of 1 counts as unset), else the cores this process may use divided
    by the processes on this node (docs/design-notes.md, 'CPU threads per rank')."""
    if requested > 0:
        return requested
    environ = os.environ if environ is None else environ
    local_world = int(environ.get("LOCAL_WORLD_SIZE", 1))
    omp = environ.get("OMP_NUM_THREADS", "")
    launcher_default = omp == "1" and local_world > 1 and "TORCHELASTIC_RUN_ID" in environ
    if omp.isdigit() and int(omp) > 0 and not launcher_default:
        return int(omp)
    return max(1, len(os.sched_getaffinity(0)) // local_world)


def free_memory_per_process(device: torch.device) -> Optional[int]:
    """Bytes this process may still allocate: the GPU's free memory, or the host's available memory
    shared by this node's processes; None where it cannot be known (no /proc/meminfo)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.M)
    return int(found[1]) * 1024 // int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if found else None


@contextlib.contextmanager
def process_group(device_choice: str, backend: str = "auto",
                  timeout_s: float = DEFAULT_DIST_TIMEOUT_S) -> Iterator[DistEnv]:
    """setup() on entry, teardown() on exit, whatever happens in between. A group the caller
    already made (a script's own init_process_group) is used as it is and left to it."""
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device, _ = resolve_device(device_choice, "auto", local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                                   visible_gpus(device_choice))
        yield DistEnv(dist.get_rank(), local_rank, dist.get_world_size(), device, dist.get_backend())
        return
    env = setup(device_choice, backend, timeout_s)
    try:
        yield env
    finally:
        teardown(env)


@contextlib.contextmanager
def configured(c: RuntimeOptions, restore: bool = False) -> Iterator[DistEnv]:
    """This process set up as `c` says (CPU threads, determinism), in its process group; an
    allocation failure or a lost peer comes out as OutOfMemory or PeerLost. `restore`: the threads
    and determinism settings are put back afterwards (a library call leaves the process as it was;
    a command exits instead, at once: under torchrun a slow exit gets a rank killed before it prints)."""
    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                     torch.backends.cudnn.benchmark)
    torch.set_num_threads(threads_per_rank(c.threads))
    if c.deterministic:
        make_deterministic()
    try:
        with process_group(c.device, c.backend, c.dist_timeout) as env:
            try:
                yield env
            except Exception as e:
                oom = out_of_memory(e, env.device.type)
                if oom is not None:
                    raise oom from None
                if env.is_distributed and is_peer_failure(e):
                    raise PeerLost(env.rank, c.dist_timeout, e) from None
                raise
    finally:
        if restore:
            torch.set_num_threads(threads)
        if restore and c.deterministic:  # only what was changed: use_deterministic_algorithms() takes about 1 s
            torch.use_deterministic_algorithms(deterministic[0])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic[1:]


def setup(device_choice: str, backend: str = "auto", timeout_s: float = DEFAULT_DIST_TIMEOUT_S) -> DistEnv:
    """Read RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE (set by torchrun) and join the process
    group if WORLD_SIZE > 1.

    timeout_s bounds every collective: a peer that died or hangs makes the others fail after it
    instead of waiting forever (with NCCL, through its watchdog: see docs/guide.md).
    """
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    device, backend = resolve_device(device_choice, backend, local_rank, local_world_size, visible_gpus(device_choice))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the process group / DDP, so NCCL binds the right GPU
    if world_size == 1:
        return DistEnv(rank, local_rank, world_size, device)
    timeout = datetime.timedelta(seconds=timeout_s)
    # device_id binds an NCCL group to this process's GPU and connects it at once (eager init):
    # a missing peer shows at startup instead of at the first collective.
    options: dict = {"device_id": device} if backend == "nccl" else {}
    store = _restart_safe_store(timeout)
    if store is None:  # MASTER_ADDR / MASTER_PORT from the environment (init_method="env://")
        dist.init_process_group(backend=backend, timeout=timeout, **options)
    else:
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size,
                                timeout=timeout, **options)
    return DistEnv(rank, local_rank, world_size, device, backend)


_groups_made = itertools.count()  # process groups this process has joined: fit() may be called again


def _restart_safe_store(timeout: datetime.timedelta) -> Optional[dist.Store]:
    """A per-attempt view of torchrun's store when torchrun restarts workers on one node (keys prefixed
    with the restart count, so a restarted group never reads the dead group's keys, and with the
    process's group count, so a second fit() in one script never reads the first one's); None
    otherwise (docs/design-notes.md, 'A restart-safe store')."""
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    one_node = os.environ.get("GROUP_WORLD_SIZE") == "1"
    if not (shared and one_node):
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"dist_rnn/attempt-{attempt}/group-{next(_groups_made)}", store)


def teardown(env: DistEnv) -> None:
    if env.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait until every rank gets here."""
    if env.is_distributed:
        dist.barrier()


def wrap(model: nn.Module, env: DistEnv) -> nn.Module:
    """DDP-wrap the model when there are several processes; the bare model otherwise."""
    if not env.is_distributed:
        return model
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    ddp.register_comm_hook(state=None, hook=rank_ordered_mean_hook)
    return ddp


def broadcast_weights(model: nn.Module, env: DistEnv) -> nn.Module:
    """Rank 0's parameters on every rank, in place (what DDP does when it wraps a model); returns it."""
    if env.is_distributed:
        with torch.no_grad():
            for p in model.parameters():
                dist.broadcast(p, src=0)
    return model


# all_gather_into_tensor was renamed all_gather_single (torch 2.14 warns about the old name).
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def rank_ordered_mean_hook(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: average a gradient bucket by summing the ranks' copies in rank order, so
    every element is added in the same order wherever it sits and a resumed run stays bitwise equal to
    an uninterrupted one (docs/design-notes.md, 'The rank-ordered gradient mean')."""
    buffer = bucket.buffer()
    gathered = torch.empty(dist.get_world_size(), buffer.numel(), dtype=buffer.dtype, device=buffer.device)
    future = _all_gather_flat(gathered.view(-1), buffer, async_op=True).get_future()
    return future.then(lambda _: mean_in_rank_order(gathered))  # row r of gathered: rank r's bucket


def mean_in_rank_order(gathered: torch.Tensor) -> torch.Tensor:
    """(world_size, n) -> (n,): the rows' mean, added as row 0 + row 1 + ... for every element."""
    total = gathered[0].clone()
    for rank in range(1, len(gathered)):
        total += gathered[rank]
    return total.div_(len(gathered))


def rank_ordered_mean_(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Replace a flat tensor by its mean over ranks, added in rank order as the DDP hook above does
    (the graphed step's gradient mean); returns it."""
    if env.is_distributed:
        gathered = torch.empty(env.world_size, tensor.numel(), dtype=tensor.dtype, device=tensor.device)
        _all_gather_flat(gathered.view(-1), tensor)
        tensor.copy_(mean_in_rank_order(gathered))
    return tensor


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (for evaluation and for state_dicts without `module.`)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a tensor over all ranks, in place; returns it."""
    if env.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_main(obj: T, env: DistEnv) -> T:
    """Rank 0's value of a picklable object, on every rank."""
    if not env.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: T, env: DistEnv) -> list[T]:
    """Every rank's value of a picklable object, in rank order, on every rank."""
    if not env.is_distributed:
        return [obj]
    gathered: list = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def on_main(env: DistEnv, fn: Callable[[], T]) -> T:
    """Run fn on rank 0 only and hand its result, or the exception it raised, to every rank.

    For decisions that must be the same everywhere, such as which checkpoint to resume from:
    each rank deciding for itself could see a different directory listing. An exception reaches
    the other ranks as itself (same type and message), not as a lost peer.
    """
    outcome: tuple = (None, None)
    error: Optional[BaseException] = None
    if env.is_main:
        try:
            outcome = (fn(), None)
        except Exception as e:  # noqa: BLE001 - every rank must learn of it, whatever it is
            error = e
            outcome = (None, e if _picklable(e) else RuntimeError(f"{type(e).__name__}: {first_line(e)}"))
    result, relayed = broadcast_from_main(outcome, env)
    if error is not None:
        raise error
    if isinstance(relayed, UserError):  # every rank raises it; local rank 0 of each node prints it (run_cli)
        raise relayed.from_rank(0)
    if relayed is not None:
        raise relayed
    return result


def _picklable(error: BaseException) -> bool:
    """Whether an exception survives the trip (pickled, rebuilt from its args) that
    broadcast_object_list gives it; deepcopy rebuilds it the same way."""
    try:
        pickle.dumps(error)
        copy.deepcopy(error)
        return True
    except Exception:  # noqa: BLE001 - any failure means: send a plain copy instead
        return False


def main_first(env: DistEnv, fn: Callable[[], T]) -> T:
    """Run fn on rank 0 first (it may download or write), then on the others; a UserError on any rank
    reaches every rank, so none waits forever for a rank that has gone (only the error travels, never
    fn's result) (docs/design-notes.md, 'Errors in rank-0-first sections')."""
    kept: dict[str, T] = {}

    def first() -> None:
        kept["result"] = fn()

    on_main(env, first)
    error = None
    if not env.is_main:
        try:
            kept["result"] = fn()
        except UserError as e:
            error = e.args[0]  # the message with its options still marked
    failures = [(rank, e) for rank, e in enumerate(all_gather_objects(error, env)) if e is not None]
    if failures:
        rank, message = failures[0]
        raise UserError(f"rank {rank}: {message}")
    return kept["result"]

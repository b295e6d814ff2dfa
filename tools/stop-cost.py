"""What the graceful-stop agreement costs per training step: 2 processes over gloo on loopback, each
step ~2-3 ms of compute plus the gradient all-reduce DDP does anyway; with no check, with a blocking
check at every step (dist_rnn before issue 14), and with StopRequest.agreed (an all-reduce started
every CHECK_EVERY steps and read CHECK_EVERY steps later). Prints microseconds per step, medians of 5.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 tools/stop-cost.py
"""

import statistics
import time

import torch
import torch.distributed as dist

from dist_rnn.distributed import DistEnv
from dist_rnn.stop import StopRequest

STEPS, REPEATS = 1000, 5


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    env = DistEnv(rank=rank, local_rank=rank, world_size=dist.get_world_size(), device=torch.device("cpu"),
                  backend="gloo")
    a, grads = torch.randn(200, 200), torch.randn(100_000)

    def step() -> None:
        for _ in range(6):
            a @ a
        dist.all_reduce(grads)

    def blocking_check(_: int) -> None:
        flag = torch.zeros(1, dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)

    stop = StopRequest(env)
    checks = {"no check": lambda _: None, "blocking, every step": blocking_check, "StopRequest.agreed": stop.agreed}
    times: dict[str, list[float]] = {name: [] for name in checks}
    for _ in range(REPEATS):  # alternated: this machine's speed drifts
        for name, check in checks.items():
            dist.barrier()
            start = time.perf_counter()
            for s in range(1, STEPS + 1):
                step()
                check(s)
            times[name].append((time.perf_counter() - start) / STEPS * 1e6)
    stop.close()
    if rank == 0:
        base = statistics.median(times["no check"])
        for name, values in times.items():
            print(f"{name:22s} {statistics.median(values):7.1f} us/step, {statistics.median(values) - base:+6.1f} "
                  f"against no check (runs: {', '.join(f'{v:.0f}' for v in values)})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

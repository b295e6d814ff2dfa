"""Single-process runs of a dist_rnn command without paying for a new interpreter each time.

Every `python -m dist_rnn.train` spends about 4 s of CPU before its first step here: importing torch
(2-3 s) and, at the optimizer's first use, torch._dynamo (1-2 s). The suite starts dozens of such
runs, so on 2 cores that start-up was a third of its time. A run through `run()` below is still a
process of its own, with its own files, environment, exit status and output, running the command's
real entry point (main(), as `python -m` would, with the same sys.argv); only the imports are done
once: multiprocessing's forkserver imports them, and forks a child per run.

What a forked child could not reproduce goes through a real interpreter (`cold`): an environment
that changes native libraries read when torch loads (OpenMP, oneDNN, CUDA, torch's own variables),
and any device but the CPU. Tests of the command line itself (signals, terminals, the console
scripts, torchrun) start real processes of their own. DIST_RNN_TEST_COLD=1 sends every run through
a real interpreter, to compare.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

PRELOAD = ["torch", "torch._dynamo", "dist_rnn.train", "dist_rnn.evaluate", "dist_rnn.predict", "dist_rnn.plot",
           "dist_rnn.sweep"]
# Variables read by native code as torch loads (or by the interpreter as it starts): a run that sets
# them differently from the forkserver's environment gets a new interpreter.
NATIVE = ("OMP_", "MKL_", "KMP_", "GOMP_", "ONEDNN_", "DNNL_", "CUDA_", "NCCL_", "TORCH_", "PYTORCH_", "LD_",
          "PYTHON", "MALLOC_")

_context = None


def context() -> multiprocessing.context.BaseContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def cold(env: dict[str, str], device: str) -> bool:
    """Whether this run needs a new interpreter (see the module's docstring)."""
    if os.environ.get("DIST_RNN_TEST_COLD") == "1" or device != "cpu":
        return True
    changed = {k for k in {*env, *os.environ} if env.get(k) != os.environ.get(k)}
    return any(k.startswith(NATIVE) for k in changed)


def run(module: str, argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGV` (or `python MODULE ARGV` for a MODULE ending in .py) in a child forked
    from the warm interpreter; output captured as subprocess.run(capture_output=True, text=True) would."""
    with tempfile.TemporaryDirectory(prefix="warm-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        child = context().Process(target=_main, args=(module, argv, env, str(cwd), str(out), str(err)))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired([module, *argv], timeout, output=_read(out), stderr=_read(err))
        return subprocess.CompletedProcess([sys.executable, "-m", module, *argv], child.exitcode, _read(out),
                                           _read(err))


def run_ranks(module: str, argv: list[str], env: dict[str, str], cwd: Path, timeout: float,
              nproc: int) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=NPROC -m MODULE ARGV` without torchrun's interpreters:
    NPROC children forked from the warm one, each with the environment torchrun gives its workers
    (ranks, sizes, a rendezvous on a free loopback port), all stopped once one fails, as torchrun
    does. Output is each rank's in turn. For tests where the launcher is not what is tested."""
    from torch.distributed import TCPStore

    # The rendezvous store lives here, as torchrun's agent holds it: bound before the ranks start, on
    # a port the system chose, so no other process can take it in between.
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    port = store.port
    with tempfile.TemporaryDirectory(prefix="warm-") as tmp:
        outputs = [(Path(tmp) / f"stdout-{r}", Path(tmp) / f"stderr-{r}") for r in range(nproc)]
        children = [context().Process(target=_main, args=(module, argv, {**env, **rank_env(r, nproc, port, env)},
                                                          str(cwd), str(out), str(err)))
                    for r, (out, err) in enumerate(outputs)]
        try:  # `failed`: the exit status of the first rank to fail, taken before the others are stopped
            for child in children:
                child.start()
            deadline = time.monotonic() + timeout
            while True:
                running = any(c.is_alive() for c in children)  # first: a rank ending after it is seen next time
                failed = next((c.exitcode for c in children if c.exitcode), None)
                if failed is not None or not running:
                    break
                if time.monotonic() > deadline:
                    _stop(children)  # before reading their output, so that it is whole
                    raise subprocess.TimeoutExpired([module, *argv], timeout, output=_joined(outputs, 0),
                                                    stderr=_joined(outputs, 1))
                time.sleep(0.05)
        finally:
            _stop(children)
        return subprocess.CompletedProcess(["torchrun", f"--nproc_per_node={nproc}", "-m", module, *argv],
                                           failed or 0, _joined(outputs, 0), _joined(outputs, 1))


def rank_env(rank: int, nproc: int, port: int, env: dict[str, str]) -> dict[str, str]:
    """The variables torchrun --standalone sets for worker `rank` of `nproc` on one node, whose
    agent holds the store at `port` (OMP_NUM_THREADS=1 where `env` has none, as torchrun does)."""
    sizes = {"WORLD_SIZE": nproc, "LOCAL_WORLD_SIZE": nproc, "ROLE_WORLD_SIZE": nproc, "GROUP_WORLD_SIZE": 1}
    ranks = {"RANK": rank, "LOCAL_RANK": rank, "ROLE_RANK": rank, "GROUP_RANK": 0}
    return {**{k: str(v) for k, v in {**sizes, **ranks}.items()}, "ROLE_NAME": "default",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TORCHELASTIC_RUN_ID": "warm",
            "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
            "TORCHELASTIC_USE_AGENT_STORE": "True", "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")}


def _stop(children: list) -> None:
    """Stop the children still running (another failed, or time ran out) as torchrun does: SIGTERM,
    then SIGKILL after 5 s; reap them all."""
    for child in children:
        if child.is_alive():
            child.terminate()
    for child in children:
        if child.pid is not None:
            child.join(5)
            if child.is_alive():
                child.kill()
                child.join()


def _joined(outputs: list[tuple[Path, Path]], which: int) -> str:
    return "".join(_read(files[which]) for files in outputs)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _main(module: str, argv: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """In the child: become `python -m MODULE ARGV` (cwd, environment, argv, stdout and stderr),
    run its entry point as its `__main__` block does, exit with its status."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    code = 0
    try:
        if module.endswith(".py"):  # a script: as `python SCRIPT ARGV` runs it
            sys.argv = [module, *argv]
            runpy.run_path(module, run_name="__main__")
        else:
            sys.argv = [importlib.util.find_spec(module).origin, *argv]
            code = importlib.import_module(module).main()
    except SystemExit as e:  # as the interpreter reports it
        code = e.code if isinstance(e.code, int) or e.code is None else (print(e.code, file=sys.stderr) or 1)
    except BaseException:  # an uncaught exception: its traceback, exit 1
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)

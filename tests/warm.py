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
import subprocess
import sys
import tempfile
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
    """`python -m MODULE ARGV` in a child forked from the warm interpreter; output captured as
    subprocess.run(capture_output=True, text=True) would."""
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
    sys.argv = [importlib.util.find_spec(module).origin, *argv]
    code = 0
    try:
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

"""Launching 2-process runs in the tests (torchrun on 127.0.0.1, gloo, CPU): a free port, a clean
environment, and `tests/workers/distributed_worker.py`. Not a test file."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Not in tests/ itself: a script's folder becomes sys.path[0], and tests/ holds folders named like
# the packages (tests/interp, tests/circuits, ...), which Python would take for namespace packages
# before the editable install's finder sees the real ones.
WORKER = ROOT / "tests" / "workers" / "distributed_worker.py"
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    """This environment without a launch environment, one thread per process, fixed hash seed."""
    out = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    # PYTHONFAULTHANDLER: a rank that dies of a signal (SIGABRT from C++, SIGSEGV) prints every
    # thread's Python stack, so a failed launch says where it died.
    out.update({"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "CULTURELENS_RENDEZVOUS_TIMEOUT": "120",
                "PYTHONFAULTHANDLER": "1", **extra})
    return out


def failure(p: subprocess.CompletedProcess, tail: int = 3000) -> str:
    """What to print when a launch failed: the exit code, each rank's trail of finished jobs, any
    fatal-error report (C++ terminate, faulthandler's stacks) and the end of stderr."""
    lines = p.stderr.splitlines()
    trail = [ln for ln in lines if ln.startswith("[worker rank ")]
    fatal: list[str] = []
    for i, ln in enumerate(lines):
        if "terminate called" in ln or "Fatal Python error" in ln:
            fatal += lines[max(0, i - 3): i + 40] + ["..."]
    return "\n".join([f"exit code {p.returncode}", *trail, *fatal[:200], "--- end of stderr:", p.stderr[-tail:]])


def torchrun(out: Path, *jobs: str, nproc: int = 2, timeout: float = 400) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=N tests/workers/distributed_worker.py OUT JOB...` on 127.0.0.1."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(WORKER), str(out), *jobs]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def worker_module():
    spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

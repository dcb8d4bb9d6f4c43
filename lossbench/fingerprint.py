"""What the check stage's result depends on, read without importing torch.

DVC runs the check every time (it is the pipeline's gate), and importing torch costs ~3 s a process. The
check's files depend only on: params.yaml, the project's Python code (every loss, helper and lossbench
module), the installed packages and their versions, the Python, this host's CPU and GPUs, the C++ compilers
torch.compile would find, the environment variables lossbench, CUDA and the thread pools read, and any loss
file outside the project the last check named. When all of that is as it was, the last check's files are
its answer again (stages/check.py), and a `make repro` with nothing changed imports no torch.
"""

import glob
import hashlib
import importlib.metadata
import os
import platform
import shutil
import sys
from pathlib import Path

from lossbench import warm
from lossbench.files import sha256

# not code a check runs: outputs, environments, the tests
SKIP_DIRS = {"results", "data", "reports", "tests", "docs", "__pycache__", "venv", "site-packages", "node_modules"}
ENV_PREFIXES = ("LOSSBENCH_", "CUDA_", "NVIDIA_", "OMP_", "MKL_", "TORCH", "PYTORCH_")
NOT_READ_BY_A_CHECK = (warm.SWITCH, warm.DIR)  # where a stage runs (lossbench.warm), not what it finds
COMPILERS = ("g++", "c++", "clang++")


def code(root):
    """{relative path: SHA-256} of every Python file of the project a check could import."""
    found = {}
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for f in files:
            if f.endswith(".py"):
                path = Path(here) / f
                found[str(path.relative_to(root))] = sha256(path)
    return found


def _read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return None


def host():
    """The CPU (model and flags), the cores this process may use, the OS, the GPUs' device files and driver."""
    cpu = "".join(line for line in (_read("/proc/cpuinfo") or "").splitlines(keepends=True)
                  if line.startswith(("model name", "flags")))
    return {
        "cpu": hashlib.sha256(cpu.encode()).hexdigest(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "os": platform.platform(),
        "gpus": sorted(glob.glob("/dev/nvidia*")),
        "driver": _read("/proc/driver/nvidia/version"),
    }


def of_files(files):
    """{file: SHA-256, or None where it is gone} for files outside the project."""
    return {str(f): sha256(f) if Path(f).is_file() else None for f in files}


def of(params_path, devices, machine, root, outside=()):
    """The fingerprint: equal to the last check's exactly when that check's files still hold. ``outside``: loss
    files outside the project that the last check named (their digests count too)."""
    return {
        "params": sha256(params_path),
        "devices": list(devices),
        "machine": machine,
        "code": code(root),
        "outside": of_files(outside),
        "python": [sys.executable, sys.version],
        "packages": sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()),
        "host": host(),
        "compilers": {c: shutil.which(c) for c in (os.environ.get("CXX"), *COMPILERS) if c},
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(ENV_PREFIXES) and k not in NOT_READ_BY_A_CHECK},
    }

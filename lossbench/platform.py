"""What this host is, so results never mix hosts silently.

Recorded with every configuration (the check stage writes the part a device
depends on into each configuration's check file). It holds no timestamp and no
host name: it changes only when the platform does, and DVC re-runs training
exactly then.
"""

import importlib.metadata
import platform
from pathlib import Path

import numpy as np
import torch

from lossbench import gpu
from lossbench.config import MACHINE, kind, machine, owner
from lossbench.io import read_json


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect():
    """The host: versions, CPU, GPUs and driver. (Determinism flags are recorded by each run.)"""
    reason = gpu.unavailable_reason()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if reason is None else []
    return {
        "python": platform.python_version(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "torch": torch.__version__,
            "torchvision": importlib.metadata.version("torchvision"),  # importing it costs ~2 s
            "numpy": np.__version__,
        },
        "cuda": {
            "built": torch.backends.cuda.is_built(),
            "available": reason is None,
            "unavailable_reason": reason,
            "runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if reason is None else None,
            "driver": gpu.driver_version(),
            "gpus": gpus,
        },
    }



def for_device(host, device):
    """What a device's results depend on: the host less the GPU part for a CPU device.

    A driver update on a GPU box must not re-train its CPU configurations; a CUDA
    configuration keeps the CPU, where a NumPy loss computes.
    """
    p = {k: v for k, v in host.items() if kind(device) == "cuda" or k != "cuda"}
    return {**p, "device": device}


def why_not_here(device, host):
    """None when this machine runs ``device``, else why not (a GPU it lacks, a device labelled for another)."""
    label = owner(device)
    if label is not None and label != machine():
        return (f"{device} runs on machine {label!r} ({MACHINE}={label} there); this machine is "
                + (f"{machine()!r}" if machine() else f"unnamed ({MACHINE} is not set)"))
    return gpu.reason_for(kind(device), host)


def not_mine(device, recorded):
    """Why this machine must not produce ``device``'s results under ``recorded`` (a check file's platform), or None.

    A stage of another machine's device re-runs here when its results were not pulled,
    or its params changed: it records why it did not run, rather than time or train
    on the wrong host.
    """
    here = collect()
    why = why_not_here(device, here)
    if why is None and for_device(here, device) != recorded:
        why = f"{device}: its check file describes another platform than this machine's"
    return why and f"{why}: its results come from its machine (`make push` there, `make pull` here)"


def replaced(run_json, now):
    """A line when the results in the workspace came from another platform than this one (they re-run here)."""
    path = Path(run_json)
    if not path.is_file():
        return None
    info = read_json(path)
    was = info.get("platform")
    if info.get("status") != "ran" or was is None or was == now:
        return None
    what = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
    who = info.get("host", {}).get("name")
    return (f"{info['config']}: its results came from {who + ', ' if who else ''}a different platform "
            f"({', '.join(what)} differ): they are re-run here and replaced")

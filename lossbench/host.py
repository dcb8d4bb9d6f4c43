"""What this host is, so results never mix hosts silently.

Recorded with every configuration (the check stage writes the part a device
depends on into each configuration's check file). It holds no timestamp and no
host name: it changes only when the platform does, and DVC re-runs training
exactly then.
"""

import importlib.metadata
import importlib.util
import os
import platform
import shutil

import numpy as np
import torch

from lossbench import gpu


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_native():
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); without it, bf16 is emulated and a
    bf16 step costs several fp32 ones (docs/benchmarks.md), so its cost measures the emulation."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None  # not Linux: unknown
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def compile_reason(device):
    """None when torch.compile can build code for ``device`` here, else why not, in one line: inductor compiles
    C++ on the CPU (a C++ compiler) and Triton kernels on CUDA (the triton package)."""
    if device == "cpu":
        found = [c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c and shutil.which(c)]
        return None if found else ("torch.compile on cpu needs a C++ compiler (inductor builds C++), and none is "
                                   "here (CXX, g++, c++, clang++): install one (apt install g++), or leave "
                                   "compiled out of train.modes")
    if importlib.util.find_spec("triton") is None:
        return ("torch.compile on cuda needs the triton package (inductor builds Triton kernels), and it is not "
                "installed here (the image leaves it out: docker build --build-arg WITH_TRITON=1): pip install "
                "triton, or leave compiled out of train.modes")
    return None


def collect():
    """The host: versions, CPU, GPUs and driver. (Determinism flags are recorded by each run.)"""
    reason = gpu.unavailable_reason()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if reason is None else []
    return {
        "python": platform.python_version(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_bf16_native": cpu_bf16_native(),
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
            # bf16 tensor cores from Ampere (compute capability 8) on
            "bf16_native": torch.cuda.get_device_capability(0)[0] >= 8 if gpus else None,
        },
    }


def for_device(host, device):
    """What a device's results depend on: the host less the GPU part for a CPU device.

    A driver update on a GPU box must not re-train its CPU configurations; a CUDA
    configuration keeps the CPU, where a NumPy loss computes.
    """
    p = {k: v for k, v in host.items() if device == "cuda" or k != "cuda"}
    return {**p, "device": device}

"""Stage `platform`: what this host is, so results never mix hosts silently.

The file holds no timestamp: it changes only when the platform does, and DVC
re-runs training exactly then.
"""

import argparse
import platform
import sys

import numpy as np
import torch
import torchvision

from stages import determinism, gpu
from stages.io import write_json


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
            "torchvision": torchvision.__version__,
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
        "determinism": determinism.set_determinism(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, help="where to write platform.json")
    args = p.parse_args(argv)
    info = collect()
    write_json(args.out, info)
    print(f"platform: {info['cpu']}, torch {info['versions']['torch']}, "
          f"cuda {'available' if info['cuda']['available'] else 'not available'}", file=sys.stderr)


if __name__ == "__main__":
    main()

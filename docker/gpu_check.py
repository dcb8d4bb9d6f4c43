"""Before the pipeline runs in the container: can the requested CUDA configurations run?

Reads train.devices from ./params.yaml. When "cuda" is requested and torch sees
no GPU, prints why (torch without CUDA / no --gpus / a driver torch cannot use)
and what to type. Exits 3 when LOSSBENCH_REQUIRE_DEVICES=1, else 0 with a warning.
"""

import glob
import os
import shutil
import subprocess
import sys

import torch
import yaml

RUN = 'docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD":/workspace IMAGE'


def driver_version():
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def diagnose(built, available, devices, driver):
    """None when CUDA can be used, else the message for the user."""
    if available:
        return None
    if not built:
        return (f"torch {torch.__version__} in this image was built without CUDA.\n"
                "  Rebuild the image from the pinned requirements: make docker")
    if not devices:
        return ("no GPU is visible in this container (no /dev/nvidia* devices).\n"
                f"  Pass the GPUs:  {RUN}\n"
                "  If docker then says 'could not select device driver \"\" with capabilities: [[gpu]]',\n"
                "  install the NVIDIA Container Toolkit on the host and restart docker.")
    return (f"GPU devices are present ({', '.join(devices)}) but torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}) cannot use them; host driver: {driver or 'unknown'}.\n"
            "  The driver is probably older than this CUDA build needs: update the host driver, or\n"
            "  rebuild for it: docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 "
            "-t lossbench .")


def requested_devices(path="params.yaml"):
    with open(path) as f:
        return (yaml.safe_load(f) or {}).get("train", {}).get("devices", [])


def main():
    if "cuda" not in requested_devices():
        return 0
    problem = diagnose(torch.backends.cuda.is_built(), torch.cuda.is_available(),
                       sorted(glob.glob("/dev/nvidia[0-9]*")), driver_version())
    if problem is None:
        return 0
    require = os.environ.get("LOSSBENCH_REQUIRE_DEVICES") == "1"
    print(f"lossbench: train.devices asks for cuda, but {problem}", file=sys.stderr)
    if require:
        print("lossbench: LOSSBENCH_REQUIRE_DEVICES=1, stopping.", file=sys.stderr)
        return 3
    print("lossbench: the cuda configurations will be reported as not run "
          "(set LOSSBENCH_REQUIRE_DEVICES=1 to make this an error).", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

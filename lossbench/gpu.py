"""Can CUDA run here, and if not, why not, in words a user can act on.

Used by the check stage (a cuda configuration that cannot run is recorded with
this reason), and the container entrypoint (``python -m lossbench.gpu``), which
warns before the pipeline starts.
"""

import glob
import os
import shutil
import subprocess
import sys

import torch

from lossbench.config import load_params
from lossbench.errors import run

REQUIRE_DEVICES = "LOSSBENCH_REQUIRE_DEVICES"
DOCKER_RUN = 'docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD":/workspace IMAGE'


def devices_required():
    """True when LOSSBENCH_REQUIRE_DEVICES=1: a configuration that cannot run is an error."""
    return os.environ.get(REQUIRE_DEVICES) == "1"


def driver_version():
    """The NVIDIA driver version from nvidia-smi, or None where there is none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def diagnose(built, available, devices, driver):
    """None when CUDA can be used, else the cause and what to do."""
    if available:
        return None
    if not built:
        return (f"torch {torch.__version__} was built without CUDA: install the pinned CUDA build "
                "(make repro; in Docker: make docker)")
    if not devices:
        return (f"no GPU is visible (torch {torch.__version__}, CUDA {torch.version.cuda}; no /dev/nvidia*): "
                "docs/gpu-run.md says how to run cuda (in Docker: --gpus all)")
    return (f"GPU devices are present ({', '.join(devices)}) but torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}) cannot use them; driver: {driver or 'unknown'}. The driver is "
            "probably older than this CUDA build needs: update it, or build the image for it with "
            "--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126")


def unavailable_reason():
    """None when CUDA can be used on this host, else why not."""
    available = torch.cuda.is_available()
    devices = [] if available else sorted(glob.glob("/dev/nvidia[0-9]*"))
    return diagnose(torch.backends.cuda.is_built(), available, devices, None if available else driver_version())


def reason_for(device, platform):
    """None when ``device`` can run on the host ``platform`` describes, else why not."""
    return None if device == "cpu" else platform["cuda"]["unavailable_reason"]


def main(argv=None):
    """Entrypoint check: warn (or, with LOSSBENCH_REQUIRE_DEVICES=1, exit 3) when cuda is asked for but absent."""
    params = load_params(argv[0] if argv else "params.yaml")
    mine = [d for d in params.train.devices if d == "cuda"]
    if not mine:
        return 0
    reason = unavailable_reason()
    if reason is None:
        return 0
    print(f"lossbench: train.devices asks for {', '.join(mine)}, which cannot run here: {reason}", file=sys.stderr)
    if torch.backends.cuda.is_built() and not glob.glob("/dev/nvidia[0-9]*"):  # once, before the pipeline starts:
        # the whole how-to (the check records and the report keep the reason short)
        print(f"lossbench: on a host, install an NVIDIA GPU and driver; in Docker, pass the GPUs: {DOCKER_RUN} (if "
              "docker answers 'could not select device driver', install the NVIDIA Container Toolkit and restart "
              "docker)", file=sys.stderr)
    if devices_required():
        print(f"lossbench: {REQUIRE_DEVICES}=1, stopping.", file=sys.stderr)
        return 3
    print(f"lossbench: those configurations will be reported as not run "
          f"(set {REQUIRE_DEVICES}=1 to make this an error).", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run(lambda: main(sys.argv[1:]), "lossbench"))

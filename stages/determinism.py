"""Seeds and determinism flags: one place, used by every run."""

import os
import random

import numpy as np
import torch

# cuBLAS needs this set before CUDA initialises to pick deterministic workspaces
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def set_determinism():
    """Flags that must hold before any CUDA work; returns what was set, for the record."""
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)
    return flags()


def flags():
    return {
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "cudnn.deterministic": torch.backends.cudnn.deterministic,
        "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def seed_everything(seed):
    # the tutorial's three seeds, in its order
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cuda_unavailable_reason():
    """None when CUDA can be used, else why not, in words a user can act on."""
    if not torch.backends.cuda.is_built():
        return f"torch {torch.__version__} was built without CUDA (install a CUDA build of torch)"
    if not torch.cuda.is_available():
        return (
            f"torch {torch.__version__} is built with CUDA {torch.version.cuda} but sees no GPU "
            "(no NVIDIA driver or device on this host; in Docker: pass --gpus all and install "
            "the NVIDIA Container Toolkit)"
        )
    return None

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


"""The files the stages write and read, always atomically: JSON, text, steps.csv, .npz tensors; a file's digest."""

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

STEP_COLUMNS = ["repeat", "epoch", "step", "global_step", "loss", "seconds"]  # steps.csv
PHASES = ("forward", "loss", "backward", "step")  # a training step's parts, as timed


def sha256(path):
    """A file's SHA-256, hex: what the check records of a loss's code and of what it depends on."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or exception leaves ``path`` untouched and no temporary file behind,
    so readers never see a half-written output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is not what a plain open() gives
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def write_steps(path, steps):
    # float64 repr of a float32 value round-trips it exactly
    with atomic_path(path) as tmp:
        steps.to_csv(tmp, index=False)


def write_tensors(path, tensors):
    """Named arrays to ``.npz``, atomically (np.savez on a file object adds no suffix)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **tensors)


def read_tensors(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask

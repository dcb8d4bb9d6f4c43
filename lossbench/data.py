"""The two data paths, bitwise identical by construction (and by test).

``dataloader``: the tutorial's loop, DataLoader over torchvision's MNIST with
ToTensor, one PIL image at a time. ``preloaded``: the whole training set as one
uint8 tensor on the device, turned into floats once through a 256-entry table
built on the CPU. ToTensor divides on the CPU; the same division done on a GPU
rounds differently for 126 of the 256 byte values, so the table, not a
``.div(255)`` on the device, is what keeps CUDA runs equal to the baseline.

The preloaded path reads the raw file itself: importing torchvision costs ~2.5 s
a process (it pulls in torch._dynamo), more than a whole configuration's set-up.
"""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from lossbench.errors import UserError

RAW = Path("MNIST") / "raw"  # under the data root: torchvision's layout
TRAIN_IMAGES = "train-images-idx3-ubyte"
IDX3_MAGIC = 2051  # idx format: unsigned bytes, 3 dimensions


def train_images(root):
    """(N, 28, 28) uint8: the training images, as torchvision's MNIST reads them."""
    path = Path(root) / RAW / TRAIN_IMAGES
    if not path.is_file():
        raise UserError(f"{path}: not found: expected the MNIST training images (run: dvc repro download)")
    raw = np.fromfile(path, dtype=np.uint8)
    magic, n, rows, cols = raw[:16].view(">i4") if raw.size >= 16 else (None,) * 4
    if magic != IDX3_MAGIC or raw.size != 16 + n * rows * cols:
        raise UserError(f"{path}: not an idx3 image file (magic {magic}, {raw.size} bytes): "
                        f"expected magic {IDX3_MAGIC} and 16 + N*rows*cols bytes")
    return torch.from_numpy(raw[16:]).view(int(n), int(rows), int(cols))


def mnist(root, transform=None):
    """torchvision's MNIST training set from ``root/MNIST/raw`` (never downloads): the tutorial's dataset."""
    import torchvision  # only the dataloader path pays for it

    return torchvision.datasets.MNIST(root=root, train=True, download=False, transform=transform)


def byte_table(device):
    """(256,) float32: byte value v -> v / 255 exactly as ToTensor computes it (on the CPU)."""
    return torch.arange(256, dtype=torch.uint8).float().div(255).to(device)


def preload(root, device):
    """The whole training set as (N, 784) float32 on ``device``, equal to ToTensor's output."""
    images = train_images(root).view(-1)  # (N * 784,) uint8, on the CPU
    # ~0.2 s here, nearly all of it first touches of the 188 MB result (NumPy indexing measured the same)
    return byte_table(device).index_select(0, images.to(device).int()).view(-1, 28 * 28)  # (N, 784) float32


def preloaded_batches(images, batch_size):
    """One epoch of (B, 784) batches in dataset order; the last batch may be short."""
    for i in range(0, images.shape[0], batch_size):
        yield images[i : i + batch_size]


def dataloader_batches(root, batch_size, device):
    """One epoch exactly as the tutorial's loop builds it."""
    from torchvision import transforms  # only the dataloader path pays for torchvision

    loader = DataLoader(mnist(root, transforms.ToTensor()), batch_size=batch_size, shuffle=False)
    for x, _ in loader:  # x: (B, 1, 28, 28)
        yield x.view(x.shape[0], -1).to(device)  # (B, 784)


def steps_per_epoch(n, batch_size):
    return -(-n // batch_size)

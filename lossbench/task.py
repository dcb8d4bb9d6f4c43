"""The task a loss is judged on: the tutorial's MNIST autoencoder, behind one seam.

Everything that trains reaches the task through these three names: the model (built by the caller
right after seeding), the batches of one epoch (input and target are the same images), and a small
probe batch for the pre-flight. A second task would be a second module with the same names.
"""

import torch

from lossbench import data
from lossbench.model import AutoEncoder


def model():
    return AutoEncoder()


def batches(loader, root, device, batch_size):
    """A function that yields one epoch of (B, 784) batches, for the chosen data path, and the steps in an epoch."""
    if loader == "preloaded":
        images = data.preload(root, device)  # (N, 784) float32 on device
        return (lambda: data.preloaded_batches(images, batch_size)), data.steps_per_epoch(len(images), batch_size)
    n = len(data.train_images(root))
    return (lambda: data.dataloader_batches(root, batch_size, device)), data.steps_per_epoch(n, batch_size)


def probe(device):
    """4 images' worth of pixels in [0, 1], input and target: (4, 784). Seeded, data-free."""
    return torch.rand(4, 784, generator=torch.Generator().manual_seed(0)).to(device)

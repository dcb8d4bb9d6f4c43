"""The tutorial's own script, as a user runs it: its two runs (the NumPy loss, then nn.MSELoss), checking nothing.

`make bench` times this whole process (torch's import included) beside lossbench's inner loop: an edited
loss's new verdict and cost should cost about what the tutorial's two unchecked runs do. Nothing of lossbench
is imported: the loop is the tutorial's, written out.

    python -m lossbench.tutorial --data data     # data/MNIST/raw holds the four files
"""

import argparse
import random
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


class NumpyMSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target):
        ctx.save_for_backward(input, target)
        return torch.as_tensor(np.mean((input.detach().numpy() - target.detach().numpy()) ** 2))

    @staticmethod
    def backward(ctx, grad_output):
        input, target = ctx.saved_tensors
        return grad_output * 2 * (input - target) / input.numel(), None


def train(loss_fn, root):
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 12), nn.ReLU(),
                          nn.Linear(12, 3), nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 64), nn.ReLU(),
                          nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 784), nn.Sigmoid())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = DataLoader(datasets.MNIST(root, train=True, download=False, transform=transforms.ToTensor()),
                      batch_size=256, shuffle=False)
    for _ in range(2):
        for x, _ in data:
            x = x.view(-1, 784)  # (B, 784)
            loss = loss_fn(model(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return loss.item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="the root holding MNIST/raw")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    last = [train(NumpyMSE.apply, args.data), train(nn.MSELoss(), args.data)]
    print(f"tutorial: two runs in {time.perf_counter() - t0:.1f} s (last losses {last[0]:.6f}, {last[1]:.6f})")


if __name__ == "__main__":
    main()

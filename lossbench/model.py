"""The tutorial's MNIST autoencoder, exactly: 784 -> 3 -> 784, default init."""

from torch import nn


class AutoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        # layer order fixes the order in which default init draws from the RNG
        self.encoder = nn.Sequential(
            nn.Linear(28 * 28, 128), nn.ReLU(),
            nn.Linear(128, 64), nn.ReLU(),
            nn.Linear(64, 12), nn.ReLU(),
            nn.Linear(12, 3),
        )
        self.decoder = nn.Sequential(
            nn.Linear(3, 12), nn.ReLU(),
            nn.Linear(12, 64), nn.ReLU(),
            nn.Linear(64, 128), nn.ReLU(),
            nn.Linear(128, 28 * 28), nn.Sigmoid(),
        )

    def forward(self, x):  # x: (B, 784) in [0, 1]
        return self.decoder(self.encoder(x))  # (B, 784)

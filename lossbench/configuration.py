"""A configuration: what one train stage runs, as one typed, torch-free record.

Its key is the one name the rest derives from: the DVC stage ``train@<key>``, the run directory
``results/<machine>/runs/<key>``, the metrics and plot keys, and the report's labels. Nothing parses
a key back into its parts: code that needs the loss or the device reads the record's fields. The
machine is not part of the key: it is the folder the whole matrix runs in (lossbench.machines).
"""

from dataclasses import dataclass
from pathlib import Path

DEFAULT_PRECISION = "fp32"  # the only precision yet (bf16 next)
DEFAULT_MODE = "eager"  # the only mode yet (torch.compile next)


@dataclass(frozen=True)
class Configuration:
    loss: str  # a name of train.losses
    device: str  # a train.devices entry: cpu or cuda
    precision: str = DEFAULT_PRECISION
    mode: str = DEFAULT_MODE

    @property
    def key(self):
        # DVC names a matrix stage by joining its items with "-" (train@<loss>-<device>), so the key is that
        # join; the default precision and mode add nothing, so fp32/eager keys stay what they always were
        # and reports from before the record stay comparable
        extra = [] if (self.precision, self.mode) == (DEFAULT_PRECISION, DEFAULT_MODE) else [self.precision,
                                                                                           self.mode]
        return "-".join([self.loss, self.device, *extra])

    @property
    def stage(self):
        return f"train@{self.key}"

    def run_dir(self, runs):
        return Path(runs) / self.key


def matrix(train):
    """Every configuration of params' train section, device by device, in train.losses order."""
    return [Configuration(loss, device) for device in train.devices for loss in train.losses]

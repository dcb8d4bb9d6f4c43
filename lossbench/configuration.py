"""A configuration: what one train stage runs, as one typed, torch-free record.

Its key is the one name the rest derives from: the DVC stage ``train@<key>``, the run directory
``results/<machine>/runs/<key>``, the check file, the metrics and plot keys, and the report's labels.
Nothing parses a key back into its parts: code that needs the loss, the device, the precision or the mode
reads the record's fields. The machine is not part of the key: it is the folder the whole matrix runs in
(lossbench.machines).
"""

from dataclasses import dataclass, replace
from pathlib import Path

# the precisions a configuration trains in: fp32 as the tutorial; bf16 under torch.autocast, as users train
PRECISIONS = ("fp32", "bf16")
MODES = ("eager", "compiled")  # compiled: torch.compile of the model and the loss, as users do


@dataclass(frozen=True)
class Configuration:
    loss: str  # a name of train.losses
    device: str  # a train.devices entry: cpu or cuda
    precision: str = "fp32"  # a train.precisions entry
    mode: str = "eager"  # a train.modes entry

    @property
    def key(self):
        # DVC names a matrix stage by joining its items with "-" in the matrix's order (train@<loss>-<device>-
        # <precision>-<mode>), so the key is that join (a test holds the two together)
        return "-".join([self.loss, self.device, self.precision, self.mode])

    @property
    def setting(self):
        """Where a candidate is judged against its reference: the same device, precision and mode."""
        return f"{self.device}-{self.precision}-{self.mode}"

    @property
    def stage(self):
        return f"train@{self.key}"

    def run_dir(self, runs):
        return Path(runs) / self.key

    def check_file(self, check):
        return Path(check) / self.device / f"{self.key}.json"

    def of(self, loss):
        """The same setting for another loss: a candidate's reference."""
        return replace(self, loss=loss)


def of_row(row):
    """The configuration a report row describes, from its fields (rows from before the precision axis have
    none: they ran fp32, eager)."""
    return Configuration(row["loss"], row["device"], row.get("precision", "fp32"), row.get("mode", "eager"))


def rekeyed(rows):
    """A report's rows keyed by their configuration's key, built from each row's fields: a report from
    before the precision axis (keys ``<loss>-<device>``) compares with one after it."""
    if all("loss" in r and "device" in r for r in rows.values()):
        return {of_row(r).key: r for r in rows.values()}
    return rows


def matrix(train):
    """Every configuration of params' train section, setting by setting, in train.losses order."""
    return [Configuration(loss, device, precision, mode) for device in train.devices
            for precision in train.precisions for mode in train.modes for loss in train.losses]

import gzip
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lossbench import warm
from stages import download

ROOT = Path(__file__).resolve().parents[1]
SHARED_MIRROR = ROOT.parent / "shared" / "datasets" / "mnist"


def write_idx(raw, n=512, seed=0):
    """Tiny synthetic MNIST (all four files) in torchvision's raw layout; returns the images."""
    raw = Path(raw)
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    return images


def gzip_dir(raw, dst):
    """The four files of ``raw`` as ``.gz`` in ``dst`` (a mirror); returns their digests."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name in download.SHA256:
        data = (Path(raw) / name).read_bytes()
        (dst / f"{name}.gz").write_bytes(gzip.compress(data))
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


@pytest.fixture(scope="session", autouse=True)
def warm_servers(tmp_path_factory):
    """The tests' warm processes (lossbench.warm) in a folder of their own, each ended when the tests end: none
    outlives the session, and none of a user's is used."""
    folder = tmp_path_factory.mktemp("warm")
    os.environ[warm.DIR] = str(folder)
    yield folder
    for path in folder.glob("*.sock"):
        warm.stop(path)


@pytest.fixture(scope="session")
def mirror():
    """The real MNIST mirror: $MNIST_MIRROR, else ../shared/datasets/mnist. Never skipped."""
    path = Path(os.environ.get("MNIST_MIRROR") or SHARED_MIRROR)
    assert path.is_dir(), f"MNIST mirror {path} not found: set MNIST_MIRROR to a folder with the four .gz files"
    return path


@pytest.fixture(scope="session")
def real_mnist(tmp_path_factory, mirror):
    """Real MNIST, downloaded (and verified) once for the session; the data root."""
    root = tmp_path_factory.mktemp("real")
    download.download(root, str(mirror))
    return root


@pytest.fixture
def synthetic(tmp_path):
    """A data root holding tiny synthetic MNIST."""
    write_idx(tmp_path / "data" / "MNIST" / "raw")
    return tmp_path / "data"


def small_params(path, **train):
    """params.yaml from the repo's, with a fast train section; returns its path."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(epochs=2, batch_size=64, repeats=2, warmup_steps=1, devices=["cpu"])
    params["train"].update(train)
    params["cost"].update(rounds=3, steps=3, warmup_steps=1)
    Path(path).write_text(yaml.safe_dump(params))
    return Path(path)


def check_files(params, out):
    """The check stage's files for ``params``, every device (``<out>/<device>/<key>.json``); returns ``out``."""
    from stages import check

    check.main(["--params", str(params), "--out", str(out)])
    return Path(out)


def train_config(params, data, check_dir, runs, loss, device="cpu", precision="fp32"):
    """One train stage, as DVC runs it; returns the run directory."""
    from lossbench.configuration import Configuration
    from stages import train

    config = Configuration(loss, device, precision)
    out = config.run_dir(runs)
    train.main(["--check", str(config.check_file(check_dir)), "--params", str(params),
                "--data", str(data), "--out", str(out)])
    return out


def copy_tree(src, dst, names):
    for name in names:
        target = Path(dst) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(src) / name, target, follow_symlinks=False)  # results/<machine>/dvc.yaml stays a link


def project_copy(dst, exclude=("data/", "results/")):
    """What a fresh clone of this repository holds (its tracked and new files, no outputs), copied to ``dst``,
    made a Git repository; returns ``dst``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    keep = [f for f in files if ((ROOT / f).is_file() or (ROOT / f).is_symlink()) and not f.startswith(exclude)]
    copy_tree(ROOT, dst, keep + ["data/.gitignore"])
    subprocess.run("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm init", shell=True,
                   cwd=dst, check=True, capture_output=True)
    return Path(dst)


REDUCED = {"devices": ["cpu"], "epochs": 1, "batch_size": 1024, "repeats": 1, "warmup_steps": 1}  # 59 steps a run


def reduced_project(dst, mirror, **train):
    """A fresh copy of the project (project_copy) on a reduced params set: cpu, one epoch of batches of 1024, one
    repeat, short cost rounds; ``train`` overrides train keys. Returns (root, env): env runs `make repro`'s command."""
    root = project_copy(dst)

    def reduce(p):
        p["train"].update({**REDUCED, **train})
        p["cost"].update(rounds=3, steps=2, warmup_steps=1)
    edit_params(root / "params.yaml", reduce)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOSSBENCH_") or k == warm.DIR},
           "MNIST_MIRROR": str(mirror),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return root, env


def repro(root, env):
    """`make repro`'s command (after its params check): this machine's pipeline, then the overview."""
    return subprocess.run([sys.executable, "-m", "lossbench.workflow", "repro"], cwd=root, env=env,
                          capture_output=True, text=True)


def stages_ran(log):
    """The stages of a pipeline DVC ran (not skipped, not restored from its run-cache), without their dvc.yaml."""
    return sorted(set(re.findall(r"Running stage '[^']*:([^']+)'", log)))


def edit_params(path, fn):
    """params.yaml edited by ``fn(dict)``, as a user would (the file's other keys unchanged)."""
    p = yaml.safe_load(Path(path).read_text())
    fn(p)
    Path(path).write_text(yaml.safe_dump(p, sort_keys=False))

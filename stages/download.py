"""Stage `download`: MNIST into ``<root>/MNIST/raw`` in torchvision's layout.

Source: torchvision's own mirrors, or ``$MNIST_MIRROR`` (an http(s) URL or a
local directory holding the four ``.gz`` files). Each file is verified by the
SHA-256 of its *decompressed* bytes (archives get re-compressed; the data must
not change) and only then renamed into place.
"""

import argparse
import gzip
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from tqdm import tqdm

MIRROR_ENV = "MNIST_MIRROR"

# Published digests of the original, decompressed MNIST files.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    pass


def sources(mirror):
    """Base locations to try in order: the override alone, or torchvision's mirrors."""
    if not mirror:
        from torchvision.datasets import MNIST  # ~2.5 s to import: only when its mirrors are used

        return list(MNIST.mirrors)
    if mirror.startswith(("http://", "https://")):
        return [mirror.rstrip("/") + "/"]
    if not Path(mirror).is_dir():
        raise DownloadError(f"{MIRROR_ENV}={mirror}: not a directory (expected a directory "
                            "holding the four MNIST .gz files, or an http(s) URL)")
    return [str(Path(mirror))]


def fetch(base, name, dst):
    """Copy ``<base><name>`` to ``dst`` with a progress bar on stderr."""
    if base.startswith(("http://", "https://")):
        url = base + name
        try:
            src = urllib.request.urlopen(url, timeout=60)
        except (urllib.error.URLError, OSError) as e:
            raise ConnectionError(f"cannot fetch {url} ({getattr(e, 'reason', e)})") from None
        total = int(src.headers.get("Content-Length") or 0) or None
    else:
        path = Path(base) / name
        if not path.is_file():
            raise DownloadError(f"{path}: not found (source {base})")
        src, total = open(path, "rb"), path.stat().st_size
    with src, open(dst, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                           desc=name, file=sys.stderr, leave=False) as bar:
        while chunk := src.read(CHUNK):
            out.write(chunk)
            bar.update(len(chunk))


def gunzip_sha256(src, dst, label):
    """Decompress ``src`` into ``dst``; return the SHA-256 of the decompressed bytes."""
    h = hashlib.sha256()
    try:
        with gzip.open(src, "rb") as f, open(dst, "wb") as out:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
    except gzip.BadGzipFile as e:
        raise DownloadError(f"{label}: not a gzip file ({e})") from None
    except (EOFError, zlib.error) as e:
        raise DownloadError(f"{label}: truncated or corrupt gzip data ({e})") from None
    return h.hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download(root, mirror, digests=SHA256):
    """Fetch, verify and place each file; returns the source used for each."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    bases = sources(mirror)
    used = {}
    for name, want in digests.items():
        dst = raw / name
        if dst.is_file() and sha256_file(dst) == want:
            used[name] = "already present"
            continue
        errors = []
        for base in bases:
            # both the archive and its decompressed bytes stay in a temporary
            # folder until verified: a failure leaves nothing behind
            with tempfile.TemporaryDirectory(dir=raw, prefix=".download-") as tmp:
                gz, out = Path(tmp) / f"{name}.gz", Path(tmp) / name
                try:
                    fetch(base, gz.name, gz)
                except ConnectionError as e:
                    errors.append(str(e))
                    continue
                label = f"{gz.name} from {base}"
                got = gunzip_sha256(gz, out, label)
                if got != want:
                    raise DownloadError(f"{label}: SHA-256 of the decompressed data is {got}, "
                                        f"expected {want}")
                os.replace(out, dst)
            used[name] = base
            break
        else:
            raise DownloadError(f"{name}.gz: no source could be reached (offline? set {MIRROR_ENV} to a folder "
                                "holding the four MNIST .gz files, or to an http(s) mirror):\n  " + "\n  ".join(errors))
    return used


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", required=True, help="data root; files land in ROOT/MNIST/raw")
    args = p.parse_args(argv)
    try:
        used = download(args.root, os.environ.get(MIRROR_ENV))
    except DownloadError as e:
        sys.exit(f"download: {e}")
    for name, base in used.items():
        print(f"{name}: verified ({base})", file=sys.stderr)


if __name__ == "__main__":
    main()

import functools
import gzip
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch

from stages import download
from tests.conftest import gzip_dir, write_idx


@pytest.fixture
def http_mirror(mirror):
    """A loopback HTTP server (127.0.0.1 only) serving the real MNIST mirror."""
    handler = functools.partial(QuietHandler, directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def assert_verified(root):
    raw = Path(root) / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(download.SHA256)
    for name, want in download.SHA256.items():
        assert download.sha256_file(raw / name) == want


def test_real_mnist_from_local_directory(real_mnist):
    assert_verified(real_mnist)  # real_mnist came through download() from the mirror folder


def test_real_mnist_over_http_loopback(tmp_path, http_mirror):
    used = download.download(tmp_path, http_mirror)
    assert set(used.values()) == {http_mirror}
    assert_verified(tmp_path)


def test_torchvision_loads_what_was_downloaded(real_mnist):
    from lossbench.data import mnist

    ds = mnist(real_mnist)
    assert len(ds) == 60000 and ds.data.shape == (60000, 28, 28)


def test_our_reader_gives_torchvisions_bytes(real_mnist, synthetic):
    # the preloaded path reads the idx file itself (no torchvision import); it must be the same bytes
    from lossbench.data import mnist, train_images

    for root in (real_mnist, synthetic):
        assert torch.equal(train_images(root), mnist(root).data)


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.unlink(), "not found: expected the MNIST training images"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1]), "not an idx3 image file"),
    (lambda p: p.write_bytes(b"\0\0\x08\x01" + p.read_bytes()[4:]), "magic 2049"),
])
def test_a_bad_image_file_is_one_line_naming_it(synthetic, damage, says):
    from lossbench.data import RAW, TRAIN_IMAGES, train_images
    from lossbench.errors import UserError

    path = synthetic / RAW / TRAIN_IMAGES
    damage(path)
    with pytest.raises(UserError, match=says) as e:
        train_images(synthetic)
    assert str(path) in str(e.value)


def test_main_reads_mirror_from_environment(tmp_path, mirror, monkeypatch, capsys):
    monkeypatch.setenv(download.MIRROR_ENV, str(mirror))
    download.main(["--root", str(tmp_path)])
    assert_verified(tmp_path)
    assert "verified" in capsys.readouterr().err


def bad_mirror(tmp_path, break_file):
    """A synthetic mirror whose train-images archive is broken by ``break_file(path)``."""
    write_idx(tmp_path / "src")
    digests = gzip_dir(tmp_path / "src", tmp_path / "mirror")
    break_file(tmp_path / "mirror" / "train-images-idx3-ubyte.gz")
    return tmp_path / "mirror", digests


def assert_nothing_left(root):
    raw = Path(root) / "MNIST" / "raw"
    left = sorted(p.name for p in raw.iterdir()) if raw.exists() else []
    assert "train-images-idx3-ubyte" not in left
    assert not [n for n in left if n.startswith(".") or n.endswith((".gz", ".tmp"))], left


@pytest.mark.parametrize("break_file, message", [
    (lambda p: p.unlink(), r"train-images-idx3-ubyte.gz: not found \(source .*mirror\)"),
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), r"train-images-idx3-ubyte.gz from .*mirror: truncated"),
    (lambda p: p.write_bytes(b"not gzip at all" * 100), r"train-images-idx3-ubyte.gz from .*mirror: not a gzip file"),
    (lambda p: p.write_bytes(gzip.compress(b"\x00" * 100)),
     r"train-images-idx3-ubyte.gz from .*mirror: SHA-256 of the decompressed data is [0-9a-f]{64}, "
     r"expected [0-9a-f]{64}"),
])
def test_bad_file_is_named_and_nothing_half_written(tmp_path, break_file, message):
    mirror, digests = bad_mirror(tmp_path, break_file)
    root = tmp_path / "out"
    with pytest.raises(download.DownloadError, match=message):
        download.download(root, str(mirror), digests)
    assert_nothing_left(root)


def test_wrong_digest_against_pinned_digests_names_expected_and_actual(tmp_path):
    mirror, _ = bad_mirror(tmp_path, lambda p: None)  # valid synthetic data, not MNIST
    with pytest.raises(download.DownloadError) as e:
        download.download(tmp_path / "out", str(mirror))
    msg = str(e.value)
    assert download.SHA256["train-images-idx3-ubyte"] in msg and str(mirror) in msg


def test_mirror_directory_that_does_not_exist(tmp_path):
    with pytest.raises(download.DownloadError, match=r"MNIST_MIRROR=.*nowhere: not a directory"):
        download.download(tmp_path, str(tmp_path / "nowhere"))


def test_unreachable_url_is_named(tmp_path):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mnist/"
    with pytest.raises(download.DownloadError, match=rf"no source could be reached \(offline\? set MNIST_MIRROR .*\):\n  cannot fetch {url}"):
        download.download(tmp_path, url)
    assert_nothing_left(tmp_path)


def test_main_exits_with_message(tmp_path, monkeypatch):
    monkeypatch.setenv(download.MIRROR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match="download: MNIST_MIRROR="):
        download.main(["--root", str(tmp_path)])


def test_default_sources_are_torchvisions_mirrors():
    from torchvision.datasets import MNIST

    assert download.sources(None) == MNIST.mirrors and download.sources("") == MNIST.mirrors

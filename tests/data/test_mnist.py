"""The IDX reader and `load_mnist_test`: generated files for the format and its errors, the real
mirror (when DMRNET_DATA has it) for the pinned test set."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from dmrnet.data import mnist
from dmrnet.data.store import DataStore, RemoteFile
from dmrnet.errors import DataError


def idx_bytes(values: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, values.ndim)
    header += b"".join(struct.pack(">I", size) for size in values.shape)
    return header + values.astype(np.uint8).tobytes()


def test_read_idx_reads_compressed_and_plain_files(tmp_path: Path) -> None:
    values = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(np.uint8)
    plain = tmp_path / "x-idx3-ubyte"
    plain.write_bytes(idx_bytes(values))
    packed = tmp_path / "x-idx3-ubyte.gz"
    packed.write_bytes(gzip.compress(idx_bytes(values)))
    for path in (plain, packed):
        read = mnist.read_idx(path)
        assert read.dtype == np.uint8 and np.array_equal(read, values)


def test_read_idx_rejects_bad_magic_and_truncated_data(tmp_path: Path) -> None:
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match=r"bad\.idx: not an IDX file"):
        mnist.read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(idx_bytes(np.zeros((4, 5), dtype=np.uint8))[:-3])
    with pytest.raises(DataError, match=r"short\.idx: IDX header declares shape \(4, 5\)"):
        mnist.read_idx(short)


def _pinned(path: Path, data: bytes, name: str) -> RemoteFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return RemoteFile(
        path=f"mnist/{name}", url="file:///nonexistent", sha256=hashlib.sha256(data).hexdigest()
    )


def test_images_of_the_wrong_size_name_the_file(tmp_path: Path, monkeypatch) -> None:
    images = _pinned(tmp_path / "mnist" / "img.gz", idx_bytes(np.zeros((3, 32, 32))), "img.gz")
    labels = _pinned(tmp_path / "mnist" / "lab.gz", idx_bytes(np.zeros(3)), "lab.gz")
    monkeypatch.setattr(mnist, "MNIST_TEST_IMAGES", images)
    monkeypatch.setattr(mnist, "MNIST_TEST_LABELS", labels)
    with pytest.raises(DataError, match=r"img\.gz: expected uint8 images of shape \(N, 28, 28\)"):
        mnist.load_mnist_test(DataStore(tmp_path, cache=tmp_path / "cache"))


def test_label_count_must_match_the_images(tmp_path: Path, monkeypatch) -> None:
    images = _pinned(tmp_path / "mnist" / "img.gz", idx_bytes(np.zeros((3, 28, 28))), "img.gz")
    labels = _pinned(tmp_path / "mnist" / "lab.gz", idx_bytes(np.zeros(2)), "lab.gz")
    monkeypatch.setattr(mnist, "MNIST_TEST_IMAGES", images)
    monkeypatch.setattr(mnist, "MNIST_TEST_LABELS", labels)
    with pytest.raises(DataError, match=r"lab\.gz: expected 3 labels"):
        mnist.load_mnist_test(DataStore(tmp_path, cache=tmp_path / "cache"))


def test_the_pinned_test_set_from_the_mirror(tmp_path: Path) -> None:
    root = os.environ.get("DMRNET_DATA")
    if not root or not (Path(root) / mnist.MNIST_TEST_IMAGES.path).is_file():
        pytest.skip("set DMRNET_DATA to the data mirror (CI uses ../shared/data)")
    images, labels = mnist.load_mnist_test(DataStore(root, cache=tmp_path))
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist()[:2] == [980, 1135]
    assert images.max() == 255 and images.min() == 0

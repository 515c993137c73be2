"""The MNIST test set (10000 handwritten digits, 28 x 28, IDX format), for datasets built from it.

dmrnet does not offer MNIST as a benchmark of its own: `avdigits` pairs its images with spoken
digits, and `digits-rgbd` composes scenes from them. Both read the images through
`load_mnist_test(store)`, which fetches and verifies the two pinned files and parses them.

The IDX format (LeCun et al.): a big-endian header `0x00 0x00 <type> <ndim>`, then `ndim` 32-bit
sizes, then the values. The files are stored gzip-compressed; an uncompressed file is read too.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from dmrnet.data.store import DataStore, RemoteFile
from dmrnet.errors import DataError

_SOURCE = "https://raw.githubusercontent.com/kelas/mnist/283b387221ab46655e600cfcc25d843bb14292b9"

MNIST_TEST_IMAGES = RemoteFile(
    path="mnist/t10k-images-idx3-ubyte.gz",
    url=f"{_SOURCE}/t10k-images-idx3-ubyte.gz",
    sha256="167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b",
    size=1648877,
    description="MNIST test images, 10000 x 28 x 28 uint8 (CC BY-SA 3.0)",
)
MNIST_TEST_LABELS = RemoteFile(
    path="mnist/t10k-labels-idx1-ubyte.gz",
    url=f"{_SOURCE}/t10k-labels-idx1-ubyte.gz",
    sha256="fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c",
    size=4542,
    description="MNIST test labels, 10000 digits 0-9",
)
MNIST_TEST_FILES = (MNIST_TEST_IMAGES, MNIST_TEST_LABELS)

IMAGE_SIZE = 28
NUM_CLASSES = 10

# IDX type byte -> numpy dtype (big-endian where it matters).
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or not) into an array of its declared shape."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read the IDX file: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header is truncated")
    shape = tuple(int(size) for size in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = _IDX_TYPES[raw[2]]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes of data) but the file "
            f"holds {len(raw) - header} bytes"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def load_mnist_test(store: DataStore) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test set: images uint8 (N, 28, 28) and labels int64 (N,), files verified."""
    images_path = store.fetch(MNIST_TEST_IMAGES)
    labels_path = store.fetch(MNIST_TEST_LABELS)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise DataError(
            f"{images_path}: expected uint8 images of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}), found "
            f"{images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels_path}: expected {images.shape[0]} labels (one per image in {images_path}), "
            f"found shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(
            f"{labels_path}: labels must be digits 0-9, found {labels.min()}..{labels.max()}"
        )
    return np.ascontiguousarray(images), labels.astype(np.int64)

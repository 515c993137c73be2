"""Input files of `dmrnet predict`, read batch after batch so memory stays bounded.

- `.npz`: one array per modality, samples as rows. Each array is read from its archive member a
  batch of rows at a time (`np.load` would decompress every array whole).
- `.csv`: the multiview CSV layout (docs/datasets.md): a header, `<view>.<feature>` columns; a
  `label` and a `split` column may be there and are ignored. An empty cell is NaN, so a row
  whose cells of a view are all empty has that view missing.
- `.mat`: one variable per modality (scipy reads the file whole: not streamed).

A key or view that is not a modality of the model is reported in `InputFile.ignored`.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from dmrnet.data.multiview import CSV_LABEL_COLUMN, CSV_SPLIT_COLUMN
from dmrnet.errors import DataError

SUFFIXES = (".npz", ".csv", ".mat")


@dataclass
class InputFile:
    path: Path
    batches: Iterator[dict[str, np.ndarray]]  # modality -> (rows, ...) per batch
    ignored: list[str] = field(default_factory=list)  # keys that are not modalities


def read_inputs(
    path: str | Path, shapes: Mapping[str, tuple[int, ...]], batch_size: int
) -> InputFile:
    """Open `path` and read the modalities in `shapes` (name -> sample shape) batch by batch."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such input file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path, shapes, batch_size)
    if suffix == ".csv":
        return _read_csv(path, shapes, batch_size)
    if suffix == ".mat":
        return _read_mat(path, shapes, batch_size)
    raise DataError(f"{path}: unsupported input format {suffix!r}; use {', '.join(SUFFIXES)}")


def _no_modality(path: Path, keys: list[str], shapes: Mapping[str, Any]) -> DataError:
    return DataError(
        f"{path}: none of its keys {keys} is a modality of this model ({'+'.join(shapes)})"
    )


# -- .npz -----------------------------------------------------------------------------------------
@dataclass
class _Member:
    """One .npy array inside an .npz archive, read row block by row block."""

    handle: IO[bytes]
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 0

    def read_all(self) -> np.ndarray:
        return np.frombuffer(self.handle.read(), dtype=self.dtype).reshape(self.shape)

    def read(self, count: int) -> np.ndarray:
        row_shape = self.shape[1:]
        size = count * int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        data = self.handle.read(size)
        return np.frombuffer(data, dtype=self.dtype).reshape(-1, *row_shape)


def _open_member(archive: zipfile.ZipFile, name: str, path: Path, key: str) -> _Member:
    handle = archive.open(name)
    try:
        version = np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(handle)
    except ValueError as error:
        raise DataError(f"{path}: key {key!r} is not a .npy array ({error})") from None
    if dtype.hasobject:
        raise DataError(f"{path}: key {key!r} holds Python objects (dtype object), not numbers")
    if fortran and len(shape) > 1:
        # Column-major rows are not contiguous: read the array whole (rare: numpy writes C order).
        values = np.frombuffer(handle.read(), dtype=dtype).reshape(shape[::-1]).T
        handle = _BytesOf(np.ascontiguousarray(values))
    return _Member(handle, tuple(shape), dtype)


class _BytesOf:
    """A C-ordered copy of an array, read like a file."""

    def __init__(self, values: np.ndarray) -> None:
        self.data, self.offset = values.tobytes(), 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.offset + size
        chunk, self.offset = self.data[self.offset : end], end
        return chunk


def _read_npz(path: Path, shapes: Mapping[str, tuple[int, ...]], batch_size: int) -> InputFile:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{path}: cannot read input file: {error}") from None
    keys = {name.removesuffix(".npy"): name for name in archive.namelist()}
    ignored = sorted(set(keys) - set(shapes))
    members = {key: _open_member(archive, keys[key], path, key) for key in shapes if key in keys}
    if not members:
        raise _no_modality(path, sorted(keys), shapes)
    rows = {key: member.rows for key, member in members.items()}
    # Arrays that are not (rows, *sample shape), e.g. one sample or a scalar: read whole, and the
    # predictor adds the batch dimension or says what is wrong.
    whole = any(len(m.shape) != len(shapes[k]) + 1 for k, m in members.items())

    def batches() -> Iterator[dict[str, np.ndarray]]:
        with archive:
            if whole:
                yield {key: member.read_all() for key, member in members.items()}
                return
            if len(set(rows.values())) != 1:
                raise DataError(f"{path}: modalities have different numbers of samples: {rows}")
            total = next(iter(rows.values()))
            if total == 0:
                raise DataError(f"{path}: no samples: {', '.join(members)} hold 0 rows")
            for start in range(0, total, batch_size):
                count = min(batch_size, total - start)
                yield {key: member.read(count) for key, member in members.items()}

    return InputFile(path, batches(), ignored)


# -- .csv -----------------------------------------------------------------------------------------
def _read_csv(path: Path, shapes: Mapping[str, tuple[int, ...]], batch_size: int) -> InputFile:
    handle = path.open(newline="")
    reader = csv.reader(handle)
    header = next((row for row in reader if row), None)
    if header is None:
        handle.close()
        raise DataError(f"{path}: the CSV file is empty; it needs a header row")
    columns: dict[str, list[int]] = {}
    for index, name in enumerate(column.strip() for column in header):
        if name in (CSV_LABEL_COLUMN, CSV_SPLIT_COLUMN):
            continue
        view, dot, feature = name.partition(".")
        if not (view and dot and feature):
            handle.close()
            raise DataError(
                f"{path}: column {name!r} is neither {CSV_LABEL_COLUMN!r}, {CSV_SPLIT_COLUMN!r} "
                "nor a feature column named '<view>.<feature>'"
            )
        columns.setdefault(view, []).append(index)
    views = {view: indices for view, indices in columns.items() if view in shapes}
    if not views:
        handle.close()
        raise _no_modality(path, sorted(columns), shapes)
    for view, indices in views.items():
        if (len(indices),) != tuple(shapes[view]):
            handle.close()
            raise DataError(
                f"{path}: view {view!r} has {len(indices)} columns, the model expects samples of "
                f"shape {tuple(shapes[view])}"
            )

    def batches() -> Iterator[dict[str, np.ndarray]]:
        with handle:
            block: list[list[str]] = []
            numbers: list[int] = []
            seen = False
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num} has {len(row)} cells, the header "
                        f"{len(header)}"
                    )
                block.append(row)
                numbers.append(reader.line_num)
                if len(block) == batch_size:
                    yield _csv_block(path, block, numbers, header, views)
                    block, numbers, seen = [], [], True
            if block:
                yield _csv_block(path, block, numbers, header, views)
            elif not seen:
                raise DataError(f"{path}: the CSV file has a header but no samples")

    return InputFile(path, batches(), sorted(set(columns) - set(shapes)))


def _csv_block(
    path: Path,
    rows: list[list[str]],
    line_numbers: list[int],
    header: list[str],
    views: Mapping[str, list[int]],
) -> dict[str, np.ndarray]:
    table = np.array(rows, dtype=str)
    arrays = {}
    for view, indices in views.items():
        cells = table[:, indices]
        cells = np.where(np.char.strip(cells) == "", "nan", cells)
        try:
            arrays[view] = cells.astype(np.float32)
        except ValueError:
            for (row, column), cell in np.ndenumerate(cells):
                try:
                    float(cell)
                except ValueError:
                    raise DataError(
                        f"{path}: line {line_numbers[row]}: column "
                        f"{header[indices[column]].strip()!r} holds {str(cell)!r}, not a number"
                    ) from None
    return arrays


# -- .mat -----------------------------------------------------------------------------------------
def _read_mat(path: Path, shapes: Mapping[str, tuple[int, ...]], batch_size: int) -> InputFile:
    import scipy.io

    try:
        contents = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    except (OSError, ValueError, NotImplementedError, scipy.io.matlab.MatReadError) as error:
        raise DataError(f"{path}: cannot read input file: {error}") from None
    arrays = {key: contents[key] for key in shapes if key in contents}
    if not arrays:
        raise _no_modality(path, sorted(contents), shapes)
    return InputFile(path, iter([arrays]), sorted(set(contents) - set(shapes)))

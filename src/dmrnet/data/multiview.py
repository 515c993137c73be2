"""Bring-your-own multi-view features: one .mat, .npz or CSV file per dataset.

The file formats found in the multi-view literature differ in small ways (views as separate keys
or as one cell array, samples as rows or as columns, a fixed train/test split or none, labels
1..K or names), so this reader accepts all of them and normalizes to rows = samples, classes
0..K-1. What each layout must look like is in docs/datasets.md; every inconsistency is reported
with the file, the view (or key) and what was expected.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.io
import scipy.sparse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dmrnet.checks import check_unique
from dmrnet.data.base import (
    ArrayMultiModalDataset,
    DataSpec,
    DataSplits,
    register_dataset,
    stratified_split,
)
from dmrnet.data.store import DataStore
from dmrnet.errors import DataError
from dmrnet.modalities import ModalitySet

LABEL_CANDIDATES = ("gt", "label", "labels", "Y", "y")
CSV_LABEL_COLUMN = "label"
CSV_SPLIT_COLUMN = "split"
PARTS = ("train", "test")


class MultiviewOptions(BaseModel):
    """`data.options` for multiview; see docs/datasets.md for the file layouts."""

    model_config = ConfigDict(extra="forbid")

    path: Path  # relative paths: from the working directory, else from the data root
    # Keys (or CSV view prefixes) to use, in this order; default: every view in the file. With
    # `cell_key`, the names of the cells instead (one per cell).
    views: list[str] | None = None
    label_key: str | None = None  # default: first of LABEL_CANDIDATES present; CSV: "label"
    cell_key: str | None = None  # .mat: one cell array holding all views, e.g. "X"
    present_key: str | None = None  # .mat/.npz: N x V availability matrix of 0/1
    nan_means_missing: bool = False  # a row that is all NaN in a view = that view is missing
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # used when the file has no split
    # Seed of that train/test split, separate from the run seed so every training seed is
    # evaluated on the same test rows.
    split_seed: int = 0

    @field_validator("views")
    @classmethod
    def _distinct_views(cls, views: list[str] | None) -> list[str] | None:
        if views is not None and not views:
            raise ValueError("give at least one view, or leave views unset to use all")
        if views is not None and len(set(views)) != len(views):
            raise ValueError(f"a view is listed twice in {views}")
        return views


@dataclass
class _Part:
    """Rows of one part of the file (all of it, or its train or test rows), before mapping."""

    views: dict[str, np.ndarray]  # name -> (N, ...) samples first
    labels: np.ndarray  # (N,) original label values
    present: np.ndarray  # (N, V) bool
    source: str  # names the file (and part) in error messages


@register_dataset(
    "multiview",
    options=MultiviewOptions,
    description="your own multi-view features from a .mat, .npz or CSV file",
)
def build(
    options: MultiviewOptions, store: DataStore, val_fraction: float, seed: int
) -> DataSplits:
    """Read the file, map labels to 0..K-1, split train/val/test, collect training statistics."""
    path = _resolve_path(options.path, store)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        parts = _read_csv(path, options)
    elif suffix in (".mat", ".npz"):
        contents = _load_mat(path) if suffix == ".mat" else _load_npz(path)
        parts = _read_arrays(contents, str(path), options)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .mat, .npz or .csv")

    class_names, targets = _map_labels(parts, str(path))
    first = next(iter(parts.values()))
    for part in parts.values():
        for name, values in part.views.items():
            if values.shape[1:] != first.views[name].shape[1:]:
                raise DataError(
                    f"{path}: view {name!r} has {values.shape[1:]} features per sample in the "
                    f"test rows but {first.views[name].shape[1:]} in the train rows"
                )
    try:
        modalities = ModalitySet(tuple(first.views))
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from exc
    datasets = {
        key: ArrayMultiModalDataset(
            modalities, part.views, targets[key], len(class_names), part.present, part.source
        )
        for key, part in parts.items()
    }
    if "all" in datasets:
        train_rows, test_rows = stratified_split(
            datasets["all"].targets, options.test_fraction, options.split_seed
        )
        train_all = datasets["all"].subset(train_rows)
        test = datasets["all"].subset(test_rows)
    else:
        train_all, test = datasets["train"], datasets["test"]
    keep_rows, val_rows = stratified_split(train_all.targets, val_fraction, seed)
    train = train_all.subset(keep_rows)
    for index, name in enumerate(modalities.names):
        # Standardization statistics need at least one training sample per view.
        if not bool(train.present[:, index].any()):
            raise DataError(f"{path}: view {name!r} is missing in every training sample")
    spec = DataSpec(
        name="multiview",
        modalities=modalities,
        input_shapes={name: tuple(first.views[name].shape[1:]) for name in modalities.names},
        task="classification",
        num_classes=len(class_names),
        class_names=class_names,
        input_stats=train.standardization(),
        extra={"path": str(path)},
    )
    return DataSplits(spec=spec, train=train, val=train_all.subset(val_rows), test=test)


def _resolve_path(path: Path, store: DataStore) -> Path:
    candidates = [path.expanduser()]
    if not path.is_absolute() and store.mirror is not None:
        candidates.append(store.mirror / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"multiview file {path} not found (looked at {looked}); set data.options.path to an "
        "existing .mat, .npz or .csv file"
    )


def _load_mat(path: Path) -> dict[str, np.ndarray]:
    """Variables of a .mat file; MATLAB v7.3 files are HDF5 and go through h5py."""
    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError:
        return _load_mat_v73(path)
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read {path} as a .mat file: {exc}") from exc
    return {key: value for key, value in contents.items() if not key.startswith("__")}


def _load_mat_v73(path: Path) -> dict[str, np.ndarray]:
    """Numeric variables and cell arrays of numeric matrices from a v7.3 (HDF5) .mat file.

    HDF5 stores MATLAB arrays column-major, so every array is transposed back.
    """
    contents: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as handle:
            for key, item in handle.items():
                if not isinstance(item, h5py.Dataset):
                    continue  # structs and MATLAB's internal "#refs#" group
                values = item[()]
                if h5py.check_dtype(ref=item.dtype) is not None:
                    cells = np.empty(values.shape, dtype=object)
                    for index, ref in np.ndenumerate(values):
                        cells[index] = np.asarray(handle[ref][()]).T
                    values = cells
                contents[key] = np.asarray(values).T
    except OSError as exc:
        raise DataError(f"cannot read {path} as a MATLAB v7.3 (HDF5) file: {exc}") from exc
    return contents


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        raise DataError(
            f"cannot read {path}: {exc}; save plain numeric (or string label) arrays, no objects"
        ) from exc
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path} as a .npz file: {exc}") from exc


def _read_arrays(
    contents: dict[str, np.ndarray], source: str, options: MultiviewOptions
) -> dict[str, _Part]:
    """The parts of a .mat/.npz file: {"all": ...} or, with `{key}_train/_test` keys, both."""
    keys = ", ".join(contents) or "none"
    label = _label_key(contents, options.label_key, source)
    explicit = f"{label}_train" in contents and f"{label}_test" in contents
    suffixes = {"train": "_train", "test": "_test"} if explicit else {"all": ""}
    reserved = {label, options.present_key, options.cell_key}

    view_keys: list[str] = []
    if options.cell_key is None:
        view_keys = options.views or _discover_views(contents, reserved, explicit, source)

    def get(key: str, what: str) -> np.ndarray:
        if key not in contents:
            raise DataError(f"{source}: no key {key!r} ({what}); keys are {keys}")
        return contents[key]

    parts = {}
    for part, suffix in suffixes.items():
        part_source = source if part == "all" else f"{source} ({part} rows)"
        if options.cell_key is None:
            views = {key: get(key + suffix, f"view {key!r}") for key in view_keys}
        else:
            views = _cell_views(get(options.cell_key + suffix, "cell_key"), options, source)
        labels = get(label + suffix, "labels")
        present = None
        if options.present_key is not None:
            present = get(options.present_key + suffix, "present_key")
        parts[part] = _make_part(views, labels, present, part_source, options.nan_means_missing)
    return parts


def _label_key(contents: dict[str, np.ndarray], label_key: str | None, source: str) -> str:
    """The label variable's base name; a `{name}_train`/`{name}_test` pair wins over `{name}`."""
    candidates = (label_key,) if label_key is not None else LABEL_CANDIDATES
    for name in candidates:
        if f"{name}_train" in contents and f"{name}_test" in contents:
            return name
        if name in contents:
            return name
    looked = ", ".join(candidates)
    raise DataError(
        f"{source}: no labels found (looked for {looked}, alone or as _train/_test pairs); keys "
        f"are {', '.join(contents) or 'none'}; set data.options.label_key"
    )


def _discover_views(
    contents: dict[str, np.ndarray], reserved: set[str | None], explicit: bool, source: str
) -> list[str]:
    """Every view variable, in file order: `{v}_train`/`{v}_test` pairs, or all other keys."""
    if explicit:
        names = [
            key.removesuffix("_train")
            for key in contents
            if key.endswith("_train") and key.removesuffix("_train") + "_test" in contents
        ]
    else:
        names = list(contents)
    names = [name for name in names if name not in reserved]
    for name in names:
        values = contents[name + ("_train" if explicit else "")]
        if values.dtype == object:
            raise DataError(
                f"{source}: key {name!r} is a cell array; set data.options.cell_key: {name} if it "
                "holds the views, or data.options.views to the keys that do"
            )
        if values.dtype.kind not in "biuf":
            raise DataError(
                f"{source}: key {name!r} holds {values.dtype} values, not features; set "
                "data.options.views to the keys that hold views"
            )
    if not names:
        raise DataError(f"{source}: no view arrays found besides the labels")
    return names


def _cell_views(cells: np.ndarray, options: MultiviewOptions, source: str) -> dict[str, np.ndarray]:
    """Views stored as one MATLAB cell array, (1, V) or (V, 1); named view0.. or by `views`."""
    if cells.dtype != object or (cells.ndim == 2 and 1 not in cells.shape) or cells.ndim > 2:
        raise DataError(
            f"{source}: cell_key {options.cell_key!r} holds a {cells.dtype} array of shape "
            f"{cells.shape}, not a (1, V) or (V, 1) cell array of view matrices"
        )
    matrices = list(cells.reshape(-1))
    names = options.views or [f"view{index}" for index in range(len(matrices))]
    if len(names) != len(matrices):
        raise DataError(
            f"{source}: cell array {options.cell_key!r} holds {len(matrices)} views but "
            f"data.options.views names {len(names)}; with cell_key, views names every cell in order"
        )
    return dict(zip(names, matrices, strict=True))


def _read_csv(path: Path, options: MultiviewOptions) -> dict[str, _Part]:
    """A CSV with a header: a label column, `<view>.<feature>` columns, optional `split`."""
    if options.cell_key is not None or options.present_key is not None:
        raise DataError(
            f"{path}: cell_key and present_key apply to .mat/.npz files; in a CSV leave a missing "
            "view's cells empty and set data.options.nan_means_missing: true"
        )
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = enumerate(csv.reader(handle), start=1)
            lines = [(number, row) for number, row in rows if row]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a text CSV file ({error})") from None
    if not lines:
        raise DataError(f"{path}: the CSV file is empty; it needs a header row")
    header = [name.strip() for name in lines[0][1]]
    check_unique(header, "column", str(path))
    label_column = options.label_key or CSV_LABEL_COLUMN
    if label_column not in header:
        raise DataError(f"{path}: no label column {label_column!r} in the header {header}")
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(header):
        if name in (label_column, CSV_SPLIT_COLUMN):
            continue
        view, dot, feature = name.partition(".")
        if not (view and dot and feature):
            raise DataError(
                f"{path}: column {name!r} is neither {label_column!r}, {CSV_SPLIT_COLUMN!r} nor a "
                "feature column named '<view>.<feature>'"
            )
        groups.setdefault(view, []).append(index)
    for view in options.views or []:
        if view not in groups:
            raise DataError(f"{path}: no columns for view {view!r}; views are {', '.join(groups)}")
    names = options.views or list(groups)
    for number, row in lines[1:]:
        if len(row) != len(header):
            raise DataError(f"{path}: line {number} has {len(row)} cells, the header {len(header)}")
    if len(lines) < 2:
        raise DataError(f"{path}: the CSV file has a header but no samples")
    table = np.array([row for _, row in lines[1:]], dtype=str)
    line_numbers = [number for number, _ in lines[1:]]
    views = {
        view: _csv_numbers(
            table[:, groups[view]], [header[i] for i in groups[view]], path, line_numbers
        )
        for view in names
    }
    labels = np.char.strip(table[:, header.index(label_column)])
    if CSV_SPLIT_COLUMN not in header:
        return {"all": _make_part(views, labels, None, str(path), options.nan_means_missing)}
    split = np.char.lower(np.char.strip(table[:, header.index(CSV_SPLIT_COLUMN)]))
    bad = ~np.isin(split, PARTS)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: line {line_numbers[first]}: split value {str(split[first])!r} is not train "
            "or test"
        )
    parts = {}
    for part in PARTS:
        rows = split == part
        if not rows.any():
            raise DataError(f"{path}: the split column has no {part} rows")
        parts[part] = _make_part(
            {view: values[rows] for view, values in views.items()},
            labels[rows],
            None,
            f"{path} ({part} rows)",
            options.nan_means_missing,
        )
    return parts


def _csv_numbers(
    cells: np.ndarray, columns: list[str], path: Path, line_numbers: list[int]
) -> np.ndarray:
    """Parse feature cells as floats; an empty cell is NaN (a missing value)."""
    cells = np.where(np.char.strip(cells) == "", "nan", cells)
    try:
        return cells.astype(np.float64)
    except ValueError:
        row, column = next(index for index, cell in np.ndenumerate(cells) if not _is_number(cell))
        raise DataError(
            f"{path}: line {line_numbers[row]}: column {columns[column]!r} holds "
            f"{str(cells[row, column])!r}, not a number"
        ) from None


def _is_number(cell: str) -> bool:
    try:
        np.asarray(cell).astype(np.float64)
    except ValueError:
        return False
    return True


def _make_part(
    views: dict[str, np.ndarray],
    labels: np.ndarray,
    present: np.ndarray | None,
    source: str,
    nan_means_missing: bool,
) -> _Part:
    """Orient every view as samples-first, check counts, build the availability matrix."""
    label_values = _label_vector(labels, source)
    count = len(label_values)
    if count == 0:
        raise DataError(f"{source}: no samples (the label array is empty)")
    oriented = {name: _samples_first(values, count, name, source) for name, values in views.items()}
    if present is None:
        availability = np.ones((count, len(oriented)), dtype=bool)
    else:
        availability = _availability(np.asarray(present), count, len(oriented), source)
    if nan_means_missing:
        for index, values in enumerate(oriented.values()):
            flat = values.reshape(count, -1).astype(np.float64)
            availability[:, index] &= ~np.isnan(flat).all(axis=1)
    return _Part(oriented, label_values, availability, source)


def _samples_first(values: np.ndarray, count: int, name: str, source: str) -> np.ndarray:
    """Rows = samples. A matrix whose columns (not rows) match the label count is transposed; a
    square one is taken as rows = samples."""
    values = values.toarray() if scipy.sparse.issparse(values) else np.asarray(values)
    if values.dtype.kind not in "biuf":
        raise DataError(f"{source}: view {name!r} holds {values.dtype} values, expected numbers")
    if values.ndim == 1:
        values = values[:, None]  # one feature per sample
    if values.ndim == 2 and values.shape[0] != count and values.shape[1] == count:
        values = values.T
    if values.shape[0] != count:
        raise DataError(
            f"{source}: view {name!r} has shape {values.shape} but there are {count} labels; "
            "a view needs one row (or one column) per sample"
        )
    return values


def _availability(present: np.ndarray, count: int, num_views: int, source: str) -> np.ndarray:
    """The N x V 0/1 availability matrix (V x N is transposed), checked for 0/1 values."""
    if present.shape == (num_views, count) and present.shape != (count, num_views):
        present = present.T
    if present.shape != (count, num_views):
        raise DataError(
            f"{source}: present_key matrix has shape {present.shape}, expected "
            f"({count}, {num_views}) (samples x views)"
        )
    if present.dtype.kind not in "biuf" or not np.isin(present, (0, 1)).all():
        raise DataError(f"{source}: present_key matrix must hold only 0 and 1")
    return present.astype(bool)


def _label_vector(labels: np.ndarray, source: str) -> np.ndarray:
    """Labels as a 1-D array of ints (numbers, or digit strings) or of strings (names)."""
    values = np.asarray(labels)
    if values.ndim == 2 and 1 in values.shape:
        values = values.reshape(-1)
    if values.ndim != 1:
        raise DataError(f"{source}: labels have shape {values.shape}, expected a vector")
    if values.dtype == object:
        # A MATLAB cell array of names: each cell is a 1-element char array.
        cells = [np.asarray(cell).reshape(-1) for cell in values]
        sizes = [cell.size for cell in cells]
        if any(size != 1 for size in sizes):
            first = next(index for index, size in enumerate(sizes) if size != 1)
            raise DataError(
                f"{source}: the label cell of sample {first} holds {sizes[first]} values, "
                "expected one"
            )
        values = np.array([str(cell[0]) for cell in cells])
    if values.dtype.kind in "US":
        values = np.char.strip(values.astype(str))
        try:
            values = values.astype(np.float64)
        except ValueError:
            return values
    if values.dtype.kind == "f":
        fractional = ~np.isfinite(values) | (values != np.round(values))
        if fractional.any():
            first = int(np.flatnonzero(fractional)[0])
            raise DataError(
                f"{source}: label {values[first]} at sample {first} is not a whole number; labels "
                "must be class ids or names (is label_key the right key?)"
            )
    if values.dtype.kind not in "biuf":
        raise DataError(f"{source}: labels hold {values.dtype} values, expected ids or names")
    return values.astype(np.int64)


def _map_labels(
    parts: dict[str, _Part], source: str
) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """Classes 0..K-1 in sorted order of the original labels (over all parts), and the targets."""
    kinds = {part.labels.dtype.kind for part in parts.values()}
    if len(kinds) > 1:
        raise DataError(f"{source}: the labels mix numbers and names across train and test")
    classes = np.unique(np.concatenate([part.labels for part in parts.values()]))
    targets = {key: np.searchsorted(classes, part.labels) for key, part in parts.items()}
    return tuple(str(value) for value in classes), targets

"""Validation at the boundaries: configs, data files, user arrays.

Each `check_*` raises a DmrnetError subclass with one line that says where (file, key, sample),
what was expected and what was found (the scikit-learn `check_*` habit). The data sets, the
run planner and the Python API call these instead of writing their own checks, and
`format_errors` is the one way a pydantic ValidationError becomes a message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from dmrnet.errors import DataError

# Samples checked at once (bounds the memory of large, possibly memory-mapped arrays).
_CHUNK = 32


def format_errors(
    error: ValidationError,
    source: str,
    prefix: str = "",
    noun: str = "key",
    known: Sequence[str] | None = None,
) -> str:
    """One line naming every bad key: `SOURCE: invalid config: model.x: unknown key; ...`.

    `prefix` is prepended to each pydantic location (`data.options`), `noun` names what a
    location is ("key", "option"), `known` lists the valid names for unknown-key errors.
    """
    problems = []
    for item in error.errors():
        key = ".".join([*([prefix] if prefix else []), *(str(part) for part in item["loc"])])
        if item["type"] == "extra_forbidden":
            hint = f"; {noun}s are {', '.join(known) or 'none'}" if known is not None else ""
            problems.append(f"{key}: unknown {noun}{hint}")
        elif item["type"] == "missing":
            problems.append(f"{key}: required {noun} is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{key}: {message} (got {item.get('input')!r})")
    return f"{source}: invalid config: " + "; ".join(problems)


def chunks(count: int) -> Iterator[slice]:
    for start in range(0, count, _CHUNK):
        yield slice(start, min(start + _CHUNK, count))


def check_numeric(values: Any, name: str, source: str) -> None:
    """Real numbers only: complex values (an imaginary part would be dropped silently),
    objects and strings are refused by name."""
    if isinstance(values, torch.Tensor):
        if not values.is_complex():
            return
        dtype: Any = values.dtype
        kind = "c"
    else:
        dtype = getattr(values, "dtype", None)
        dtype = np.dtype(dtype) if dtype is not None else np.asarray(values).dtype
        kind = dtype.kind
    if kind not in "biuf":
        what = {"c": "complex", "O": "object", "U": "string", "S": "byte-string"}.get(kind, "")
        raise DataError(
            f"{source}: {name!r} holds {what or dtype} values ({dtype}), expected real numbers"
        )


def check_features(shape: Sequence[int], name: str, source: str) -> None:
    """A modality needs at least one value per sample (a zero-column view cannot be learned)."""
    if 0 in tuple(shape[1:]):
        raise DataError(
            f"{source}: {name!r} has samples of shape {tuple(shape[1:])}, with no values; "
            "drop the view or give it features"
        )


def check_unique(names: Sequence[str], what: str, source: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{source}: {what} {name!r} appears twice; names must be unique")
        seen.add(name)


def check_same_length(lengths: dict[str, int], expected: int, source: str) -> None:
    for name, length in lengths.items():
        if length != expected:
            raise DataError(
                f"{source}: modality {name!r} has {length} samples but there are {expected} "
                "labels; every view must have one row per sample"
            )


def check_labels(
    labels: np.ndarray, num_classes: int, ignore_index: int | None, source: str
) -> None:
    """Labels (any shape, samples first) must be integers in 0..K-1 or the ignore index; the
    error names the first bad sample and value."""
    if labels.dtype.kind not in "iuf":
        raise DataError(f"{source}: labels must be integers, found dtype {labels.dtype}")
    for rows in chunks(len(labels)):
        chunk = np.asarray(labels[rows])
        if chunk.dtype.kind == "f" and not (
            np.all(np.isfinite(chunk)) and np.all(chunk == np.round(chunk))
        ):
            raise DataError(f"{source}: labels must be integers, found non-integer values")
        valid = (chunk >= 0) & (chunk < num_classes)
        if ignore_index is not None:
            valid |= chunk == ignore_index
        if not bool(valid.all()):
            sample = int(np.argwhere(~valid)[0][0])
            value = np.asarray(chunk[sample])[~np.asarray(valid[sample])].flat[0].item()
            allowed = f"0..{num_classes - 1}" + (
                "" if ignore_index is None else f" or the ignore index {ignore_index}"
            )
            raise DataError(
                f"{source}: label {value} at sample {rows.start + sample} is outside {allowed}"
            )


def check_present(present: torch.Tensor, where: str) -> None:
    """A sample with no modality at all cannot be used; say which one, at the data boundary."""
    empty = ~present.any(dim=-1)
    if bool(empty.any()):
        first = int(torch.nonzero(empty)[0])
        raise DataError(
            f"{where}: sample {first} has no modality present ({int(empty.sum())} such samples); "
            "every sample needs at least one modality"
        )


def check_finite(values: torch.Tensor, present: torch.Tensor, name: str, source: str) -> None:
    """No NaN or inf in the present samples of a modality (absent ones may hold anything)."""
    rows = values[present]
    if rows.numel() == 0:
        return  # no present sample (the data set says whether that is allowed)
    finite = torch.isfinite(rows.reshape(rows.shape[0], -1)).all(-1)
    if not bool(finite.all()):
        bad_row = int(torch.nonzero(present)[int(torch.nonzero(~finite)[0])])
        raise DataError(
            f"{source}: modality {name!r} has NaN or inf values (first at sample {bad_row}); "
            "fix the file or mark the sample's modality as missing"
        )


SPLIT_LABELS = {"train": "train", "val": "validation", "test": "test"}


def check_split_sizes(sizes: dict[str, int], source: str) -> None:
    """Training needs two samples (BatchNorm), selection and testing one each; say so where the
    splits are made, not as a traceback from the first batch."""
    if sizes["train"] >= 2 and min(sizes.values()) >= 1:
        return
    found = ", ".join(f"{sizes[split]} {label}" for split, label in SPLIT_LABELS.items())
    empty = [split for split in ("val", "test", "train") if sizes[split] == 0]
    if not empty:
        reason = "training needs at least 2 samples"
    elif empty[0] == "val":
        reason = "the val split has no samples (raise data.val_fraction, or give more samples)"
    else:
        reason = f"the {empty[0]} split has no samples"
    raise DataError(f"{source}: too few samples for training ({found}): {reason}")


def check_splits(
    sizes: dict[str, int], targets: dict[str, torch.Tensor] | None, source: str
) -> None:
    """A run needs enough samples in every split (`check_split_sizes`) and, for classification,
    at least two classes to train on and no validation or test class that training never sees."""
    check_split_sizes(sizes, source)
    if targets is None:
        return
    trained = set(torch.unique(targets["train"]).tolist())
    if len(trained) < 2:
        raise DataError(
            f"{source}: the training split holds a single class ({sorted(trained)}); "
            "classification needs at least two"
        )
    for split in ("val", "test"):
        unseen = sorted(set(torch.unique(targets[split]).tolist()) - trained)
        if unseen:
            raise DataError(
                f"{source}: class {unseen[0]} appears in the {split} split but never in "
                "training; every class needs training samples"
            )


def describe_yaml_error(error: Exception) -> str:
    """A YAML parse error in one line: what went wrong and where (PyYAML's own text spans
    several lines with a caret drawing)."""
    problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(error, "context", None)
    return f"{problem}{where}" + (f" ({context})" if context else "")

"""The data a GMVAE trains on, whatever file it came from: :class:`Dataset`, :class:`Scaler` and
their checks.

A :class:`Dataset` is a float32 matrix ``x`` of shape ``(N, D)`` plus optional labels (to score
the clustering, or to train with some labels known), :data:`MISSING_LABEL` where a row has none
(accepted only when asked for: ``allow_missing_labels``). Images are scaled to ``[0, 1]`` so a Bernoulli likelihood fits them; tables are
standardized with a :class:`Scaler` that travels with the data, so held-out data can be scaled
exactly like the training data and samples mapped back to the original units. Images of a
memory-mapped array (an ``.npy`` file) are not copied: ``x`` is then a :class:`ScaledRows`, which
reads and scales the rows asked for, a minibatch or a chunk at a time, so data larger than memory
trains.

:func:`from_array` turns an array into a Dataset (validated, image or table decided, scaled);
:func:`validate_array`, :func:`check_labels` and :func:`check_finite` are the checks every source
goes through (a memory-mapped one in chunks), and :func:`check_fits_in_memory` the memory guard
called wherever the whole data is copied into memory. Reading files is :mod:`pyro_gmvae.data`'s
business: this module imports none of it.

Every problem raises :class:`~pyro_gmvae.errors.DataError`, whose message names the problem and
the fix.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

__all__ = [
    "MISSING_LABEL",
    "Dataset",
    "ScaledRows",
    "Scaler",
    "as_rows",
    "available_memory_bytes",
    "check_finite",
    "check_fits_in_memory",
    "check_labels",
    "check_min_rows",
    "encode_labels",
    "from_array",
    "has_label",
    "labelled_rows",
    "validate_array",
    "value_range",
]

_FLOAT32_MAX = float(np.finfo(np.float32).max)

#: The label of a row that has none, in :attr:`Dataset.labels` and wherever labels are passed
#: (``fit(..., labels=y)``), as in scikit-learn's semi-supervised estimators: labels are classes
#: 0, 1, ..., so it is never one. Rows without a label are left out of every score.
MISSING_LABEL = -1


@dataclass
class Scaler:
    """Per-feature standardization ``(x - mean) / std``, fitted on training data.

    Attributes:
        mean: ``(D,)`` float64 column means.
        std: ``(D,)`` float64 column standard deviations; 1 for constant columns, so they map
            to 0 instead of dividing by zero.
    """

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.std = np.asarray(self.std, dtype=np.float64)
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape:
            raise DataError(
                f"scaler: mean {self.mean.shape} and std {self.std.shape} must be 1-D of the "
                "same length; refit the scaler on the training data"
            )
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.std))):
            raise DataError("scaler: mean or std is not finite; refit it on the training data")
        if np.any(self.std <= 0):
            raise DataError("scaler: std must be positive; refit it on the training data")

    @classmethod
    def fit(cls, x: np.ndarray) -> Scaler:
        """Fit to the columns of ``x`` of shape ``(N, D)`` (finite values, N >= 1)."""
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0)
        centered = x - mean
        # Squaring underflows for columns on a tiny scale (and overflows for huge ones), so take
        # the standard deviation of the columns divided by their largest deviation.
        largest = np.abs(centered).max(axis=0)
        largest[largest == 0] = 1.0
        std = largest * np.sqrt(np.mean((centered / largest) ** 2, axis=0))
        # A constant column can get a tiny nonzero std from rounding in the mean; compare the
        # column's range instead, and use its exact value as the mean so it maps to exactly 0.
        constant = np.ptp(x, axis=0) == 0
        mean[constant] = x[0, constant]
        std[constant | (std == 0)] = 1.0
        return cls(mean=mean, std=std)

    @property
    def n_features(self) -> int:
        """Number of columns D the scaler was fitted on."""
        return int(self.mean.shape[0])

    def _check_width(self, x: np.ndarray) -> None:
        if x.shape[-1] != self.n_features:
            raise DataError(
                f"data has {x.shape[-1]} features but the scaler was fitted on "
                f"{self.n_features}; load held-out data with the same columns as the training data"
            )

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardize ``x`` of shape ``(..., D)``; returns float32 (the model's dtype)."""
        x = np.asarray(x, dtype=np.float64)
        self._check_width(x)
        z = (x - self.mean) / self.std
        if np.any(np.abs(z) > _FLOAT32_MAX):
            raise DataError(
                "standardized values overflow float32: the data lies far outside the range of "
                "the data the scaler was fitted on; check that it has the same columns and units"
            )
        return z.astype(np.float32)

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        """Map standardized ``x`` of shape ``(..., D)`` back to original units; returns float64."""
        x = np.asarray(x, dtype=np.float64)
        self._check_width(x)
        return x * self.std + self.mean

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-serialisable form: ``{"mean": [...], "std": [...]}``."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(mean=d["mean"], std=d["std"])
        except DataError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(
                f"scaler: expected a dict with 'mean' and 'std' lists, got {d!r:.80}; "
                "use the scaler saved by the training run"
            ) from err


# Values read at a time by the checks that go through data in chunks: a few MiB, whatever N.
_CHUNK_VALUES = 2**20


def _scale_images(block: np.ndarray, scale: float) -> np.ndarray:
    """Rows ``(B, D)`` or images ``(B, H, W)`` as float32 rows ``(B, H*W)`` divided by ``scale``:
    the one conversion of images, whether the whole array is copied or a chunk is read."""
    out = block.reshape(len(block), math.prod(block.shape[1:])).astype(np.float32)
    if scale != 1.0:
        out /= np.float32(scale)
    return out


class ScaledRows:
    """Images read from an array a few rows at a time and scaled to ``[0, 1]`` as they are read:
    the rows of a :class:`Dataset` too large to copy into memory (an ``.npy`` file opened with
    ``np.load(path, mmap_mode="r")``).

    ``rows[key]``, for ``key`` an int, a slice, integer indices or a boolean mask of length N,
    is a float32 numpy array ``(B, D)`` (``(D,)`` for an int): the source's values divided by
    ``scale``, exactly as :func:`from_array` scales the images it copies. Rows are read in the
    order they lie in the source (a file is read forwards) and returned in the order asked.
    :meth:`chunks` reads consecutive rows, :meth:`subset` makes a view of some rows without
    reading them, and ``np.asarray(rows)`` makes the full ``(N, D)`` float32 copy, for code that
    needs one, after :func:`check_fits_in_memory`.

    A memory-mapped source's file is checked before each read: once it has changed (another size,
    modification time or file, e.g. truncated or rewritten by another job), reading raises
    :class:`~pyro_gmvae.errors.DataError` instead of touching pages the file may no longer hold,
    which would kill the process with SIGBUS.

    Args:
        source: ``(M, D)`` rows or ``(M, H, W)`` images of any real dtype, typically memory-mapped.
        scale: what the values are divided by: 255 for grey levels 0..255, 1 for ``[0, 1]``.
        index: ``(N,)`` the source rows in view, in order (None: all M of them).
        name: what to call the data in messages.

    Attributes:
        shape: ``(N, D)``; ``dtype``: float32; ``ndim``: 2.
        file: the memory-mapped file, or None for an array in memory.
    """

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(
        self,
        source: np.ndarray,
        scale: float = 1.0,
        index: np.ndarray | None = None,
        name: str = "data",
    ):
        if source.ndim not in (2, 3):
            raise ValueError(f"source must be (M, D) or (M, H, W), not of shape {source.shape}")
        self.source = source
        self.scale = float(scale)
        self.index = None if index is None else np.asarray(index, dtype=np.intp)
        self.name = name
        filename = getattr(source, "filename", None) if isinstance(source, np.memmap) else None
        self.file = None if filename is None else Path(filename)
        self._stamp = None if self.file is None else self._file_stamp()

    # -------------------------------------------------------------------------------- array
    def __len__(self) -> int:
        return len(self.source) if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), math.prod(self.source.shape[1:]))

    def __repr__(self) -> str:
        where = self.file or "an array in memory"
        return f"ScaledRows({len(self)} x {self.shape[1]} float32 from {where}, / {self.scale:g})"

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            n = len(self)
            if not -n <= key < n:
                raise IndexError(f"row {key} is out of range for {n} rows")
            return self._read(self._positions(np.array([key % n])))[0]
        return self._read(self._positions(key))

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """The rows in order, ``size`` at a time: float32 arrays ``(size, D)``, the last shorter."""
        for start in range(0, len(self), size):
            yield self[start : start + size]

    def subset(self, indices: np.ndarray | list[int]) -> ScaledRows:
        """Rows ``indices`` (integer indices or a boolean mask of length N) as a view, unread."""
        view = copy.copy(self)  # the same source and file stamp: a view of the data as opened
        view.index = self._positions(np.asarray(indices))
        return view

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("ScaledRows cannot be an array without a copy; pass copy=None")
        target = np.dtype(np.float32 if dtype is None else dtype)
        check_fits_in_memory(
            math.prod(self.shape),
            self.name,
            max(0, target.itemsize - 4),  # the guard counts 4 bytes a value of its own
            what="a full copy in memory of images otherwise read from disk as needed",
        )
        out = np.empty(self.shape, dtype=target)
        for start, rows in _row_chunks(self):
            out[start : start + len(rows)] = rows
        return out

    # ------------------------------------------------------------------------------- reading
    def _positions(self, key: Any) -> np.ndarray | slice:
        """The source rows of ``key``, in the order asked: integer indices, or a slice."""
        n = len(self)
        if isinstance(key, slice):
            if self.index is None:
                return key
            return self.index[key]
        if isinstance(key, tuple):
            raise TypeError(
                f"{self.name}: rows are read whole (an int, a slice, integer indices or a boolean "
                "mask); select columns after reading, e.g. rows[a:b][:, j]"
            )
        key = np.asarray(key)
        if key.size == 0:
            key = key.astype(np.intp)  # np.asarray([]) is float64
        if key.dtype == np.bool_:
            if key.shape != (n,):
                raise IndexError(f"a boolean mask of shape {key.shape} for {n} rows")
            key = np.flatnonzero(key)
        elif not np.issubdtype(key.dtype, np.integer) or key.ndim != 1:
            raise IndexError(
                f"rows are selected by integer indices (1-D) or a boolean mask, not {key.dtype} of "
                f"shape {key.shape}"
            )
        if len(key) and (key.min() < -n or key.max() >= n):
            raise IndexError(f"row indices out of range for {n} rows")
        key = np.where(key < 0, key + n, key)
        return key if self.index is None else self.index[key]

    def _read(self, positions: np.ndarray | slice) -> np.ndarray:
        self._check_file()
        in_order = isinstance(positions, slice) or bool(np.all(positions[1:] >= positions[:-1]))
        if in_order:
            return _scale_images(self.source[positions], self.scale)
        order = np.argsort(positions, kind="stable")
        rows = _scale_images(self.source[positions[order]], self.scale)
        out = np.empty_like(rows)
        out[order] = rows
        return out

    def _file_stamp(self) -> tuple[int, int, int, int]:
        stat = os.stat(self.file)
        return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _check_file(self) -> None:
        if self.file is None:
            return
        try:
            now = self._file_stamp()
        except OSError as err:
            what = f"it cannot be read any more ({type(err).__name__}: {err})"
        else:
            if now == self._stamp:
                return
            if now[:2] != self._stamp[:2]:
                what = "another file has replaced it"
            elif now[2] != self._stamp[2]:
                what = f"it held {self._stamp[2]:,} bytes when opened and holds {now[2]:,} now"
            else:
                what = "it was written to since it was opened"
        raise DataError(
            f"{self.file}: changed while it was being read: {what}; restore the file (train on a "
            "copy that nothing writes to), then run again: gmvae train --resume continues from "
            "the last checkpoint"
        )


@dataclass
class Dataset:
    """Preprocessed data ready for training.

    Attributes:
        x: ``(N, D)`` float32; images scaled to ``[0, 1]``, tables standardized. Images of a
            memory-mapped array are a :class:`ScaledRows`, read from disk as they are used.
        labels: ``(N,)`` int64 or None: each row's class, 0, 1, ..., or :data:`MISSING_LABEL`
            where it has none (only when loaded with ``allow_missing_labels``). They score the
            clustering, and training sees them only with some labels known (``--labels-known``).
        kind: ``"image"`` or ``"table"``.
        image_shape: ``(H, W)`` with ``H * W == D`` for images; None for tables.
        name: human-readable source, e.g. ``"digits"`` or the file path.
        scaler: for tables, the standardization applied to ``x``; None for images.
        feature_names: CSV column names for tables loaded from CSV, else None.
        label_names: original label values when they were strings (``labels`` index into it),
            else None.
    """

    x: np.ndarray
    labels: np.ndarray | None
    kind: str
    image_shape: tuple[int, int] | None
    name: str
    scaler: Scaler | None = None
    feature_names: list[str] | None = None
    label_names: list[str] | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        """Number of features D (pixels for images)."""
        return int(self.x.shape[1])

    @property
    def labelled(self) -> np.ndarray | None:
        """``(N,)`` bool: the rows that have a label (:func:`has_label`); None without labels."""
        return None if self.labels is None else has_label(self.labels)

    def subset(self, indices: np.ndarray | list[int]) -> Dataset:
        """Rows ``indices`` (integer indices or a boolean mask of length N) as a new Dataset.

        The scaler and names are shared, so the subset stays in the same units; of a
        :class:`ScaledRows`, the subset is a view, nothing is read.
        """
        indices = np.asarray(indices)
        labels = None if self.labels is None else self.labels[indices]
        x = self.x.subset(indices) if isinstance(self.x, ScaledRows) else self.x[indices]
        return replace(self, x=x, labels=labels)

    def split(self, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Split into ``(train, heldout)`` with ``fraction`` of the rows held out at random.

        Deterministic given ``seed``; both parts keep the original row order and are non-empty.
        The scaler is not refitted: both parts stay in the units ``x`` was loaded in.
        """
        if not 0 < fraction < 1:
            raise DataError(f"split fraction must be in (0, 1), got {fraction}")
        n = len(self)
        if n < 2:
            raise DataError(f"{self.name}: cannot split {n} row(s); give at least 2 rows")
        n_heldout = min(max(round(fraction * n), 1), n - 1)
        order = np.random.default_rng(seed).permutation(n)
        return self.subset(np.sort(order[n_heldout:])), self.subset(np.sort(order[:n_heldout]))


def labelled_rows(labels: np.ndarray, n: int | str, seed: int = 0) -> np.ndarray:
    """A boolean mask ``(N,)`` of the rows whose label training sees, among the rows of
    ``labels (N,)`` that have one (:func:`has_label`): ``"all"`` of them, or ``n`` drawn at random
    with ``seed``, balanced per class: ``n // C`` of each of the C classes and the remainder from
    classes drawn at random; a class with fewer rows gives all it has and the others make up the
    difference.

    Raises:
        DataError: no row has a label, or ``n`` is below 1 or above the rows that have one.
    """
    labels = np.asarray(labels)
    present = has_label(labels)
    have = int(present.sum())
    if have == 0:
        raise DataError(
            f"none of the {len(labels)} training rows has a label; give some rows their label, "
            "or train without --labels-known"
        )
    if isinstance(n, str):
        if n == "all":
            return present
        raise DataError(f"the rows to label are a number or 'all', not {n!r}")
    if not 1 <= n <= have:
        if have < len(labels):
            raise DataError(
                f"cannot label {n} rows: only {have} of the {len(labels)} training rows have a "
                f"label; pass --labels-known {have} or fewer, or --labels-known all"
            )
        raise DataError(f"cannot label {n} of {len(labels)} rows; pass 1 to {len(labels)}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[present])
    rows = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    share = dict.fromkeys(classes, 0)
    left = n
    # Round robin over the classes in a random order: each gets n // C, then one more each for
    # the first n % C, skipping classes that have run out of rows.
    order = rng.permutation(classes)
    while left:
        for c in order:
            if left and share[c] < len(rows[c]):
                share[c] += 1
                left -= 1
    mask = np.zeros(len(labels), dtype=bool)
    for c in classes:
        mask[rows[c][: share[c]]] = True
    return mask


# ----------------------------------------------------------------------------------------------
# Validation


def validate_array(
    x: Any, labels: Any = None, name: str = "data", *, allow_missing_labels: bool = False
) -> None:
    """Check an array handed in from Python before it is used for training.

    Args:
        x: ``(N, D)`` table or images, or ``(N, H, W)`` images; any numeric dtype.
        labels: optional ``(N,)`` integer (or string) labels.
        name: what to call the data in error messages.
        allow_missing_labels: accept labels missing on some rows (see :func:`check_labels`).

    Raises:
        DataError: on a non-numeric dtype, rank other than 2 or 3, zero rows or features,
            NaN or infinite values, or labels that are not 1-D of length N.
    """
    x = _as_array(x, name)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise DataError(
            f"{name}: values are not real numbers (dtype {x.dtype}); convert the data to a "
            "numeric array, e.g. np.asarray(x, dtype=np.float32)"
        )
    if x.ndim == 1:
        raise DataError(
            f"{name}: data is 1-D (shape {x.shape}); pass a 2-D array (rows, features), "
            "e.g. x.reshape(-1, 1) for a single feature"
        )
    if x.ndim not in (2, 3):
        raise DataError(
            f"{name}: data is {x.ndim}-D (shape {x.shape}); pass (N, D) rows of features or "
            "(N, H, W) grey images; flatten other shapes with x.reshape(len(x), -1)"
        )
    if x.shape[0] == 0:
        raise DataError(f"{name}: data has 0 rows (shape {x.shape}); give at least 2 rows")
    if math.prod(x.shape[1:]) == 0:
        raise DataError(f"{name}: data has 0 features (shape {x.shape}); give at least 1 column")
    check_finite(x, name)
    if labels is not None:
        check_labels(labels, len(x), name, allow_missing=allow_missing_labels)


def _as_array(x: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as err:  # ragged nested lists, unconvertible objects
        raise DataError(
            f"{name}: cannot convert to an array ({err}); pass a rectangular numeric array"
        ) from err


def check_finite(
    x: np.ndarray | ScaledRows,
    name: str,
    feature_names: list[str] | None = None,
    row_numbers: list[int] | None = None,
) -> None:
    """Raise if ``x`` holds NaN or inf, naming how many and the first position.

    Goes through ``x`` in chunks of rows, so a memory-mapped array or a :class:`ScaledRows` is
    read, never copied whole.

    Args:
        x: ``(N, D)`` or ``(N, H, W)`` array, or a :class:`ScaledRows`.
        name: what to call the data in the message.
        feature_names: the ``D`` column names, to name the column instead of its index.
        row_numbers: the ``N`` rows' line numbers in the source file, to name the line.
    """
    source = x.source if isinstance(x, ScaledRows) else x
    if not np.issubdtype(source.dtype, np.inexact):
        return  # integer and bool arrays cannot hold NaN or inf (nor can they once divided by 255)
    n_nan = n_inf = 0
    first = None
    for start, chunk in _row_chunks(x):
        bad = ~np.isfinite(chunk)
        if not bad.any():
            continue
        nan = int(np.isnan(chunk).sum())
        n_nan += nan
        n_inf += int(bad.sum()) - nan
        if first is None:
            at = np.unravel_index(int(np.argmax(bad)), chunk.shape)
            first = (start + int(at[0]), *(int(i) for i in at[1:]))
    if first is None:
        return
    row = f"line {row_numbers[first[0]]}" if row_numbers else f"row {first[0]}"
    if x.ndim == 2:
        col = repr(feature_names[first[1]]) if feature_names else str(first[1])
        where = f"{row}, column {col}"
    else:
        where = f"{row}, pixel {tuple(first[1:])}"
    raise DataError(
        f"{name}: {n_nan} NaN and {n_inf} infinite (inf) value(s), the first at {where}; "
        "drop or impute the rows with missing or infinite values before loading"
    )


def _row_chunks(x: np.ndarray | ScaledRows) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, rows)`` of ``x (N, ...)`` in order, about ``_CHUNK_VALUES`` values each."""
    rows = max(1, _CHUNK_VALUES // max(1, math.prod(x.shape[1:])))
    for start in range(0, len(x), rows):
        yield start, x[start : start + rows]


def value_range(x: Any) -> tuple[float, float]:
    """The smallest and largest value of ``x``: NaN when it holds a NaN. An array or a
    :class:`ScaledRows` is gone through in chunks of rows (never copied whole); anything else
    (a tensor) by its own ``min`` and ``max``."""
    if not isinstance(x, (np.ndarray, ScaledRows)) and hasattr(x, "min"):
        return float(x.min()), float(x.max())
    x = as_rows(x)
    lo, hi = np.inf, -np.inf
    for _, chunk in _row_chunks(x):
        lo, hi = np.minimum(lo, chunk.min()), np.maximum(hi, chunk.max())
    return float(lo), float(hi)


def as_rows(x: Any) -> np.ndarray | ScaledRows:
    """``x`` as rows to index and measure without copying data read from disk: a
    :class:`ScaledRows` as it is, anything else through ``np.asarray``."""
    return x if isinstance(x, ScaledRows) else np.asarray(x)


def check_labels(
    labels: Any,
    n: int,
    name: str,
    row_numbers: list[int] | None = None,
    *,
    allow_missing: bool = False,
) -> np.ndarray:
    """Check ``labels`` for ``n`` rows of data; returns them as an ``(n,)`` array.

    Labels are classes 0, 1, ... (integers, whole floats or bools) or strings, one a row. Every
    source of labels comes through here, so a missing label (NaN, :data:`MISSING_LABEL`, or an
    empty or "nan" string) is treated alike whether it came from a CSV cell, an .npz array or
    Python: refused unless ``allow_missing``, which training with labels known asks for (the
    rows that have a label are the ones it can learn from; a clustering is scored on every row).

    Args:
        labels: ``(n,)`` labels.
        n: number of rows of the data they label.
        name: what to call the data in messages.
        row_numbers: the ``n`` rows' line numbers in the source file, to name the line.
        allow_missing: accept labels missing on some (or all) rows.
    """
    labels = _as_array(labels, f"{name} labels")
    if labels.ndim != 1:
        raise DataError(
            f"{name}: labels must be 1-D with one label a row, got shape {labels.shape}; "
            "pass labels.reshape(-1)"
        )
    if len(labels) != n:
        raise DataError(
            f"{name}: {len(labels)} labels for {n} rows of data; pass one label per row "
            "(or no labels)"
        )
    strings = labels.dtype.kind in "US"
    if not (strings or np.issubdtype(labels.dtype, np.number) or labels.dtype == np.bool_):
        raise DataError(f"{name}: labels have dtype {labels.dtype}; pass integer or string labels")
    if np.iscomplexobj(labels):
        raise DataError(f"{name}: labels hold complex values; pass integer labels")
    missing = _missing_labels(labels)
    if missing.any() and not allow_missing:
        first = int(np.argmax(missing))
        where = f"line {row_numbers[first]}" if row_numbers else f"row {first}"
        raise DataError(
            f"{name}: {int(missing.sum())} missing label(s) (empty, NaN or {MISSING_LABEL}), the "
            f"first at {where}; label those rows or drop them (a clustering is scored on every "
            "row), or train with the labels that exist: --labels-known all (in Python, load "
            "with allow_missing_labels=True)"
        )
    if strings:
        return labels
    present = labels[~missing]
    if not np.all(np.isfinite(present)):
        raise DataError(f"{name}: labels hold infinite values; pass integer labels")
    if np.issubdtype(labels.dtype, np.floating) and np.any(present != np.round(present)):
        raise DataError(
            f"{name}: labels are not whole numbers; pass integer class labels (they are for "
            "evaluation, not regression targets)"
        )
    if len(present) and present.min() < 0:
        raise DataError(
            f"{name}: labels hold negative numbers (down to {present.min():g}); pass classes "
            f"0, 1, ... ({MISSING_LABEL} marks a missing label), or string labels"
        )
    return labels


def _missing_labels(labels: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: the missing labels of 1-D ``labels``: NaN or :data:`MISSING_LABEL`, or a
    string empty or "nan", so that a missing label never becomes a class of its own."""
    if labels.dtype.kind in "US":
        text = np.char.lower(np.char.strip(labels.astype(str)))
        # float() reads these as NaN: a spreadsheet's or pandas' missing value, written out.
        return np.isin(text, ["", "nan", "+nan", "-nan"])
    if np.issubdtype(labels.dtype, np.floating):
        return np.isnan(labels) | (labels == MISSING_LABEL)
    if labels.dtype == np.bool_:
        return np.zeros(labels.shape, dtype=bool)
    return labels == MISSING_LABEL


def has_label(labels: Any) -> np.ndarray:
    """``(N,)`` bool: which rows of ``labels (N,)`` have a label, True but where it is missing
    (:data:`MISSING_LABEL`, as :attr:`Dataset.labels` holds it, NaN, or an empty or "nan"
    string, as a file may)."""
    return ~_missing_labels(np.asarray(labels))


def check_min_rows(dataset: Dataset | np.ndarray | ScaledRows, n_clusters: int) -> None:
    """Raise :class:`DataError` if there are fewer than 2 rows or fewer rows than clusters."""
    n = len(dataset)
    if n < 2:
        raise DataError(f"only {n} row(s) of data; give at least 2 rows")
    if n < n_clusters:
        raise DataError(
            f"fewer rows ({n}) than clusters ({n_clusters}); lower --clusters or give more data"
        )


# ----------------------------------------------------------------------------------------------
# Memory


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, or None where that is not readable (non-Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# Measured peak of `gmvae train` (README, "Memory"): about 470 MiB of interpreter and torch,
# plus the source array and the float32 copy the model trains on, plus the network.
_BASE_MEMORY_BYTES = 0.6 * 2**30


def check_fits_in_memory(
    n_values: int,
    name: str,
    source_itemsize: float = 1,
    *,
    available: int | None = None,
    what: str = "",
) -> int | None:
    """Refuse a full copy of data in memory that does not fit in the memory available.

    Called wherever the whole data is copied into memory, before the copy: by the loaders of
    IDX, .npz and CSV files before they read (from the size a header claims, or an estimate), by
    :func:`from_array` before it standardizes a memory-mapped table, and by ``np.asarray`` of a
    :class:`ScaledRows`. Images in an .npy file are read from disk as they are used and never
    come here. So a run fails early, naming the sizes, rather than being killed half-way.

    Args:
        n_values: number of values ``N * D`` to be loaded.
        name: what to call the data in the message.
        source_itemsize: bytes a value takes as read, before the float32 copy the model trains on.
        available: bytes of memory available, measured before loading began (so a loader that
            checks again as it reads does not count its own allocations against itself); by
            default measured now.
        what: where ``n_values`` comes from, for the message (e.g. "its header says shape ...").

    Returns:
        The bytes available it compared with (None where unknown), to pass back as
        ``available`` when checking again.
    """
    if available is None:
        available = available_memory_bytes()
    need = (source_itemsize + 4) * n_values + _BASE_MEMORY_BYTES
    if available is not None and need > 0.8 * available:
        source = f" ({what})" if what else ""
        raise DataError(
            f"{name}: loading and training on {n_values:,} values{source} needs about "
            f"{need / 2**30:.1f} GiB but only {available / 2**30:.1f} GiB of memory is available "
            "for this full copy of the data; "
            "train on a subset of the rows (save x[:n] to a smaller file), save images as an "
            ".npy file (np.save), which trains without a copy, or use a machine with more memory"
        )
    return available


# ----------------------------------------------------------------------------------------------
# Array -> Dataset


def _is_image_range(x: np.ndarray, bounds: tuple[float, float], require_integers: bool) -> bool:
    """Whether ``x``, its values within ``bounds`` (see :func:`value_range`), are images: in
    ``[0, 1]``, or in 0..255 (whole numbers, if ``require_integers``)."""
    lo, hi = bounds
    if lo < 0 or hi > 255:
        return False
    if hi <= 1:
        return True
    if not require_integers or np.issubdtype(x.dtype, np.integer):
        return True
    return all(bool(np.all(chunk == np.round(chunk))) for _, chunk in _row_chunks(x))


def _square_side(d: int) -> int | None:
    side = math.isqrt(d)
    return side if side * side == d else None


def encode_labels(labels: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
    """``(N,)`` integer labels as int64; string labels as indices into their sorted unique values;
    a missing label (see :func:`check_labels`) as :data:`MISSING_LABEL`, never a class or a name.

    Returns the ``(N,)`` int64 codes and, for string labels, the names they index (else None).
    """
    missing = _missing_labels(labels)
    codes = np.full(len(labels), MISSING_LABEL, dtype=np.int64)
    if labels.dtype.kind in "US":
        names, present = np.unique(labels[~missing].astype(str), return_inverse=True)
        codes[~missing] = present.reshape(-1)
        return codes, [str(n) for n in names]
    codes[~missing] = labels[~missing].astype(np.int64)
    return codes, None


def _image_scale(bounds: tuple[float, float], name: str) -> float:
    """What images of values within ``bounds`` are divided by: 255 for grey levels, 1 for values
    in [0, 1]; DataError for anything else."""
    lo, hi = bounds
    if not (lo >= 0 and hi <= 255):
        raise DataError(
            f"{name}: images must hold values in [0, 1] or grey levels 0..255, found "
            f"{lo:g}..{hi:g}; rescale them, or pass kind='table' (--kind table) to standardize "
            "the data as a table"
        )
    return 255.0 if hi > 1 else 1.0


def from_array(
    x: Any,
    labels: Any,
    name: str,
    *,
    kind: str | None,
    scaler: Scaler | None,
    feature_names: list[str] | None = None,
    label_names: list[str] | None = None,
    allow_missing_labels: bool = False,
) -> Dataset:
    """Validate, decide image vs table (unless ``kind`` says), and preprocess into a Dataset.

    Args:
        x: ``(N, D)`` rows or ``(N, H, W)`` images, any real dtype.
        labels: ``(N,)`` integer or string labels, or None.
        name: what to call the data in messages, and the Dataset's ``name``.
        kind: ``"image"``, ``"table"``, or None to guess: 3-D arrays are images, and so are 2-D
            ones with a square number D >= 16 of features all in ``[0, 1]`` or whole numbers
            0..255; the rest are tables.
        scaler: for tables, a scaler fitted on training data; None fits one on ``x``.
        feature_names: the ``D`` column names of a table, kept on the Dataset.
        label_names: the original values of string labels that ``labels`` index into.
        allow_missing_labels: accept labels missing on some rows (NaN, :data:`MISSING_LABEL`,
            empty or "nan" strings), kept as :data:`MISSING_LABEL`: for training with the labels
            that exist; by default they are refused (:func:`check_labels`).
    """
    # A memory-mapped array stays one: images are read from it as they are used, never copied.
    mapped = isinstance(x, np.memmap)
    validate_array(x, labels, name, allow_missing_labels=allow_missing_labels)
    if not mapped:
        x = np.asarray(x)
    if x.dtype == np.bool_:
        x = x.view(np.uint8)  # no copy, and 0/1 either way
    if labels is not None:
        checked = check_labels(labels, len(x), name, allow_missing=allow_missing_labels)
        labels, names = encode_labels(checked)
        label_names = label_names or names

    bounds = None if kind == "table" else value_range(x)  # one pass, in chunks
    image_shape = (int(x.shape[1]), int(x.shape[2])) if x.ndim == 3 else None
    if kind is None:
        side = _square_side(x.shape[1]) if x.ndim == 2 else None
        if image_shape is not None:
            kind = "image"
        elif side is not None and side >= 4 and _is_image_range(x, bounds, require_integers=True):
            kind, image_shape = "image", (side, side)
        else:
            kind = "table"
    elif kind == "image" and image_shape is None:
        side = _square_side(x.shape[1])
        if side is None:
            # The model takes any H x W; only a flat row leaves the shape to be guessed. A 0/1
            # table of D columns is fine as 1 x D images, if nothing moves its columns about.
            d = x.shape[1]
            raise DataError(
                f"{name}: kind='image' (--kind image) but {d} features is not a square image, and "
                "a flat row does not say its height and width; save the data as (N, H, W) images "
                f"in a .npy or .npz (a 0/1 table as x.reshape(len(x), 1, {d}), trained with "
                "--augment-rotation 0 --augment-shift 0 as its columns are not pixels to move), "
                "or load it as a table (kind='table') and pass --likelihood gaussian"
            )
        image_shape = (side, side)

    if kind == "image":
        if scaler is not None:
            raise DataError(
                f"{name}: a scaler was given but the data is images, which are not standardized; "
                "pass kind='table' if it is a table, or drop the scaler"
            )
        scale = _image_scale(bounds, name)
        return Dataset(
            x=ScaledRows(x, scale, name=name) if mapped else _scale_images(x, scale),
            labels=labels,
            kind="image",
            image_shape=image_shape,
            name=name,
            label_names=label_names,
        )

    if mapped:  # a table is standardized in memory: the one copy of a mapped file made here
        check_fits_in_memory(x.size, name, x.dtype.itemsize, what=f"a table of shape {x.shape}")
    x = np.asarray(x.reshape(len(x), -1), dtype=np.float64)
    if np.abs(x).max() > _FLOAT32_MAX:
        raise DataError(
            f"{name}: values up to {np.abs(x).max():g} overflow float32; rescale the columns "
            "(e.g. change units) before loading"
        )
    if scaler is None:
        scaler = Scaler.fit(x)
    try:
        z = scaler.transform(x)
    except DataError as err:
        raise DataError(f"{name}: {err}") from err
    return Dataset(
        x=z,
        labels=labels,
        kind="table",
        image_shape=None,
        name=name,
        scaler=scaler,
        feature_names=feature_names,
        label_names=label_names,
    )

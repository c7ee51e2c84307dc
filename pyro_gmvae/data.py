"""Loading and validating the data a GMVAE trains on.

Everything the rest of the package sees is a :class:`Dataset`: a float32 matrix ``x`` of shape
``(N, D)`` plus optional labels (used only for evaluation). Images are scaled to ``[0, 1]`` so a
Bernoulli likelihood fits them; tables are standardized with a :class:`Scaler` that travels with
the data, so held-out data can be scaled exactly like the training data and samples mapped back
to the original units.

Sources understood by :func:`load_data`:

- ``"digits"``: scikit-learn's 8x8 digits (1797 images, bundled, no download);
- a directory of MNIST/Fashion-MNIST IDX files (gzipped or not), or one ``*-idx3-ubyte`` file;
- ``.npz`` (arrays ``images``/``labels`` or ``X``/``y``), ``.npy`` (one array, no labels);
- ``.csv`` (numeric table, optional header, optional label column).

Every problem with the input raises :class:`DataError`, whose message names the problem and the
fix, so the command line can print it as is.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

__all__ = [
    "DataError",
    "Dataset",
    "Scaler",
    "check_min_rows",
    "load_data",
    "resolve_mnist8k",
    "validate_array",
]

SUPPORTED = "pass digits, a directory of MNIST IDX files, or a .npz, .npy, .csv or IDX file"

# Errors that numpy, zipfile and gzip raise on corrupt or truncated files. Caught only around the
# calls that read bytes from disk, so bugs elsewhere still surface as themselves.
_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    UnicodeDecodeError,
    NotImplementedError,
    OverflowError,
    RuntimeError,  # zipfile: a member flagged as encrypted
    MemoryError,
)

_IDX_IMAGES_MAGIC = 0x00000803  # uint8, rank 3: (N, H, W)
_IDX_LABELS_MAGIC = 0x00000801  # uint8, rank 1: (N,)

_FLOAT32_MAX = float(np.finfo(np.float32).max)


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


@dataclass
class Dataset:
    """Preprocessed data ready for training.

    Attributes:
        x: ``(N, D)`` float32; images scaled to ``[0, 1]``, tables standardized.
        labels: ``(N,)`` int64 or None; for evaluation only, training is unsupervised.
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

    def subset(self, indices: np.ndarray | list[int]) -> Dataset:
        """Rows ``indices`` (integer indices or a boolean mask of length N) as a new Dataset.

        The scaler and names are shared, so the subset stays in the same units.
        """
        indices = np.asarray(indices)
        labels = None if self.labels is None else self.labels[indices]
        return replace(self, x=self.x[indices], labels=labels)

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


# ----------------------------------------------------------------------------------------------
# Validation


def validate_array(x: Any, labels: Any = None, name: str = "data") -> None:
    """Check an array handed in from Python before it is used for training.

    Args:
        x: ``(N, D)`` table or images, or ``(N, H, W)`` images; any numeric dtype.
        labels: optional ``(N,)`` integer (or string) labels.
        name: what to call the data in error messages.

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
    _check_finite(x, name)
    if labels is not None:
        _check_labels(labels, len(x), name)


def _as_array(x: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as err:  # ragged nested lists, unconvertible objects
        raise DataError(
            f"{name}: cannot convert to an array ({err}); pass a rectangular numeric array"
        ) from err


def _check_finite(
    x: np.ndarray,
    name: str,
    feature_names: list[str] | None = None,
    row_numbers: list[int] | None = None,
) -> None:
    """Raise if ``x`` holds NaN or inf, naming how many and the first position."""
    if not np.issubdtype(x.dtype, np.inexact):
        return  # integer and bool arrays cannot hold NaN or inf
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    n_nan = int(np.isnan(x).sum())
    n_inf = int(bad.sum()) - n_nan
    first = np.unravel_index(int(np.argmax(bad)), x.shape)
    row = f"line {row_numbers[first[0]]}" if row_numbers else f"row {first[0]}"
    if x.ndim == 2:
        col = repr(feature_names[first[1]]) if feature_names else str(first[1])
        where = f"{row}, column {col}"
    else:
        where = f"{row}, pixel {tuple(int(i) for i in first[1:])}"
    raise DataError(
        f"{name}: {n_nan} NaN and {n_inf} infinite (inf) value(s), the first at {where}; "
        "drop or impute the rows with missing or infinite values before loading"
    )


def _check_labels(labels: Any, n: int, name: str) -> np.ndarray:
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
    if labels.dtype.kind in "US":
        return labels
    if not (np.issubdtype(labels.dtype, np.number) or labels.dtype == np.bool_):
        raise DataError(f"{name}: labels have dtype {labels.dtype}; pass integer or string labels")
    if np.iscomplexobj(labels) or not np.all(np.isfinite(labels)):
        raise DataError(f"{name}: labels hold NaN, inf or complex values; pass integer labels")
    if np.issubdtype(labels.dtype, np.floating) and np.any(labels != np.round(labels)):
        raise DataError(
            f"{name}: labels are not whole numbers; pass integer class labels (they are for "
            "evaluation, not regression targets)"
        )
    return labels


def check_min_rows(dataset: Dataset | np.ndarray, n_clusters: int) -> None:
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


def _available_memory_bytes() -> int | None:
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


def _check_fits_in_memory(n_values: int, name: str, source_itemsize: int = 1) -> None:
    """Fail early, with the sizes, rather than have the loader killed half-way."""
    available = _available_memory_bytes()
    need = (source_itemsize + 4) * n_values + _BASE_MEMORY_BYTES
    if available is not None and need > 0.8 * available:
        raise DataError(
            f"{name}: loading and training on the data needs about {need / 2**30:.1f} GiB but only "
            f"{available / 2**30:.1f} GiB of memory is available; train on a subset of the rows "
            "(save x[:n] to a smaller file) or use a machine with more memory"
        )


# ----------------------------------------------------------------------------------------------
# Array -> Dataset


def _is_image_range(x: np.ndarray, require_integers: bool) -> bool:
    lo, hi = x.min(), x.max()
    if lo < 0 or hi > 255:
        return False
    if hi <= 1:
        return True
    if not require_integers or np.issubdtype(x.dtype, np.integer):
        return True
    return bool(np.all(x == np.round(x)))


def _square_side(d: int) -> int | None:
    side = math.isqrt(d)
    return side if side * side == d else None


def _encode_labels(labels: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels as int64; string labels as indices into their sorted unique values."""
    if labels.dtype.kind in "US":
        names, codes = np.unique(labels.astype(str), return_inverse=True)
        return codes.astype(np.int64).reshape(-1), [str(n) for n in names]
    return labels.astype(np.int64), None


def _to_image(x: np.ndarray, name: str) -> np.ndarray:
    """Scale to [0, 1] as float32: values in [0, 1] are kept, 0..255 grey levels divided."""
    if not _is_image_range(x, require_integers=False):
        raise DataError(
            f"{name}: images must hold values in [0, 1] or grey levels 0..255, found "
            f"{float(x.min()):g}..{float(x.max()):g}; rescale them, or pass kind='table' "
            "(--kind table) to standardize the data as a table"
        )
    scale = 255.0 if x.max() > 1 else 1.0
    out = x.astype(np.float32)
    if scale != 1.0:
        out /= np.float32(scale)
    return out


def _from_array(
    x: Any,
    labels: Any,
    name: str,
    *,
    kind: str | None,
    scaler: Scaler | None,
    feature_names: list[str] | None = None,
    label_names: list[str] | None = None,
) -> Dataset:
    """Validate, decide image vs table (unless ``kind`` says), and preprocess."""
    validate_array(x, labels, name)
    x = np.asarray(x)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    if labels is not None:
        labels, names = _encode_labels(_check_labels(labels, len(x), name))
        label_names = label_names or names

    image_shape = (int(x.shape[1]), int(x.shape[2])) if x.ndim == 3 else None
    if kind is None:
        side = _square_side(x.shape[1]) if x.ndim == 2 else None
        if image_shape is not None:
            kind = "image"
        elif side is not None and side >= 4 and _is_image_range(x, require_integers=True):
            kind, image_shape = "image", (side, side)
        else:
            kind = "table"
    elif kind == "image" and image_shape is None:
        side = _square_side(x.shape[1])
        if side is None:
            raise DataError(
                f"{name}: kind='image' but {x.shape[1]} features is not a square image; "
                "pass (N, H, W) images or use kind='table'"
            )
        image_shape = (side, side)

    x = x.reshape(len(x), -1)
    if kind == "image":
        if scaler is not None:
            raise DataError(
                f"{name}: a scaler was given but the data is images, which are not standardized; "
                "pass kind='table' if it is a table, or drop the scaler"
            )
        return Dataset(
            x=_to_image(x, name),
            labels=labels,
            kind="image",
            image_shape=image_shape,
            name=name,
            label_names=label_names,
        )

    x = x.astype(np.float64)
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


# ----------------------------------------------------------------------------------------------
# File formats


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when they start with the gzip magic bytes."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except _READ_ERRORS as err:
        raise DataError(
            f"{path}: cannot read ({type(err).__name__}: {err}); re-download or re-create the file"
        ) from err
    return raw


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (MNIST format): uint8 data of rank 3 (images) or 1 (labels)."""
    raw = _read_bytes(path)
    fix = "re-download the file (it may be truncated or not an MNIST IDX file)"
    if len(raw) < 4:
        raise DataError(f"{path}: only {len(raw)} bytes, too short for an IDX header; {fix}")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic not in (_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC):
        raise DataError(
            f"{path}: bad magic number 0x{magic:08x} (expected 0x{_IDX_IMAGES_MAGIC:08x} for "
            f"images or 0x{_IDX_LABELS_MAGIC:08x} for labels); {fix}"
        )
    rank = magic & 0xFF
    header = 4 + 4 * rank
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes); {fix}")
    dims = struct.unpack(f">{rank}I", raw[4:header])
    size = math.prod(dims)
    if len(raw) - header != size:
        raise DataError(
            f"{path}: truncated or corrupt IDX file: the header says shape {dims} "
            f"({size} bytes of data) but the file holds {len(raw) - header}; {fix}"
        )
    if rank == 3:
        _check_fits_in_memory(size, str(path))
    return np.frombuffer(raw, dtype=np.uint8, count=size, offset=header).reshape(dims)


def _idx_candidates(directory: Path, prefix: str, what: str, rank: int) -> Path | None:
    for sep in ("-", "."):  # "train-images-idx3-ubyte" and the "train-images.idx3-ubyte" variant
        for suffix in ("", ".gz"):
            path = directory / f"{prefix}-{what}{sep}idx{rank}-ubyte{suffix}"
            if path.is_file():
                return path
    return None


def _sibling_labels(images: Path) -> Path | None:
    if "images" not in images.name:
        return None
    base = images.name.removesuffix(".gz").replace("images", "labels").replace("idx3", "idx1")
    for name in (base, base + ".gz"):
        if (images.parent / name).is_file():
            return images.parent / name
    return None


def _load_idx_pair(images_path: Path, labels_path: Path | None, name: str) -> tuple[Any, Any]:
    images = _read_idx(images_path)
    if images.ndim != 3:
        raise DataError(
            f"{images_path}: this IDX file holds labels, not images; pass the "
            "*-images-idx3-ubyte file or the directory holding both"
        )
    labels = None
    if labels_path is not None:
        labels = _read_idx(labels_path)
        if labels.ndim != 1:
            raise DataError(
                f"{labels_path}: expected an IDX label file (rank 1), found rank {labels.ndim}; "
                "check the file names of the images and labels"
            )
        if len(labels) != len(images):
            raise DataError(
                f"{name}: {len(labels)} labels in {labels_path.name} for {len(images)} images "
                f"in {images_path.name}; use the labels file that belongs to the images"
            )
    return images, labels


def _load_idx_dir(directory: Path) -> tuple[Any, Any]:
    for prefix in ("train", "t10k"):
        images = _idx_candidates(directory, prefix, "images", 3)
        if images is not None:
            labels = _idx_candidates(directory, prefix, "labels", 1)
            return _load_idx_pair(images, labels, str(directory))
    found = sorted(p.name for p in directory.iterdir())
    shown = ", ".join(found[:10]) + (", ..." if len(found) > 10 else "") if found else "nothing"
    raise DataError(
        f"{directory}: no MNIST IDX files (looked for train-images-idx3-ubyte[.gz] and "
        f"t10k-images-idx3-ubyte[.gz]; found {shown}); {SUPPORTED}"
    )


def _check_npz_member(path: Path, zf: zipfile.ZipFile, member: str) -> None:
    """Check an .npy inside a zip from its header alone: plausible size, fits in memory.

    numpy allocates the whole array before reading a zip member, so a corrupt header that
    claims a huge shape must be caught here, not by the load.
    """
    try:
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return  # rare header versions: let the load speak for itself
        stored = zf.getinfo(member).file_size
    except _READ_ERRORS:
        return  # the real load reports the corruption with a proper message
    n_values = math.prod(shape)
    if n_values * dtype.itemsize > stored:
        raise DataError(
            f"{path}: corrupt array {member!r}: its header says shape {shape} but only "
            f"{stored} bytes are stored; re-create the file with np.savez"
        )
    _check_fits_in_memory(n_values, str(path), dtype.itemsize)


def _corrupt(path: Path, err: BaseException) -> DataError:
    return DataError(
        f"{path}: cannot read the file ({type(err).__name__}: {err}); it is corrupt, truncated "
        "or not a NumPy file (pickled object arrays are refused); re-create it with "
        "np.savez / np.save from numeric arrays"
    )


def _load_npz(path: Path) -> tuple[Any, Any]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if isinstance(npz, np.ndarray):  # an .npy saved under an .npz name
                return np.array(npz), None
            keys = list(npz.files)
            data_key = next((k for k in ("images", "X", "x") if k in keys), None)
            label_key = next((k for k in ("labels", "y") if k in keys), None)
            if data_key is None:
                raise DataError(
                    f"{path}: no data array found (keys: {', '.join(keys) or 'none'}); save the "
                    "data as 'images' (with 'labels') or 'X' (with 'y'), e.g. "
                    "np.savez(path, images=x, labels=y)"
                )
            for key in (data_key, label_key):
                if key is not None and key + ".npy" in npz.zip.namelist():
                    _check_npz_member(path, npz.zip, key + ".npy")
            x = np.asarray(npz[data_key])
            labels = None if label_key is None else np.asarray(npz[label_key])
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise _corrupt(path, err) from err
    return x, labels


def _load_npy(path: Path) -> np.ndarray:
    try:
        # Memory-mapping reads only the header, so the size check happens before any copy.
        header = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(header, np.ndarray):
            raise DataError(f"{path}: holds several arrays (an .npz archive); rename it to .npz")
        _check_fits_in_memory(int(header.size), str(path), header.dtype.itemsize)
        del header
        return np.load(path, allow_pickle=False)
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise _corrupt(path, err) from err


def _parse_float_column(
    cells: list[str], column: str, lines: list[int], path: Path, is_label_candidate: bool
) -> np.ndarray:
    for cell, line in zip(cells, lines, strict=True):
        if not cell.strip():
            raise DataError(
                f"{path}: empty cell in column {column!r} at line {line}; fill in or drop rows "
                "with missing values before loading"
            )
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        pass  # find the offending cell for the message
    for cell, line in zip(cells, lines, strict=True):
        try:
            float(cell)
        except ValueError:
            hint = (
                f"; remove the column or pass --label-column {column} if it holds labels"
                if is_label_candidate
                else "; remove the column"
            )
            raise DataError(
                f"{path}: column {column!r} is not numeric (line {line}: {cell.strip()!r}){hint}"
            ) from None
    # numpy's parser is stricter than float() on some spellings (e.g. "1_000").
    return np.array([float(c) for c in cells], dtype=np.float64)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _load_csv(
    path: Path, label_column: str | None
) -> tuple[np.ndarray, np.ndarray | None, list[str], list[str] | None, list[int]]:
    """Returns features (N, D) float64, labels, feature names, label names, line numbers."""
    try:
        # utf-8-sig drops the byte-order mark that spreadsheet programs write.
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows, lines = [], []
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank lines, e.g. a trailing newline
                rows.append(row)
                lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(
            f"{path}: cannot read as CSV ({type(err).__name__}: {err}); save it as UTF-8 "
            "comma-separated text"
        ) from err
    if not rows:
        raise DataError(f"{path}: the file is empty; give a header row and at least 2 data rows")

    if all(_is_number(c) for c in rows[0]):
        columns = [f"x{j}" for j in range(len(rows[0]))]
    else:
        columns = [c.strip() for c in rows[0]]
        rows, lines = rows[1:], lines[1:]
        duplicates = sorted({c for c in columns if columns.count(c) > 1})
        if duplicates:
            raise DataError(
                f"{path}: duplicate column name(s) {duplicates} in the header; rename them"
            )
    if not rows:
        raise DataError(f"{path}: data has 0 rows (only a header); give at least 2 data rows")
    for row, line in zip(rows, lines, strict=True):
        if len(row) != len(columns):
            raise DataError(
                f"{path}: line {line} has {len(row)} fields but the header has {len(columns)}; "
                "give every row the same number of comma-separated fields"
            )

    if label_column is not None and label_column not in columns:
        raise DataError(
            f"{path}: label column {label_column!r} is not in the header (columns: "
            f"{', '.join(columns)}); pass one of these to --label-column"
        )
    cells_by_column = list(zip(*rows, strict=True))
    feature_names = [c for c in columns if c != label_column]
    if not feature_names:
        raise DataError(
            f"{path}: data has 0 features (only the label column {label_column!r}); "
            "give at least one numeric column"
        )
    features = [
        _parse_float_column(
            list(cells_by_column[j]), c, lines, path, is_label_candidate=label_column is None
        )
        for j, c in enumerate(columns)
        if c != label_column
    ]
    x = np.stack(features, axis=1)

    labels, label_names = None, None
    if label_column is not None:
        cells = [c.strip() for c in cells_by_column[columns.index(label_column)]]
        for cell, line in zip(cells, lines, strict=True):
            if not cell:
                raise DataError(
                    f"{path}: empty label in column {label_column!r} at line {line}; "
                    "fill it in or drop the row"
                )
        numbers = [float(c) if _is_number(c) else None for c in cells]
        if all(v is not None and abs(v) < 2**53 and v == round(v) for v in numbers):
            labels = np.array([int(v) for v in numbers], dtype=np.int64)
        else:
            labels, label_names = _encode_labels(np.array(cells, dtype=str))
    return x, labels, feature_names, label_names, lines


# ----------------------------------------------------------------------------------------------
# Entry points


def load_data(
    spec: str | os.PathLike[str],
    *,
    label_column: str | None = None,
    scaler: Scaler | None = None,
    kind: str | None = None,
) -> Dataset:
    """Load, validate and preprocess training data.

    Args:
        spec: ``"digits"``, a directory of MNIST IDX files, or a ``.npz``, ``.npy``, ``.csv``
            or IDX (``*-idx3-ubyte[.gz]``) file.
        label_column: for CSV, the column holding labels (numbers or strings); not a feature.
        scaler: for tables, a scaler fitted on the training data, so held-out data is
            standardized the same way; by default one is fitted on this data.
        kind: ``"image"`` or ``"table"`` to override the guess (3-D arrays, digits and IDX
            are images; 2-D arrays with a square number D >= 16 of features that are all in
            ``[0, 1]`` or whole numbers in 0..255 are images; the rest, and CSV, are tables).

    Returns:
        A :class:`Dataset` with ``x`` of shape ``(N, D)`` float32.

    Raises:
        DataError: for any problem with the input; the message says how to fix it.
    """
    if kind not in (None, "image", "table"):
        raise DataError(f"kind must be 'image' or 'table' (or None to guess), got {kind!r}")
    spec = os.fspath(spec)
    if spec == "digits":
        _no_label_column(label_column, spec)
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        digits = load_digits()
        # Grey levels 0..16; dividing here (not by 255) keeps them in the full [0, 1] range.
        images = (digits.images / 16.0).astype(np.float32)
        return _from_array(images, digits.target, "digits", kind=kind, scaler=scaler)

    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"no such file or directory: {spec}; {SUPPORTED}")
    if path.is_dir():
        _no_label_column(label_column, spec)
        x, labels = _load_idx_dir(path)
        return _from_array(x, labels, spec, kind=kind, scaler=scaler)

    suffix = path.suffix.lower()
    if suffix == ".npz":
        _no_label_column(label_column, spec)
        x, labels = _load_npz(path)
        return _from_array(x, labels, spec, kind=kind, scaler=scaler)
    if suffix == ".npy":
        _no_label_column(label_column, spec)
        return _from_array(_load_npy(path), None, spec, kind=kind, scaler=scaler)
    if suffix == ".csv":
        x, labels, feature_names, label_names, lines = _load_csv(path, label_column)
        _check_finite(x, spec, feature_names, lines)
        return _from_array(
            x,
            labels,
            spec,
            kind=kind or "table",
            scaler=scaler,
            feature_names=feature_names,
            label_names=label_names,
        )
    base = path.name.lower().removesuffix(".gz")
    if base.endswith("ubyte") or "idx" in base:
        _no_label_column(label_column, spec)
        x, labels = _load_idx_pair(path, _sibling_labels(path), spec)
        return _from_array(x, labels, spec, kind=kind, scaler=scaler)
    raise DataError(f"{spec}: unknown file type {path.suffix or '(no extension)'!r}; {SUPPORTED}")


def _no_label_column(label_column: str | None, spec: str) -> None:
    if label_column is not None:
        raise DataError(
            f"{spec}: label_column (--label-column) applies only to CSV files; drop it "
            "(labels of .npz files are read from 'labels' or 'y', of IDX files from the labels file)"
        )


def resolve_mnist8k() -> Path | None:
    """Path of the shared 8,000-digit MNIST file (``images`` (8000, 784) uint8, ``labels``).

    ``$PYRO_GMVAE_MNIST8K`` if set, else ``../shared/data/mnist8k.npz`` from the repository
    root; None when the file does not exist.
    """
    env = os.environ.get("PYRO_GMVAE_MNIST8K")
    path = (
        Path(env).expanduser()
        if env
        else Path(__file__).resolve().parents[2] / "shared/data/mnist8k.npz"
    )
    return path if path.is_file() else None

"""Reading the files a GMVAE trains on, and :func:`load_data`, the one entry point.

Sources understood by :func:`load_data`:

- ``"digits"``: scikit-learn's 8x8 digits (1797 images, bundled, no download);
- a directory of MNIST/Fashion-MNIST IDX files (gzipped or not), or one ``*-idx3-ubyte`` file;
- ``.npz`` (arrays ``images``/``labels`` or ``X``/``y``), ``.npy`` (one array, no labels;
  memory-mapped, so images larger than memory are read from disk as they are used);
- ``.csv`` (numeric table, optional header, optional label column).

Each format is read into arrays here; what they become (a :class:`~pyro_gmvae.dataset.Dataset`,
images or a standardized table) and every check that does not depend on the format live in
:mod:`pyro_gmvae.dataset`. Nothing here unpickles: object arrays are refused.

Every problem with the input raises :class:`~pyro_gmvae.errors.DataError`, whose message names
the problem and the fix, so the command line can print it as is.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import stat
import struct
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .dataset import (
    Dataset,
    Scaler,
    check_finite,
    check_fits_in_memory,
    check_labels,
    encode_labels,
    from_array,
    has_label,
)
from .errors import DataError

__all__ = ["load_data"]

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


# ----------------------------------------------------------------------------------------------
# File formats


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (MNIST format), gzipped or not: uint8 data of rank 3 (images) or 1 (labels).

    The size the header claims is checked against what the file can hold and against the memory
    available before anything of that size is allocated or decompressed: a corrupt header, or a
    small gzip file claiming a huge shape, is refused at once.
    """
    try:
        with open(path, "rb") as file:
            gzipped = file.read(2) == b"\x1f\x8b"
            file.seek(0)
            if not gzipped:
                return _parse_idx(path, file, os.fstat(file.fileno()).st_size, gzipped=False)
            with gzip.GzipFile(fileobj=file) as unzipped:
                return _parse_idx(path, unzipped, os.fstat(file.fileno()).st_size, gzipped=True)
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise DataError(
            f"{path}: cannot read ({type(err).__name__}: {err}); re-download or re-create the file"
        ) from err


# Deflate's densest code is a 258-byte match in 2 bits, so no gzip file decompresses to more
# than 1032 times its size (zlib's technical notes).
_GZIP_MAX_RATIO = 1032


def _parse_idx(path: Path, f: BinaryIO, file_size: int, gzipped: bool) -> np.ndarray:
    """Read the IDX header and data from ``f``, ``file_size`` bytes on disk (compressed or not)."""
    fix = "re-download the file (it may be truncated or not an MNIST IDX file)"
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: only {len(head)} bytes, too short for an IDX header; {fix}")
    (magic,) = struct.unpack(">I", head)
    if magic not in (_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC):
        raise DataError(
            f"{path}: bad magic number 0x{magic:08x} (expected 0x{_IDX_IMAGES_MAGIC:08x} for "
            f"images or 0x{_IDX_LABELS_MAGIC:08x} for labels); {fix}"
        )
    rank = magic & 0xFF
    header = 4 + 4 * rank
    raw_dims = f.read(4 * rank)
    if len(raw_dims) < 4 * rank:
        raise DataError(
            f"{path}: truncated IDX header ({4 + len(raw_dims)} of {header} bytes); {fix}"
        )
    dims = struct.unpack(f">{rank}I", raw_dims)
    size = math.prod(dims)
    claim = f"the header says shape {dims} ({size} bytes of data)"
    if not gzipped and file_size - header != size:
        raise DataError(
            f"{path}: truncated or corrupt IDX file: {claim} but the file holds "
            f"{file_size - header}; {fix}"
        )
    if gzipped and size > _GZIP_MAX_RATIO * file_size:
        raise DataError(
            f"{path}: truncated or corrupt IDX file: {claim} but a gzip file of {file_size} bytes "
            f"cannot decompress to more than {_GZIP_MAX_RATIO * file_size}; {fix}"
        )
    check_fits_in_memory(size, str(path), what=f"its header says shape {dims}")
    data = np.empty(size, dtype=np.uint8)
    filled = _read_into(f, data)
    if filled < size or f.read(1):
        held = filled if filled < size else f"more than {size}"
        raise DataError(
            f"{path}: truncated or corrupt IDX file: {claim} but the file holds {held}; {fix}"
        )
    return data.reshape(dims)


def _read_into(f: BinaryIO, out: np.ndarray) -> int:
    """Fill ``out`` (uint8) from ``f`` without an intermediate copy; returns the bytes read."""
    view = memoryview(out).cast("B")
    filled = 0
    while filled < len(view):
        n = f.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


def _refuse_special_file(path: Path, allow_directory: bool = False) -> None:
    """Refuse a FIFO, socket or device before anything opens it.

    Opening a FIFO that has no writer blocks forever, and a device may never end; ``stat`` does
    neither (it follows symbolic links, so a link to such a file is refused too).
    """
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise DataError(f"{path}: cannot read ({type(err).__name__}: {err}); {SUPPORTED}") from err
    if stat.S_ISREG(mode) or (allow_directory and stat.S_ISDIR(mode)):
        return
    expected = "a regular file or a directory" if allow_directory else "a regular file"
    if stat.S_ISDIR(mode):  # where a file of the directory of IDX files was expected
        raise DataError(f"{path}: is a directory, not {expected}; {SUPPORTED}")
    kinds = [
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    kind = next((k for test, k in kinds if test(mode)), "not a file")
    raise DataError(
        f"{path}: is {kind}, not {expected}, and reading it could block or never end; save the "
        f"data to a file first; {SUPPORTED}"
    )


def _existing_file(path: Path) -> Path | None:
    """``path`` if it exists (and is a regular file, else DataError), or None."""
    if not (path.exists() or path.is_symlink()):
        return None
    _refuse_special_file(path)
    return path


def _idx_candidates(directory: Path, prefix: str, what: str, rank: int) -> Path | None:
    for sep in ("-", "."):  # "train-images-idx3-ubyte" and the "train-images.idx3-ubyte" variant
        for suffix in ("", ".gz"):
            path = _existing_file(directory / f"{prefix}-{what}{sep}idx{rank}-ubyte{suffix}")
            if path is not None:
                return path
    return None


def _sibling_labels(images: Path) -> Path | None:
    if "images" not in images.name:
        return None
    base = images.name.removesuffix(".gz").replace("images", "labels").replace("idx3", "idx1")
    for name in (base, base + ".gz"):
        path = _existing_file(images.parent / name)
        if path is not None:
            return path
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


def _read_npy_header(f: BinaryIO) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype from the header of an .npy stream, read from its start; None for the
    rare header versions that numpy has no public reader for."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        return None
    return shape, dtype


def _refuse_objects(path: Path, array: str, dtype: np.dtype) -> None:
    """Object arrays are stored as pickles; say so rather than let the load call them corrupt."""
    if dtype.hasobject:
        raise DataError(
            f"{path}: {array} holds Python objects (dtype {dtype}); object arrays are refused "
            "because loading them would need pickle, which can run code from the file; save "
            "labels as numbers or fixed-width strings (np.asarray(labels, dtype=str); a missing "
            "label as NaN or '') and the data as numbers"
        )


def _check_npz_member(path: Path, zf: zipfile.ZipFile, member: str) -> None:
    """Check an .npy inside a zip from its header alone: no objects, plausible size, fits in memory.

    numpy allocates the whole array before reading a zip member, so a corrupt header that
    claims a huge shape must be caught here, not by the load.
    """
    try:
        with zf.open(member) as f:
            header = _read_npy_header(f)
        stored = zf.getinfo(member).file_size
    except _READ_ERRORS:
        return  # the real load reports the corruption with a proper message
    if header is None:
        return  # rare header versions: let the load speak for itself
    shape, dtype = header
    _refuse_objects(path, f"array {member.removesuffix('.npy')!r}", dtype)
    n_values = math.prod(shape)
    if n_values * dtype.itemsize > stored:
        raise DataError(
            f"{path}: corrupt array {member!r}: its header says shape {shape} but only "
            f"{stored} bytes are stored; re-create the file with np.savez"
        )
    check_fits_in_memory(n_values, str(path), dtype.itemsize)


def _corrupt(path: Path, err: BaseException) -> DataError:
    return DataError(
        f"{path}: cannot read the file ({type(err).__name__}: {err}); it is corrupt, truncated "
        "or not a NumPy file (pickled object arrays are refused); re-create it with "
        "np.savez / np.save from numeric arrays"
    )


def _load_npz(path: Path) -> tuple[Any, Any]:
    try:
        with open(path, "rb") as f:
            if f.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX:
                return _load_npy(path), None  # an .npy saved under an .npz name
        with np.load(path, allow_pickle=False) as npz:
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


def _load_npy(path: Path) -> np.memmap:
    """The array of an .npy file, memory-mapped: nothing is read but the header until it is
    used, so images larger than memory train (:class:`~pyro_gmvae.dataset.ScaledRows`); a table
    is copied, after the memory check, by :func:`~pyro_gmvae.dataset.from_array`."""
    try:
        with open(path, "rb") as f:
            is_npy = f.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX
            f.seek(0)
            npy_header = _read_npy_header(f) if is_npy else None  # else np.load says what it is
            data_offset, file_size = f.tell(), os.fstat(f.fileno()).st_size
        if npy_header is not None:
            shape, dtype = npy_header
            _refuse_objects(path, "the array", dtype)
            need = math.prod(shape) * dtype.itemsize
            if file_size - data_offset < need:
                raise DataError(
                    f"{path}: truncated .npy file: its header says shape {shape} of {dtype} "
                    f"({need:,} bytes of data) but the file holds {file_size - data_offset:,} "
                    "after its header; copy the file again, or re-create it with np.save"
                )
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(array, np.ndarray):
            raise DataError(f"{path}: holds several arrays (an .npz archive); rename it to .npz")
        return array
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


def _some(names: list[str], limit: int = 10) -> str:
    """The first ``limit`` names quoted, then how many there are: a message stays one line."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


# What a CSV value costs while it is parsed, besides the float32 copy that check_fits_in_memory
# adds: the cell's Python string (49 bytes plus its characters), its places in the row's list and
# a column's tuple, the float64 column, matrix and copies. tracemalloc measured the whole load at
# 92-106 bytes a value for cells of 4-18 characters (38 for one-character cells, whose strings
# Python shares); this is that, less the characters and the float32 copy.
_CSV_VALUE_BYTES = 85
_CSV_SAMPLE_BYTES = 2**16


def _estimate_csv_values(path: Path) -> tuple[int, float, str]:
    """Values in a CSV file, estimated from its size and first 64 KiB, before it is parsed.

    Returns the estimate, the bytes a value will cost while parsed (see ``_CSV_VALUE_BYTES``),
    and a description of the estimate for messages.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_CSV_SAMPLE_BYTES)
    if not head:
        return 0, _CSV_VALUE_BYTES, "an empty file"
    # Every value ends in a comma or a line break (the file's last one maybe in neither).
    ends = head.count(b",") + head.count(b"\n") + (not head.endswith(b"\n"))
    chars = max(len(head) - ends, ends) / ends  # characters a cell, at least one
    n_values = math.ceil(size * ends / len(head))
    what = f"estimated from the file's {size:,} bytes, {chars:.0f} characters a value"
    return n_values, _CSV_VALUE_BYTES + chars, what


def _load_csv(
    path: Path, label_column: str | None, allow_missing_labels: bool
) -> tuple[np.ndarray, np.ndarray | None, list[str], list[str] | None, list[int]]:
    """Returns features (N, D) float64, labels (int64 codes, :data:`MISSING_LABEL` where a cell
    is missing), feature names, label names, line numbers."""
    try:
        n_values, value_bytes, what = _estimate_csv_values(path)
        # The memory measured now, before parsing, is what later checks compare with: they must
        # not count the parse's own allocations against it.
        available = check_fits_in_memory(n_values, str(path), value_bytes, what=what)
        # utf-8-sig drops the byte-order mark that spreadsheet programs write.
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows, lines = [], []
            n_read, next_check = 0, n_values
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank lines, e.g. a trailing newline
                rows.append(row)
                lines.append(reader.line_num)
                n_read += len(row)
                if n_read > next_check:  # the first lines understated the values: check again
                    check_fits_in_memory(
                        n_read, str(path), value_bytes, available=available, what="read so far"
                    )
                    next_check = n_read + n_read // 4
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
        # A Counter, not columns.count per column: that was quadratic, and a header of a
        # million columns never finished.
        duplicates = sorted(c for c, k in Counter(columns).items() if k > 1)
        if duplicates:
            raise DataError(
                f"{path}: duplicate column name(s) {_some(duplicates)} in the header; rename them"
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
            f"{_some(columns)}); pass one of these to --label-column"
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
        cells = np.array([c.strip() for c in cells_by_column[columns.index(label_column)]], str)
        # Numbers are classes only if every label there is a whole number: the missing cells
        # (empty or "nan") say nothing either way.
        present = has_label(cells)
        numbers = [float(c) if _is_number(c) else None for c in cells[present]]
        if all(v is not None and abs(v) < 2**53 and v == round(v) for v in numbers):
            labels = np.full(len(cells), np.nan)
            labels[present] = numbers
        else:
            labels = cells
        checked = check_labels(
            labels, len(cells), str(path), row_numbers=lines, allow_missing=allow_missing_labels
        )
        labels, label_names = encode_labels(checked)
    return x, labels, feature_names, label_names, lines


# ----------------------------------------------------------------------------------------------
# Entry points


def load_data(
    spec: str | os.PathLike[str],
    *,
    label_column: str | None = None,
    scaler: Scaler | None = None,
    kind: str | None = None,
    allow_missing_labels: bool = False,
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
        allow_missing_labels: accept labels missing on some rows (an empty or "nan" CSV cell,
            NaN, -1 or an empty string in an .npz), kept as
            :data:`~pyro_gmvae.dataset.MISSING_LABEL`: for training with the labels that exist
            (``--labels-known``); by default they are refused.

    Returns:
        A :class:`Dataset` with ``x`` of shape ``(N, D)`` float32: for images in an ``.npy``
        file a :class:`~pyro_gmvae.dataset.ScaledRows`, read from disk as it is used.

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
        return from_array(images, digits.target, "digits", kind=kind, scaler=scaler)

    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"no such file or directory: {spec}; {SUPPORTED}")
    _refuse_special_file(path, allow_directory=True)
    if path.is_dir():
        _no_label_column(label_column, spec)
        x, labels = _load_idx_dir(path)
        return from_array(
            x, labels, spec, kind=kind, scaler=scaler, allow_missing_labels=allow_missing_labels
        )

    suffix = path.suffix.lower()
    if suffix == ".npz":
        _no_label_column(label_column, spec)
        x, labels = _load_npz(path)
        return from_array(
            x, labels, spec, kind=kind, scaler=scaler, allow_missing_labels=allow_missing_labels
        )
    if suffix == ".npy":
        _no_label_column(label_column, spec)
        return from_array(_load_npy(path), None, spec, kind=kind, scaler=scaler)
    if suffix == ".csv":
        x, labels, feature_names, label_names, lines = _load_csv(
            path, label_column, allow_missing_labels
        )
        check_finite(x, spec, feature_names, lines)
        return from_array(
            x,
            labels,
            spec,
            kind=kind or "table",
            scaler=scaler,
            feature_names=feature_names,
            label_names=label_names,
            allow_missing_labels=allow_missing_labels,
        )
    base = path.name.lower().removesuffix(".gz")
    if base.endswith("ubyte") or "idx" in base:
        _no_label_column(label_column, spec)
        x, labels = _load_idx_pair(path, _sibling_labels(path), spec)
        return from_array(
            x, labels, spec, kind=kind, scaler=scaler, allow_missing_labels=allow_missing_labels
        )
    raise DataError(f"{spec}: unknown file type {path.suffix or '(no extension)'!r}; {SUPPORTED}")


def _no_label_column(label_column: str | None, spec: str) -> None:
    if label_column is not None:
        raise DataError(
            f"{spec}: label_column (--label-column) applies only to CSV files; drop it "
            "(labels of .npz files are read from 'labels' or 'y', of IDX files from the labels file)"
        )

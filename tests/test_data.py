"""Tests for pyro_gmvae.data: each loader on tiny files, every documented error, and properties.

The format-independent checks and types (Dataset, Scaler, validate_array) are in test_dataset.py.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import signal
import struct
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyro_gmvae import dataset
from pyro_gmvae.data import load_data
from pyro_gmvae.dataset import MISSING_LABEL, Dataset, Scaler, validate_array
from pyro_gmvae.errors import DataError

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------
# Helpers that write tiny files


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in IDX format (magic 0x0000080R, big-endian dims)."""
    header = struct.pack(">I", 0x00000800 | array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(6, 5, 7), dtype=np.uint8)


@pytest.fixture
def labels() -> np.ndarray:
    return np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# Built-in and shared data


def test_digits_are_8x8_images_in_unit_range_with_ten_classes():
    ds = load_data("digits")
    assert ds.x.shape == (1797, 64) and ds.x.dtype == np.float32
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert ds.kind == "image" and ds.image_shape == (8, 8) and ds.scaler is None
    assert ds.labels.dtype == np.int64 and set(ds.labels.tolist()) == set(range(10))
    assert len(ds) == 1797 and ds.n_features == 64 and ds.name == "digits"


def test_digits_as_table_are_standardized():
    ds = load_data("digits", kind="table")
    assert ds.kind == "table" and ds.image_shape is None and ds.scaler is not None
    assert np.allclose(ds.x.mean(axis=0), 0, atol=1e-5)
    # Columns that are constant (always-blank corner pixels) map to 0 rather than NaN.
    assert np.all(np.isfinite(ds.x))


def test_mnist8k_loads_as_28x28_images(mnist8k_path):
    ds = load_data(mnist8k_path)
    assert ds.x.shape == (8000, 784) and ds.x.dtype == np.float32
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert ds.kind == "image" and ds.image_shape == (28, 28)
    assert np.bincount(ds.labels).tolist() == [806, 895, 802, 833, 778, 710, 800, 850, 743, 783]


# ----------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", ["", ".gz"])
@pytest.mark.parametrize("sep", ["-", "."])
def test_idx_directory_loads_images_and_labels(tmp_path, images, labels, gz, sep):
    write_idx(tmp_path / f"train-images{sep}idx3-ubyte{gz}", images)
    write_idx(tmp_path / f"train-labels{sep}idx1-ubyte{gz}", labels)
    ds = load_data(str(tmp_path))
    assert ds.kind == "image" and ds.image_shape == (5, 7)
    np.testing.assert_allclose(ds.x, images.reshape(6, -1) / 255.0, rtol=1e-6)
    assert ds.labels.tolist() == labels.tolist() and ds.labels.dtype == np.int64


def test_idx_directory_prefers_train_and_falls_back_to_t10k(tmp_path, images, labels):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[:2])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:2])
    assert len(load_data(tmp_path)) == 2
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    assert len(load_data(tmp_path)) == 6


def test_bare_idx_file_finds_its_labels_or_goes_without(tmp_path, images, labels):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", images)
    assert load_data(path).labels is None
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    assert load_data(path).labels.tolist() == labels.tolist()


def test_idx_label_file_alone_is_refused(tmp_path, labels):
    path = write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match="holds labels, not images.*idx3"):
        load_data(path)


def test_idx_bad_magic(tmp_path, images):
    raw = bytearray(idx_bytes(images))
    raw[2] = 0x0D  # float32 code: not MNIST
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="bad magic number 0x00000d03.*re-download"):
        load_data(tmp_path)


@pytest.mark.parametrize("cut", [1, 100])
def test_idx_truncated_data(tmp_path, images, cut):
    raw = idx_bytes(images)[:-cut]
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match=r"truncated or corrupt IDX.*\(6, 5, 7\).*re-download"):
        load_data(tmp_path)


@pytest.mark.parametrize("gz", ["", ".gz"])
def test_idx_with_more_data_than_its_header_says(tmp_path, images, gz):
    raw = idx_bytes(images) + b"extra"
    path = tmp_path / f"train-images-idx3-ubyte{gz}"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    held = "215" if not gz else "more than 210"
    with pytest.raises(
        DataError, match=rf"\(6, 5, 7\) \(210 bytes of data\) but the file holds {held}"
    ):
        load_data(path)


def test_idx_truncated_header_and_corrupt_gzip(tmp_path, images):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(images)[:9])
    with pytest.raises(DataError, match="truncated IDX header"):
        load_data(path)
    path.write_bytes(gzip.compress(idx_bytes(images))[:30])
    with pytest.raises(DataError, match="cannot read.*re-download"):
        load_data(path)


def idx_header(shape: tuple[int, ...]) -> bytes:
    return struct.pack(f">I{len(shape)}I", 0x800 | len(shape), *shape)


def peak_bytes_of(call) -> tuple[int, str]:
    """Peak of the memory Python and numpy allocate while ``call()`` runs, and the message of
    the DataError it must raise."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            call()
        return tracemalloc.get_traced_memory()[1], str(info.value)
    finally:
        tracemalloc.stop()


def test_gz_idx_claiming_more_than_gzip_can_hold_is_refused_before_decompressing(tmp_path):
    """Issue 15 (#19): 20 MiB of zeros gzip to about 20 KB; the header claims 2**31 images."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header((2**31, 28, 28)) + bytes(20 * 2**20)))
    peak, message = peak_bytes_of(lambda: load_data(path))
    assert re.search(r"truncated or corrupt IDX.*\(2147483648, 28, 28\).*gzip file of", message)
    assert peak < 2**20


def test_gz_idx_larger_than_memory_is_refused_before_decompressing(tmp_path, monkeypatch):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header((20_000, 28, 28)) + bytes(20_000 * 28 * 28)))
    monkeypatch.setattr(dataset, "available_memory_bytes", lambda: 2**20)
    peak, message = peak_bytes_of(lambda: load_data(path))
    assert re.search(
        r"15,680,000 values \(its header says shape \(20000, 28, 28\)\) needs", message
    )
    assert peak < 2**20


def test_raw_idx_claiming_more_than_the_file_holds_is_refused_before_reading(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    with open(path, "wb") as f:
        f.write(idx_header((2**31, 28, 28)))
        f.truncate(16 + 20 * 2**20)  # 20 MiB of (sparse) zeros
    peak, message = peak_bytes_of(lambda: load_data(path))
    assert "truncated or corrupt IDX file: the header says shape (2147483648, 28, 28)" in message
    assert f"but the file holds {20 * 2**20}" in message
    assert peak < 2**20


def test_raw_idx_larger_than_memory_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "train-images-idx3-ubyte"
    with open(path, "wb") as f:
        f.write(idx_header((20_000, 28, 28)))
        f.truncate(16 + 20_000 * 28 * 28)
    monkeypatch.setattr(dataset, "available_memory_bytes", lambda: 2**20)
    peak, message = peak_bytes_of(lambda: load_data(path))
    assert "needs about" in message and "subset of the rows" in message
    assert peak < 2**20


def test_idx_labels_count_must_match_images(tmp_path, images, labels):
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:4])
    with pytest.raises(DataError, match="4 labels .* for 6 images"):
        load_data(tmp_path)


def test_directory_without_idx_files_lists_what_it_found(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no MNIST IDX files.*found readme.txt.*pass digits"):
        load_data(tmp_path)


# ----------------------------------------------------------------------------------------------
# npz / npy


def test_npz_images_and_labels_keys(tmp_path, images, labels):
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    ds = load_data(tmp_path / "d.npz")
    assert ds.kind == "image" and ds.image_shape == (5, 7)
    np.testing.assert_allclose(ds.x, images.reshape(6, -1) / 255.0, rtol=1e-6)
    assert ds.labels.tolist() == labels.tolist()


@pytest.mark.parametrize("key", ["X", "x"])
def test_npz_x_y_keys_table(tmp_path, key):
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(20, 3))
    y = np.arange(20) % 2
    np.savez(tmp_path / "t.npz", **{key: x, "y": y})
    ds = load_data(tmp_path / "t.npz")
    assert ds.kind == "table" and ds.image_shape is None
    np.testing.assert_allclose(ds.x.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(ds.x.std(axis=0), 1, atol=1e-5)
    np.testing.assert_allclose(ds.scaler.inverse_transform(ds.x), x, rtol=1e-5)
    assert ds.labels.tolist() == y.tolist()


def test_npz_string_labels_map_to_sorted_indices(tmp_path):
    np.savez(tmp_path / "s.npz", X=np.eye(3), y=np.array(["dog", "cat", "dog"]))
    ds = load_data(tmp_path / "s.npz")
    assert ds.label_names == ["cat", "dog"] and ds.labels.tolist() == [1, 0, 1]


def test_npz_without_known_keys_lists_the_keys(tmp_path):
    np.savez(tmp_path / "k.npz", pixels=np.zeros((2, 4)), targets=np.zeros(2))
    with pytest.raises(DataError, match=r"keys: pixels, targets.*np\.savez"):
        load_data(tmp_path / "k.npz")


def test_npz_labels_of_another_length(tmp_path):
    np.savez(tmp_path / "l.npz", X=np.zeros((4, 3)), y=np.zeros(5, int))
    with pytest.raises(DataError, match="5 labels for 4 rows"):
        load_data(tmp_path / "l.npz")


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04garbage"])
def test_corrupt_npz(tmp_path, content):
    (tmp_path / "c.npz").write_bytes(content)
    with pytest.raises(DataError, match="cannot read the file.*re-create"):
        load_data(tmp_path / "c.npz")


def test_npz_with_lying_header_is_refused_before_allocating(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 3), np.float32))
    raw = buf.getvalue().replace(b"(2, 3)", b"(2000000000, 3)".ljust(6))
    with zipfile.ZipFile(tmp_path / "h.npz", "w") as zf:
        zf.writestr("X.npy", raw)
    with pytest.raises(DataError, match=r"corrupt array 'X\.npy'"):
        load_data(tmp_path / "h.npz")


_unpickled: list[str] = []


def _record_unpickle() -> str:
    _unpickled.append("called")
    return "payload"


class _Payload:
    def __reduce__(self):
        return (_record_unpickle, ())


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_pickles_are_never_loaded(tmp_path, suffix):
    path = tmp_path / f"p{suffix}"
    if suffix == ".npz":
        np.savez(path, X=np.array([_Payload(), _Payload()], dtype=object))
    else:
        path.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(DataError, match="pickle"):
        load_data(path)
    assert _unpickled == []


@pytest.mark.parametrize("where", ["npz labels", "npz data", "npy", "npy named .npz"])
def test_object_arrays_are_refused_saying_why_not_called_corrupt(tmp_path, where):
    """Issue 15 (#23): an .npz with object-dtype labels was called corrupt."""
    objects = np.array([_Payload(), "b", None], dtype=object)
    path = tmp_path / ("d.npy" if where == "npy" else "d.npz")
    if where == "npz labels":
        np.savez(path, X=np.zeros((3, 2)), y=objects)
    elif where == "npz data":
        np.savez(path, X=objects, y=np.arange(3))
    else:
        with open(path, "wb") as f:
            np.save(f, objects)
    with pytest.raises(DataError) as info:
        load_data(path)
    message = str(info.value)
    member = {"npz labels": "array 'y' ", "npz data": "array 'X' "}.get(where, "the array ")
    assert f"{path}: {member}holds Python objects (dtype object)" in message
    assert "loading them would need pickle, which can run code" in message
    assert "numbers or fixed-width strings" in message and "corrupt" not in message
    assert _unpickled == []


def test_npz_named_npy_is_named_for_what_it_is(tmp_path):
    np.savez(tmp_path / "a.npz", X=np.zeros((2, 2)))
    (tmp_path / "a.npz").rename(tmp_path / "a.npy")
    with pytest.raises(DataError, match=r"holds several arrays \(an \.npz archive\)"):
        load_data(tmp_path / "a.npy")


def test_npy_uint8_square_rows_are_images(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, size=(5, 16), dtype=np.uint8)
    np.save(tmp_path / "u.npy", x)
    ds = load_data(tmp_path / "u.npy")
    assert ds.kind == "image" and ds.image_shape == (4, 4) and ds.labels is None
    np.testing.assert_allclose(ds.x, x / 255.0, rtol=1e-6)


def test_npy_unit_range_floats_are_kept(tmp_path):
    x = np.random.default_rng(3).random((5, 3, 3)).astype(np.float32)
    np.save(tmp_path / "f.npy", x)
    ds = load_data(tmp_path / "f.npy")
    assert ds.kind == "image" and ds.image_shape == (3, 3)
    np.testing.assert_array_equal(ds.x, x.reshape(5, 9))


def test_image_guess_needs_whole_grey_levels_and_kind_overrides(tmp_path):
    x = np.random.default_rng(4).uniform(0, 200, size=(6, 16))  # in 0..255 but not integers
    np.save(tmp_path / "g.npy", x)
    assert load_data(tmp_path / "g.npy").kind == "table"
    forced = load_data(tmp_path / "g.npy", kind="image")
    assert forced.kind == "image" and forced.image_shape == (4, 4)
    np.testing.assert_allclose(forced.x, x / 255.0, rtol=1e-6)
    np.save(tmp_path / "i.npy", np.round(x).astype(np.int64))
    assert load_data(tmp_path / "i.npy").kind == "image"
    assert load_data(tmp_path / "i.npy", kind="table").kind == "table"


def test_kind_image_errors(tmp_path):
    np.save(tmp_path / "n.npy", np.zeros((3, 5)))
    with pytest.raises(DataError, match="5 features is not a square image.*kind='table'"):
        load_data(tmp_path / "n.npy", kind="image")
    np.save(tmp_path / "r.npy", np.full((3, 2, 2), -1.0))
    with pytest.raises(DataError, match=r"images must hold values in \[0, 1\].*kind='table'"):
        load_data(tmp_path / "r.npy")
    with pytest.raises(DataError, match="kind must be 'image' or 'table'"):
        load_data("digits", kind="picture")


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros(5), r"1-D .*reshape\(-1, 1\)"),
        (np.zeros((2, 2, 2, 2)), r"4-D .*reshape\(len\(x\), -1\)"),
        (np.zeros((0, 4)), "0 rows"),
        (np.zeros((3, 0)), "0 features"),
        (np.array([["a", "b"]]), "not real numbers"),
    ],
)
def test_npy_shape_and_dtype_errors(tmp_path, array, match):
    np.save(tmp_path / "a.npy", array)
    with pytest.raises(DataError, match=match):
        load_data(tmp_path / "a.npy")


def test_memory_check_refuses_arrays_larger_than_ram(tmp_path, monkeypatch):
    np.save(tmp_path / "big.npy", np.zeros((100, 10)))
    np.savez(tmp_path / "big.npz", X=np.zeros((100, 10)))
    monkeypatch.setattr(dataset, "_BASE_MEMORY_BYTES", 0)
    monkeypatch.setattr(dataset, "available_memory_bytes", lambda: 1000)  # 1000 float64 need 12,000
    for name in ("big.npy", "big.npz"):
        with pytest.raises(DataError, match="needs about 0.0 GiB but only.*subset of the rows"):
            load_data(tmp_path / name)
    monkeypatch.setattr(dataset, "available_memory_bytes", lambda: None)
    assert len(load_data(tmp_path / "big.npy")) == 100


# ----------------------------------------------------------------------------------------------
# CSV


def test_csv_with_header_and_numeric_labels(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["age,label,height", "30,1,1.8", "40,0,1.6", "50,1,1.7"])
    ds = load_data(str(path), label_column="label")
    assert ds.kind == "table" and ds.feature_names == ["age", "height"]
    assert ds.labels.tolist() == [1, 0, 1] and ds.label_names is None
    np.testing.assert_allclose(
        ds.scaler.inverse_transform(ds.x), [[30, 1.8], [40, 1.6], [50, 1.7]], rtol=1e-6
    )
    assert ds.name == str(path)


def test_csv_without_header_names_columns(tmp_path):
    path = write_csv(tmp_path / "n.csv", ["1,2,0", "3,4,1", "5,7,1", ""])
    ds = load_data(path, label_column="x2")
    assert ds.feature_names == ["x0", "x1"] and ds.labels.tolist() == [0, 1, 1]
    np.testing.assert_allclose(ds.scaler.inverse_transform(ds.x), [[1, 2], [3, 4], [5, 7]])


def test_csv_string_labels(tmp_path):
    path = write_csv(tmp_path / "s.csv", ["a,species", "1,setosa", "2,virginica", "3,setosa"])
    ds = load_data(path, label_column="species")
    assert ds.label_names == ["setosa", "virginica"] and ds.labels.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    ("lines", "label_column", "match"),
    [
        (
            ["a,age", "1,2", "3,abc"],
            None,
            r"column 'age' is not numeric \(line 3: 'abc'\).*"
            "--label-column age",
        ),
        (["a,b", "1,2", "3,"], None, "empty cell in column 'b' at line 3"),
        (["a,b", "1,2", "3,4,5"], None, "line 3 has 3 fields but the header has 2"),
        (["a,b", "1,2"], "c", r"label column 'c' is not in the header \(columns: 'a', 'b'\)"),
        (["a,b", "1,nan", "inf,2", "3,nan"], None, r"2 NaN and 1 infinite.*line 2, column 'b'"),
        (["a,b"], None, "0 rows"),
        (["a,b", "1,"], "b", r"1 missing label\(s\) \(empty, NaN or -1\), the first at line 2"),
        (["y", "1", "2"], "y", "0 features"),
        (["a,a", "1,2"], None, "duplicate column name"),
        ([], None, "the file is empty"),
    ],
)
def test_csv_errors(tmp_path, lines, label_column, match):
    path = write_csv(tmp_path / "e.csv", lines)
    with pytest.raises(DataError, match=match):
        load_data(path, label_column=label_column)


def test_csv_header_of_200000_columns_names_its_duplicates(tmp_path):
    """Issue 15 (#18): the duplicate check was quadratic in the columns (40,000 took 12.8 s)."""
    columns = [f"c{j}" for j in range(200_000)]
    columns[-3:] = ["c7", "c5", "c7"]
    path = write_csv(tmp_path / "wide.csv", [",".join(columns), ",".join(["0"] * len(columns))])
    with pytest.raises(DataError, match=r"duplicate column name\(s\) 'c5', 'c7' in the header"):
        load_data(path)


def test_csv_many_duplicate_names_are_counted_not_all_listed(tmp_path):
    columns = [f"c{j % 50}" for j in range(100)]
    path = write_csv(tmp_path / "dup.csv", [",".join(columns), ",".join(["0"] * 100)])
    with pytest.raises(DataError, match=r"'c0', 'c1', .*'c17', \.\.\. \(50 in all\)") as info:
        load_data(path)
    assert "'c49'" not in str(info.value)


def test_csv_larger_than_memory_is_refused_before_parsing(tmp_path, monkeypatch):
    """Issue 15 (#19): CSV had no memory guard, and parsing costs about 100 bytes a value."""
    row = ",".join(["0.123456"] * 10)
    path = write_csv(tmp_path / "big.csv", [",".join(f"c{j}" for j in range(10))] + [row] * 20_000)
    monkeypatch.setattr(dataset, "_BASE_MEMORY_BYTES", 0)
    # 200,010 values at about 100 bytes need about 20 MB, against 80% of 10 MB.
    monkeypatch.setattr(dataset, "available_memory_bytes", lambda: 10 * 2**20)
    peak, message = peak_bytes_of(lambda: load_data(path))
    assert re.search(
        r"big\.csv: loading and training on 2\d\d,\d{3} values \(estimated from", message
    )
    assert f"{path.stat().st_size:,} bytes" in message and "GiB of memory is available" in message
    assert peak < 2**20  # parsing would have taken about 20 MB
    monkeypatch.setattr(dataset, "available_memory_bytes", lambda: 100 * 2**20)
    assert load_data(path).x.shape == (20_000, 10)


def test_csv_guard_keeps_counting_past_a_misleading_start(tmp_path, monkeypatch):
    """Long cells at the top make the estimate from the first lines low; the parse stops anyway."""
    long = ",".join(["1." + "0" * 60] * 2)
    path = write_csv(tmp_path / "m.csv", ["a,b"] + [long] * 1_000 + ["1,2"] * 200_000)
    monkeypatch.setattr(dataset, "_BASE_MEMORY_BYTES", 0)
    monkeypatch.setattr(dataset, "available_memory_bytes", lambda: 12 * 2**20)
    with pytest.raises(
        DataError, match=r"m\.csv: loading and training on [\d,]+ values \(read so far"
    ):
        load_data(path)


MISSING_LABELS = {
    "csv nan": lambda d: write_csv(d / "l.csv", ["a,y", "1,0", "2,nan", "3,1"]),
    "csv empty": lambda d: write_csv(d / "l.csv", ["a,y", "1,0", "2, ", "3,1"]),
    "csv nan among strings": lambda d: write_csv(d / "l.csv", ["a,y", "1,cat", "2,NaN", "3,dog"]),
    "npz float nan": lambda d: _savez(d, np.array([0.0, np.nan, 1.0])),
    "npz string empty": lambda d: _savez(d, np.array(["cat", "", "dog"])),
    "npz string nan": lambda d: _savez(d, np.array(["cat", "nan", "dog"])),
}


def _savez(directory: Path, y: np.ndarray) -> Path:
    np.savez(directory / "l.npz", X=np.arange(6.0).reshape(3, 2), y=y)
    return directory / "l.npz"


def test_missing_labels_are_refused_alike_from_csv_and_npz(tmp_path):
    """Issue 15 (#24): CSV labels `nan` became a class while .npz refused NaN labels."""
    messages = {}
    for source, make in MISSING_LABELS.items():
        path = make(tmp_path)
        with pytest.raises(DataError) as info:
            load_data(path, label_column="y" if path.suffix == ".csv" else None)
        where = "line 3" if path.suffix == ".csv" else "row 1"
        prefix = f"{path}: 1 missing label(s) (empty, NaN or -1), the first at {where}; "
        assert str(info.value).startswith(prefix), (source, str(info.value))
        messages[source] = str(info.value).removeprefix(prefix)
    assert len(set(messages.values())) == 1, messages


def test_missing_labels_are_kept_as_missing_alike_from_csv_and_npz_when_allowed(tmp_path):
    """Issue 18: training with the labels that exist loads the rest as MISSING_LABEL, never a
    class or a name of their own."""
    for source, make in MISSING_LABELS.items():
        path = make(tmp_path)
        column = "y" if path.suffix == ".csv" else None
        data = load_data(path, label_column=column, allow_missing_labels=True)
        assert data.labels.tolist() == [0, MISSING_LABEL, 1], source
        assert data.labelled.tolist() == [True, False, True], source
        strings = "string" in source or "strings" in source
        assert data.label_names == (["cat", "dog"] if strings else None), source


def test_csv_whole_number_labels_with_missing_cells_stay_numbers(tmp_path):
    """Numbers, not strings sorted as text: with a missing cell, "10" must not come before "2"."""
    path = write_csv(tmp_path / "n.csv", ["a,y", "1,2", "2,", "3,10", "4,nan", "5,0"])
    with pytest.raises(DataError, match=r"2 missing label\(s\) .* the first at line 3"):
        load_data(path, label_column="y")
    data = load_data(path, label_column="y", allow_missing_labels=True)
    assert data.labels.tolist() == [2, MISSING_LABEL, 10, MISSING_LABEL, 0]
    assert data.label_names is None
    assert np.array_equal(data.subset([0, 1]).labelled, [True, False])


def test_npz_integer_labels_mark_a_missing_one_as_minus_one(tmp_path):
    """As scikit-learn's semi-supervised estimators do: integer arrays cannot hold NaN."""
    path = _savez(tmp_path, np.array([0, -1, 1]))
    with pytest.raises(DataError, match=r"1 missing label\(s\) \(empty, NaN or -1\).*row 1"):
        load_data(path)
    assert load_data(path, allow_missing_labels=True).labels.tolist() == [0, MISSING_LABEL, 1]
    with pytest.raises(DataError, match="negative numbers"):
        load_data(_savez(tmp_path, np.array([0, -2, 1])), allow_missing_labels=True)


def test_csv_not_utf8(tmp_path):
    (tmp_path / "b.csv").write_bytes(b"a,b\n\xff\xfe,1\n")
    with pytest.raises(DataError, match="UTF-8"):
        load_data(tmp_path / "b.csv")


def test_heldout_csv_is_scaled_with_the_training_scaler(tmp_path):
    train = load_data(write_csv(tmp_path / "tr.csv", ["a,b", "0,10", "2,30", "4,20"]))
    test_path = write_csv(tmp_path / "te.csv", ["a,b", "100,20", "102,20"])
    heldout = load_data(test_path, scaler=train.scaler)
    assert heldout.scaler is train.scaler
    expected = (np.array([[100, 20], [102, 20]]) - [2, 20]) / np.array([[8 / 3, 200 / 3]]) ** 0.5
    np.testing.assert_allclose(heldout.x, expected, rtol=1e-6)
    # Fitting its own scaler would have centred it instead.
    assert not np.allclose(load_data(test_path).x, heldout.x)
    wide = write_csv(tmp_path / "w.csv", ["a,b,c", "1,2,3"])
    with pytest.raises(DataError, match="3 features but the scaler was fitted on 2"):
        load_data(wide, scaler=train.scaler)


# ----------------------------------------------------------------------------------------------
# Paths and arguments


def test_missing_path_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="no such file.*pass digits, a directory of MNIST IDX"):
        load_data(tmp_path / "nope.npz")
    (tmp_path / "d.txt").write_text("1,2")
    with pytest.raises(DataError, match=r"unknown file type '\.txt'.*\.npz, \.npy, \.csv"):
        load_data(tmp_path / "d.txt")


@pytest.fixture
def fails_instead_of_hanging():
    """Opening a FIFO that has no writer blocks: turn a hang into a failure after 20 s."""
    if not hasattr(os, "mkfifo") or not hasattr(signal, "SIGALRM"):
        pytest.skip("needs os.mkfifo and SIGALRM (POSIX)")

    def hung(signum, frame):
        raise TimeoutError("load_data blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name", ["d.csv", "d.npz", "d.npy", "train-images-idx3-ubyte.gz"])
def test_a_fifo_is_refused_before_it_is_opened(tmp_path, name, fails_instead_of_hanging):
    """Issue 15: --data naming a FIFO with no writer blocked forever with no message."""
    os.mkfifo(tmp_path / name)
    with pytest.raises(
        DataError, match=rf"{re.escape(name)}: is a FIFO \(named pipe\), not a regular"
    ):
        load_data(tmp_path / name)


def test_fifos_in_an_idx_directory_are_refused(tmp_path, images, fails_instead_of_hanging):
    os.mkfifo(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: is a FIFO"):
        load_data(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    os.mkfifo(tmp_path / "train-labels-idx1-ubyte")
    for spec in (tmp_path, tmp_path / "train-images-idx3-ubyte"):  # the directory, or the file
        with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: is a FIFO"):
            load_data(spec)


def test_a_directory_named_like_an_idx_file_is_named_as_such(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").mkdir()
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte: is a directory, not a regular file; pass"
    ):
        load_data(tmp_path)


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_a_device_is_refused(tmp_path):
    (tmp_path / "d.csv").symlink_to("/dev/null")
    with pytest.raises(DataError, match=r"d\.csv: is a character device, not a regular file"):
        load_data(tmp_path / "d.csv")


def test_label_column_only_for_csv():
    with pytest.raises(DataError, match="applies only to CSV"):
        load_data("digits", label_column="y")


def test_scaler_with_images_is_refused():
    with pytest.raises(DataError, match="images, which are not standardized"):
        load_data("digits", scaler=Scaler.fit(np.zeros((2, 64))))


# ----------------------------------------------------------------------------------------------
# Properties


def finite_tables(max_rows: int = 12, max_cols: int = 6, **float_kwargs):
    shapes = st.tuples(st.integers(1, max_rows), st.integers(1, max_cols))
    elements = st.floats(allow_nan=False, allow_infinity=False, **float_kwargs)
    return shapes.flatmap(lambda s: hnp.arrays(np.float64, s, elements=elements))


def write_array(directory: Path, x: np.ndarray, fmt: str, header: bool) -> Path:
    if fmt == ".npy":
        np.save(directory / "a.npy", x)
        return directory / "a.npy"
    lines = [",".join(f"c{j}" for j in range(x.shape[1]))] if header else []
    lines += [",".join(repr(float(v)) for v in row) for row in x]
    return write_csv(directory / "a.csv", lines)


@PROPERTY
@given(x=finite_tables(), fmt=st.sampled_from([".npy", ".csv"]), header=st.booleans())
def test_tables_round_trip_through_files(x, fmt, header):
    """Any finite table loads (or fails with DataError) and inverse_transform recovers it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_array(Path(tmp), x, fmt, header)
        try:
            ds = load_data(path)
        except DataError as err:
            # Only values beyond float32's range are refused.
            assert "float32" in str(err) and np.abs(x).max() > np.finfo(np.float32).max
            return
    assert ds.kind == "table" and ds.x.shape == x.shape and ds.x.dtype == np.float32
    assert np.all(np.isfinite(ds.x))
    scale = np.abs(x).max(axis=0)
    error = np.abs(ds.scaler.inverse_transform(ds.x) - x)
    assert np.all(error <= 1e-6 * scale + 1e-300)


@PROPERTY
@given(
    x=st.tuples(st.integers(1, 8), st.integers(2, 6), st.integers(2, 6)).flatmap(
        lambda s: hnp.arrays(np.uint8, s)
    ),
    flat=st.booleans(),
)
def test_uint8_images_round_trip(x, flat):
    """(N, H, W) images, or square ones flattened to (N, H*W), come back scaled to [0, 1]."""
    flat = flat and x.shape[1] == x.shape[2]  # a flat row only says its shape when square
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "i.npz"
        np.savez(path, images=x.reshape(len(x), -1) if flat else x)
        ds = load_data(path, kind="image")
    assert ds.image_shape == (x.shape[1], x.shape[2])
    scale = 255.0 if x.max() > 1 else 1.0
    np.testing.assert_allclose(ds.x * scale, x.reshape(len(x), -1), atol=1e-4)


@PROPERTY
@given(
    x=finite_tables(min_value=-1e6, max_value=1e6),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    where=st.tuples(st.integers(0), st.integers(0)),
    fmt=st.sampled_from([".npy", ".csv", "array"]),
)
def test_nan_or_inf_anywhere_is_refused(x, bad, where, fmt):
    row, col = where[0] % x.shape[0], where[1] % x.shape[1]
    x[row, col] = bad
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(DataError, match=r"NaN and \d+ infinite \(inf\)") as info:
            if fmt == "array":
                validate_array(x)
            else:
                load_data(write_array(Path(tmp), x, fmt, header=True))
    first = np.argwhere(~np.isfinite(x))[0]
    assert ("1 NaN" if np.isnan(bad) else "1 infinite") in str(info.value)
    assert f"column {first[1]}" in str(info.value) or f"column 'c{first[1]}'" in str(info.value)


def _valid_npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=np.arange(32, dtype=np.uint8).reshape(2, 4, 4), labels=np.arange(2))
    return buf.getvalue()


def _valid_npz_compressed_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, X=np.linspace(0, 1, 12).reshape(3, 4), y=np.arange(3))
    return buf.getvalue()


def _mutations(valid: bytes):
    """Truncations and byte flips of a valid file: the corruptions seen in practice."""
    truncated = st.integers(0, len(valid) - 1).map(lambda n: valid[:n])
    flipped = st.lists(
        st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255)), min_size=1, max_size=4
    ).map(lambda flips: _flip(valid, flips))
    return st.one_of(truncated, flipped)


def _flip(valid: bytes, flips: list[tuple[int, int]]) -> bytes:
    raw = bytearray(valid)
    for i, mask in flips:
        raw[i] ^= mask
    return bytes(raw)


def _idx_like() -> st.SearchStrategy[bytes]:
    valid = idx_bytes(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3))
    header = st.tuples(st.sampled_from([1, 3]), st.lists(st.integers(0, 2**32 - 1), max_size=3))
    with_header = st.tuples(header, st.binary(max_size=64)).map(
        # The declared rank and the number of dims given may disagree, on purpose.
        lambda h: struct.pack(f">I{len(h[0][1])}I", 0x800 | h[0][0], *h[0][1]) + h[1]
    )
    return st.one_of(st.binary(max_size=128), with_header, _mutations(valid))


@PROPERTY
@given(raw=_idx_like(), gz=st.booleans())
def test_random_idx_bytes_raise_only_data_error(raw, gz):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw) if gz else raw)
        try:
            ds = load_data(path)
        except DataError:
            return
    assert ds.kind == "image" and 0 <= ds.x.min() and ds.x.max() <= 1


@PROPERTY
@given(
    raw=st.one_of(
        st.binary(max_size=256),
        _mutations(_valid_npz_bytes()),
        _mutations(_valid_npz_compressed_bytes()),
    ),
    suffix=st.sampled_from([".npz", ".npy"]),
)
# Found by this test: one flipped bit marks a zip member encrypted, and zipfile raises RuntimeError.
@example(raw=_flip(_valid_npz_compressed_bytes(), [(318, 1)]), suffix=".npz")
def test_random_npz_bytes_raise_only_data_error(raw, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"r{suffix}"
        path.write_bytes(raw)
        try:
            ds = load_data(path)
        except DataError:
            return
    assert isinstance(ds, Dataset) and np.all(np.isfinite(ds.x))

"""Tests for pyro_gmvae.dataset: the checks every source goes through, Scaler and Dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pyro_gmvae import dataset
from pyro_gmvae.data import load_data
from pyro_gmvae.dataset import Dataset, Scaler, check_min_rows, validate_array
from pyro_gmvae.errors import DataError

# ----------------------------------------------------------------------------------------------
# validate_array and check_min_rows


def test_validate_array_accepts_good_data():
    validate_array(np.zeros((3, 2)), labels=[0, 1, 1])
    validate_array(np.zeros((3, 4, 4), np.uint8), labels=np.array(["a", "b", "c"]))


@pytest.mark.parametrize(
    ("x", "labels", "match"),
    [
        (np.zeros(3), None, "my: data is 1-D"),
        (np.zeros((1, 1, 1, 1)), None, "my: data is 4-D"),
        (np.zeros((0, 3)), None, "0 rows"),
        (np.zeros((2, 0)), None, "0 features"),
        (np.array([[1.0, np.nan], [np.nan, 0]]), None, r"2 NaN and 0 infinite.*row 0, column 1"),
        (np.array([[[0.0, 0], [0, -np.inf]]]), None, r"1 infinite.*row 0, pixel \(1, 1\)"),
        (np.zeros((3, 2)), [0, 1], "2 labels for 3 rows"),
        (np.zeros((2, 2)), [[0], [1]], "labels must be 1-D"),
        (np.zeros((2, 2)), [0.5, 1], "not whole numbers"),
        (
            np.zeros((2, 2)),
            [np.nan, 1],
            r"my: 1 missing label\(s\) \(empty, NaN or -1\), the first at row 0",
        ),
        (np.zeros((3, 2)), ["a", " ", "NAN"], r"2 missing label\(s\) .* the first at row 1"),
        (np.zeros((3, 2)), [0, 1, -1], r"1 missing label\(s\) .* at row 2; .*--labels-known all"),
        (np.zeros((2, 2)), [0, -2], r"negative numbers \(down to -2\); pass classes 0, 1"),
        (np.zeros((2, 2)), [np.inf, 1], "labels hold infinite values"),
        (np.zeros((2, 2)), [1j, 1], "labels hold complex values"),
        (np.zeros((2, 2), complex), None, "not real numbers"),
        ([[1, 2], [3]], None, "rectangular"),
    ],
)
def test_validate_array_errors(x, labels, match):
    with pytest.raises(DataError, match=match):
        validate_array(x, labels=labels, name="my")


def test_check_min_rows():
    ds = load_data("digits").subset(np.arange(5))
    check_min_rows(ds, 5)
    with pytest.raises(DataError, match=r"fewer rows \(5\) than clusters \(10\); lower --clusters"):
        check_min_rows(ds, 10)
    with pytest.raises(DataError, match="at least 2 rows"):
        check_min_rows(ds.subset([0]), 1)


# ----------------------------------------------------------------------------------------------
# Memory


def test_available_memory_reads_meminfo():
    available = dataset.available_memory_bytes()
    if Path("/proc/meminfo").exists():
        assert available is not None and available > 0


# ----------------------------------------------------------------------------------------------
# Scaler and Dataset methods


def test_scaler_round_trip_and_constant_columns():
    x = np.column_stack([np.linspace(-5, 5, 7), np.full(7, 0.1), np.arange(7.0) ** 2])
    scaler = Scaler.fit(x)
    z = scaler.transform(x)
    assert z.dtype == np.float32
    assert np.all(z[:, 1] == 0) and scaler.std[1] == 1.0
    np.testing.assert_allclose(scaler.inverse_transform(z), x, rtol=1e-6, atol=1e-6)
    restored = Scaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_array_equal(restored.mean, scaler.mean)
    np.testing.assert_array_equal(restored.std, scaler.std)


@pytest.mark.parametrize(
    "d", [{"mean": [0.0]}, {"mean": [0.0], "std": [0.0]}, {"mean": ["a"], "std": [1]}, None]
)
def test_scaler_from_bad_dict(d):
    with pytest.raises(DataError, match="scaler"):
        Scaler.from_dict(d)


def test_split_is_deterministic_disjoint_and_complete():
    ds = load_data("digits")
    train, heldout = ds.split(0.2, seed=7)
    again_train, again_heldout = ds.split(0.2, seed=7)
    assert len(heldout) == round(0.2 * len(ds)) and len(train) + len(heldout) == len(ds)
    np.testing.assert_array_equal(train.x, again_train.x)
    np.testing.assert_array_equal(heldout.labels, again_heldout.labels)
    # Digits has duplicate images, so check disjointness on a copy whose rows are their indices.
    tagged = Dataset(
        x=np.arange(len(ds), dtype=np.float32)[:, None],
        labels=np.arange(len(ds)),
        kind="table",
        image_shape=None,
        name="tags",
    )
    t, h = tagged.split(0.2, seed=7)
    assert set(t.labels) & set(h.labels) == set()
    assert set(t.labels) | set(h.labels) == set(range(len(ds)))
    assert np.all(np.diff(t.labels) > 0)  # original order kept
    assert tagged.split(0.2, seed=8)[1].labels.tolist() != h.labels.tolist()
    with pytest.raises(DataError, match="fraction"):
        ds.split(1.0)
    with pytest.raises(DataError, match="at least 2 rows"):
        tagged.subset([0]).split(0.5)


def test_split_keeps_both_parts_nonempty():
    ds = load_data("digits").subset([0, 1, 2])
    for fraction in (0.01, 0.99):
        train, heldout = ds.split(fraction)
        assert len(train) >= 1 and len(heldout) >= 1

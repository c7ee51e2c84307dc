"""Images in an .npy file are memory-mapped and streamed (``dataset.ScaledRows``): the same
results as the data copied into memory, memory bounded by a chunk, and clear errors when the
file is truncated or changes under a running job."""

from __future__ import annotations

import dataclasses
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from helpers import small_model, small_train

from pyro_gmvae import GMVAE, Trainer, load_data
from pyro_gmvae import dataset as dataset_module
from pyro_gmvae.checkpoints import CHECKPOINT_FILE
from pyro_gmvae.dataset import Dataset, ScaledRows
from pyro_gmvae.errors import DataError
from pyro_gmvae.evaluate import elbo_per_example, evaluate, log_likelihood
from pyro_gmvae.runs import data_fingerprint, split_heldout
from pyro_gmvae.train import read_metrics


def grey_images(n: int = 120, side: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, side, side)`` uint8 grey levels in three groups of brightness, and the groups."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    levels = 40 + 80 * labels[:, None, None] + rng.integers(0, 40, (n, side, side))
    return levels.astype(np.uint8), labels


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "images.npy"
    np.save(path, grey_images()[0])
    return path


def in_memory(data: Dataset) -> Dataset:
    """The same data with its rows copied into memory, as every other format loads them."""
    return dataclasses.replace(data, x=np.asarray(data.x))


# ---------------------------------------------------------------------------------- loading
@pytest.mark.parametrize(
    ("dtype", "scale"), [(np.uint8, 255.0), (np.float32, 1.0), (np.float64, 1.0)]
)
def test_npy_images_stream_with_the_values_a_copy_would_have(tmp_path, dtype, scale):
    images = grey_images()[0]
    stored = images if dtype == np.uint8 else (images / 255.0).astype(dtype)
    np.save(tmp_path / "x.npy", stored)
    data = load_data(tmp_path / "x.npy")
    assert isinstance(data.x, ScaledRows) and isinstance(data.x.source, np.memmap)
    assert data.x.file == tmp_path / "x.npy" and data.x.scale == scale
    assert data.kind == "image" and data.image_shape == (4, 4)
    assert data.x.shape == (120, 16) and data.x.dtype == np.float32 and len(data) == 120
    expected = stored.reshape(120, 16).astype(np.float32) / np.float32(scale)
    full = np.asarray(data.x)
    assert full.dtype == np.float32
    np.testing.assert_array_equal(full, expected)  # bit for bit: the one conversion
    np.testing.assert_array_equal(np.vstack(list(data.x.chunks(50))), expected)


def test_rows_come_back_in_the_order_asked(image_file):
    rows = load_data(image_file).x
    full = np.asarray(rows)
    idx = np.array([7, 3, 119, 3, 0, -1])
    np.testing.assert_array_equal(rows[idx], full[idx])
    np.testing.assert_array_equal(rows[torch.tensor([5, 2])], full[[5, 2]])
    np.testing.assert_array_equal(rows[10:20:3], full[10:20:3])
    np.testing.assert_array_equal(rows[-2], full[-2])
    mask = np.arange(120) % 7 == 0
    np.testing.assert_array_equal(rows[mask], full[mask])
    assert rows[[]].shape == (0, 16)
    with pytest.raises(IndexError):
        rows[120]
    with pytest.raises(IndexError):
        rows[np.array([0, 120])]
    with pytest.raises(TypeError, match="select columns after reading"):
        rows[:, 0]


def test_a_subset_of_streamed_rows_is_a_view_and_splits_like_a_copy(image_file):
    data = load_data(image_file)
    copied = in_memory(data)
    train, heldout = split_heldout(data, 0.25, seed=3)
    train_copy, heldout_copy = split_heldout(copied, 0.25, seed=3)
    for part, copy in ((train, train_copy), (heldout, heldout_copy)):
        assert isinstance(part.x, ScaledRows) and part.x.source is data.x.source
        np.testing.assert_array_equal(np.asarray(part.x), copy.x)
        np.testing.assert_array_equal(part.x[[4, 1]], copy.x[[4, 1]])  # rows of the view
    assert data_fingerprint(train.x) == data_fingerprint(train_copy.x)
    inner = train.subset(np.array([5, 0, 2]))
    np.testing.assert_array_equal(np.asarray(inner.x), train_copy.x[[5, 0, 2]])


def test_tables_in_an_npy_file_are_still_copied_and_standardized(tmp_path):
    x = np.random.default_rng(0).normal(5.0, 2.0, size=(30, 3))
    np.save(tmp_path / "t.npy", x)
    data = load_data(tmp_path / "t.npy")
    assert data.kind == "table" and isinstance(data.x, np.ndarray)
    np.testing.assert_allclose(data.x.mean(0), 0, atol=1e-6)


def test_streaming_allocates_a_chunk_not_the_data(tmp_path):
    """40,000 28x28 uint8 images (31 MB on disk) would be a 125 MB float32 copy."""
    n, d = 40_000, 784
    path = tmp_path / "big.npy"
    written = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 28, 28))
    for start in range(0, n, 5000):
        block = np.arange(start * d, (start + 5000) * d, dtype=np.int64) % 251
        written[start : start + 5000] = block.reshape(5000, 28, 28)
    written.flush()
    del written
    full_copy = n * d * 4

    tracemalloc.start()
    try:
        data = load_data(path)
        load_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        largest = max(float(chunk.max()) for chunk in data.x.chunks(4096))
        order = np.random.default_rng(0).permutation(n)[:256]
        rows = data.x[order]  # a shuffled minibatch
        read_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(data.x, ScaledRows) and data.x.shape == (n, d)
    assert load_peak < full_copy / 50, load_peak  # the checks read the file, copy nothing
    assert read_peak < full_copy / 4, read_peak  # a chunk (12.8 MB) or two at a time
    assert largest == np.float32(250) / np.float32(255)
    expected = (np.arange(order[-1] * d, (order[-1] + 1) * d) % 251).astype(np.float32) / 255
    np.testing.assert_array_equal(rows[-1], expected)


def test_a_full_copy_of_streamed_rows_is_checked_against_the_memory(image_file, monkeypatch):
    rows = load_data(image_file).x
    monkeypatch.setattr(dataset_module, "available_memory_bytes", lambda: 1000)
    with pytest.raises(DataError, match="full copy.*needs about.*save images as an .npy"):
        np.asarray(rows)
    assert rows[:2].shape == (2, 16)  # streaming needs no such copy


# ------------------------------------------------------------------------- the same results
def train(x, *, labels=None, run_dir=None, **options) -> Trainer:
    """A tiny model trained for 2 epochs (pretraining, then SVI from a GMM start), moved views on."""
    config = small_train(
        epochs=1,
        pretrain_epochs=1,
        batch_size=32,
        augment_rotation=10.0,
        augment_shift=0.1,
        checkpoint_every=1,
        **options,
    )
    pyro.set_rng_seed(0)
    model = GMVAE(small_model(n_features=16, image_shape=(4, 4), guide="enumerated"))
    trainer = Trainer(model, x, config, labels=labels, run_dir=run_dir, progress=False)
    trainer.run()
    return trainer


def test_training_on_streamed_rows_equals_training_in_memory_bit_for_bit(image_file):
    data = load_data(image_file)
    labels = grey_images()[1]
    streamed = train(data.x, labels=labels)
    copied = train(in_memory(data).x, labels=labels)
    assert isinstance(streamed.x, ScaledRows) and isinstance(copied.x, torch.Tensor)
    assert [r["loss"] for r in streamed.history] == [r["loss"] for r in copied.history]
    assert [r["accuracy"] for r in streamed.history[1:]] == [
        r["accuracy"] for r in copied.history[1:]
    ]
    weights, expected = streamed.model.state_dict(), copied.model.state_dict()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)

    model = streamed.model
    np.testing.assert_array_equal(model.predict(data.x), model.predict(copied.x))
    np.testing.assert_array_equal(model.encode(data.x), model.encode(copied.x))
    np.testing.assert_array_equal(model.predict_proba(data.x), model.predict_proba(copied.x))
    pyro.set_rng_seed(1)
    elbo = elbo_per_example(model, data.x, batch_size=50)
    pyro.set_rng_seed(1)
    assert torch.equal(elbo, elbo_per_example(model, copied.x, batch_size=50))
    pyro.set_rng_seed(2)
    log_px = log_likelihood(model, data.x, num_samples=5, batch_size=50)
    pyro.set_rng_seed(2)
    assert torch.equal(log_px, log_likelihood(model, copied.x, num_samples=5, batch_size=50))
    labelled = dataclasses.replace(data, labels=labels)
    assert evaluate(model, labelled, num_samples=5) == evaluate(
        model, in_memory(labelled), num_samples=5
    )


def test_streamed_rows_are_validated_in_chunks_by_the_trainer(tmp_path):
    x = grey_images()[0].reshape(120, 16) / 255.0
    x[77, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    rows = ScaledRows(np.load(tmp_path / "nan.npy", mmap_mode="r"))  # unchecked, by hand
    model = GMVAE(small_model(n_features=16, image_shape=(4, 4)))
    with pytest.raises(DataError, match=r"1 NaN .*row 77, column 3"):
        Trainer(model, rows, small_train(), progress=False)
    np.save(tmp_path / "wide.npy", np.zeros((10, 25)))
    wide = ScaledRows(np.load(tmp_path / "wide.npy", mmap_mode="r"))
    with pytest.raises(DataError, match=r"shape \(10, 25\); the model expects \(N, 16\)"):
        model.predict(wide)


# --------------------------------------------------------------------------------- bad files
def test_a_truncated_npy_file_is_named_at_load_time(image_file):
    size = image_file.stat().st_size
    with open(image_file, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(DataError) as info:
        load_data(image_file)
    message = str(info.value)
    assert message.startswith(f"{image_file}: truncated .npy file")
    assert "header says shape (120, 4, 4) of uint8 (1,920 bytes of data)" in message
    assert "holds 1,820 after its header" in message and "np.save" in message


def test_a_file_truncated_during_training_stops_it_and_the_run_resumes(image_file, tmp_path):
    original = image_file.read_bytes()
    run = tmp_path / "run"
    data = load_data(image_file)

    def truncate_after_the_first_epoch(trainer: Trainer) -> None:
        if trainer.epoch == 1 and trainer.batch == 0:
            with open(image_file, "r+b") as f:
                f.truncate(200)

    config = small_train(epochs=1, pretrain_epochs=1, batch_size=32, checkpoint_every=1)

    def seeded_trainer(x, **options) -> Trainer:
        pyro.set_rng_seed(0)
        model = GMVAE(small_model(n_features=16, image_shape=(4, 4)))
        return Trainer(model, x, config, progress=False, **options)

    trainer = seeded_trainer(data.x, run_dir=run, on_batch=truncate_after_the_first_epoch)
    with pytest.raises(DataError) as info:
        trainer.run()
    message = str(info.value)
    assert message.startswith(f"{image_file}: changed while it was being read")
    assert "held 2,048 bytes when opened and holds 200 now" in message
    assert "--resume" in message
    assert (run / CHECKPOINT_FILE).exists() and len(read_metrics(run)) == 1

    image_file.write_bytes(original)  # restored: a new job opens it anew and resumes
    resumed = seeded_trainer(load_data(image_file).x, run_dir=run)
    resumed.resume(read_metrics(run))
    resumed.run()
    whole = seeded_trainer(load_data(image_file).x)
    whole.run()
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]


def test_a_file_rewritten_under_a_reader_is_refused(image_file):
    rows = load_data(image_file).x
    assert rows[:3].shape == (3, 16)
    stamp = image_file.stat()
    os.utime(image_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="was written to since it was opened"):
        rows[:3]
    image_file.unlink()
    with pytest.raises(DataError, match="cannot be read any more"):
        rows.chunks(10).__next__()

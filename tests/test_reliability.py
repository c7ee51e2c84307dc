"""Reliability: interrupted, resumed and diverging runs; bad input through the public API and the
command line; untrusted checkpoints in a run directory; the memory guard.

Every training here is tiny (240 digits, hidden=(16,), latent_dim=2, K=3, 4 batches an epoch) and
spells out its TrainConfig, so the tests do not move when the recipe's defaults do.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyro_gmvae import cli, dataset
from pyro_gmvae import train as training
from pyro_gmvae.checkpoints import CHECKPOINT_FILE, load_checkpoint
from pyro_gmvae.config import ConfigError, ModelConfig, RunConfig, TrainConfig
from pyro_gmvae.data import load_data
from pyro_gmvae.dataset import ScaledRows
from pyro_gmvae.errors import CheckpointError, DataError
from pyro_gmvae.model import GMVAE
from pyro_gmvae.runs import METRICS_FILE, read_metrics
from pyro_gmvae.train import MixtureStart, Trainer, TrainingDiverged, TrainingInterrupted, fit

DIGITS = load_data("digits")
X = DIGITS.x[:240]  # (240, 64) in [0, 1]
LABELS = DIGITS.labels[:240]
PRETRAIN, ANCHOR, SVI = 2, 1, 3  # epochs; 240 rows / 60 = 4 batches each


def model_config(**overrides) -> ModelConfig:
    values = dict(
        clusters=3,
        latent_dim=2,
        hidden=(16,),
        likelihood="bernoulli",
        guide="marginal",
        learn_weights=True,
        n_features=64,
        image_shape=(8, 8),
    )
    return ModelConfig(**(values | overrides))


def train_config(**overrides) -> TrainConfig:
    values = dict(
        epochs=SVI,
        pretrain_epochs=PRETRAIN,
        anchor_epochs=ANCHOR,
        anchor_min_steps=0,  # epochs alone, as the tests count them
        batch_size=60,
        lr=3e-3,
        lr_decay=0.5,
        restarts=1,
        clip_norm=10.0,
        augment_rotation=10.0,  # random augmentation: the RNG state must survive a resume
        augment_shift=0.1,
        seed=3,
        device="cpu",
        checkpoint_every=1,
    )
    return TrainConfig(**(values | overrides))


def make_trainer(run_dir: Path | None, tc: TrainConfig | None = None, guide="marginal", **kw):
    """A fresh process's view: a new model from the seed, as train_run builds it."""
    tc = tc or train_config()
    mc = model_config(guide=guide)
    pyro.clear_param_store()
    pyro.set_rng_seed(tc.seed)
    return Trainer(
        GMVAE(mc),
        X,
        tc,
        labels=LABELS,
        run_dir=run_dir,
        run_config=RunConfig(model=mc, train=tc),
        progress=False,
        **kw,
    )


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Models this small train ten times faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_REFERENCE: dict[str, dict] = {}


def reference(guide: str = "marginal") -> dict:
    """The uninterrupted run, without a run directory (so saving cannot be what makes it match)."""
    if guide not in _REFERENCE:
        trainer = make_trainer(None, guide=guide)
        history = trainer.run()
        _REFERENCE[guide] = {
            "params": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "history": history,
        }
    return _REFERENCE[guide]


def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "start_seconds")} for r in records]


def assert_same_as_uninterrupted(trainer: Trainer, run_dir: Path, guide="marginal") -> None:
    ref = reference(guide)
    params = trainer.model.state_dict()
    assert params.keys() == ref["params"].keys()
    for name, value in ref["params"].items():
        assert torch.equal(params[name], value), f"{name} differs from the uninterrupted run"
    metrics = read_metrics(run_dir)
    assert [r["epoch"] for r in metrics] == list(range(1, PRETRAIN + ANCHOR + SVI + 1))
    assert without_time(metrics) == without_time(ref["history"])


def stop_after_batch(trainer: Trainer, epoch: int, batch: int, how: str) -> None:
    """Request a stop as Ctrl-C does, once batch ``batch`` of epoch ``epoch`` (0-based) has been
    stepped: either through the trainer's handler or with a real SIGINT to this process."""

    def stop_here(trainer: Trainer) -> None:
        if (trainer.epoch, trainer.batch) == (epoch, batch):
            if how == "signal":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                trainer.request_stop(signal.SIGINT)

    trainer.on_batch = stop_here


@pytest.fixture
def count_mixture_fits(monkeypatch) -> list[int]:
    calls: list[int] = []
    start = MixtureStart.__call__

    def counted(self, trainer):
        calls.append(trainer.epoch)
        start(self, trainer)

    monkeypatch.setattr(MixtureStart, "__call__", counted)
    return calls


# ----------------------------------------------------------------------------------------------
# Resume exactness


@pytest.mark.parametrize("stop_after", [1, PRETRAIN, PRETRAIN + ANCHOR, PRETRAIN + ANCHOR + 1])
def test_resume_at_an_epoch_boundary_matches_the_uninterrupted_run(
    tmp_path, stop_after, count_mixture_fits
):
    """Ctrl-C during an epoch's end (scoring, saving): mid-pretraining, between pretraining and
    the anchor epochs (the mixture not yet fitted), between the anchor epochs and SVI, and
    between SVI epochs."""
    reference()
    count_mixture_fits.clear()
    first = make_trainer(
        tmp_path,
        on_epoch=lambda r: r["epoch"] == stop_after and first.request_stop(signal.SIGINT),
    )
    with pytest.raises(TrainingInterrupted, match=f"interrupted after epoch {stop_after}; resume"):
        first.run()
    assert [r["epoch"] for r in read_metrics(tmp_path)] == list(range(1, stop_after + 1))
    state = load_checkpoint(tmp_path)
    assert (state["epoch"], state["batch"], state["perm"]) == (stop_after, 0, None)
    assert state["begun"] == 1 + (stop_after > PRETRAIN) + (stop_after > PRETRAIN + ANCHOR)

    second = make_trainer(tmp_path)
    second.resume(read_metrics(tmp_path))
    second.run()
    assert_same_as_uninterrupted(second, tmp_path)
    assert count_mixture_fits == [PRETRAIN], "the mixture is fitted once, after pretraining"


def test_a_finished_run_continued_with_more_epochs_matches_one_long_run(tmp_path):
    reference()
    make_trainer(tmp_path, train_config(epochs=1)).run()
    longer = make_trainer(tmp_path, train_config(epochs=SVI))
    longer.resume(read_metrics(tmp_path))
    assert longer.epoch == PRETRAIN + ANCHOR + 1
    longer.run()
    assert_same_as_uninterrupted(longer, tmp_path)


@pytest.mark.parametrize(
    ("epoch", "batch", "how", "guide"),
    [
        (0, 0, "flag", "marginal"),  # mid-pretraining
        (PRETRAIN, 0, "signal", "marginal"),  # first anchor batch, just after the mixture fit
        (PRETRAIN, 1, "flag", "enumerated"),  # ... whose fit also trains q(y|x)
        (PRETRAIN + ANCHOR, 2, "signal", "marginal"),  # last-but-one batch of an SVI epoch
    ],
)
def test_resume_mid_epoch_matches_the_uninterrupted_run(
    tmp_path, epoch, batch, how, guide, count_mixture_fits
):
    reference(guide)
    count_mixture_fits.clear()
    first = make_trainer(tmp_path, guide=guide)
    stop_after_batch(first, epoch, batch, how)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(
        TrainingInterrupted,
        match=f"interrupted in epoch {epoch + 1}, after batch {batch + 1}; resume with --resume",
    ):
        first.run()
    assert signal.getsignal(signal.SIGINT) is handler, "Ctrl-C handler restored"
    state = load_checkpoint(tmp_path)
    assert (state["epoch"], state["batch"]) == (epoch, batch + 1)
    assert sorted(state["perm"].tolist()) == list(range(len(X))), "the epoch's own order"
    assert [r["epoch"] for r in read_metrics(tmp_path)] == list(range(1, epoch + 1))

    second = make_trainer(tmp_path, guide=guide)
    second.resume(read_metrics(tmp_path))
    second.run()
    assert_same_as_uninterrupted(second, tmp_path, guide)
    assert count_mixture_fits == [PRETRAIN]


@pytest.mark.parametrize("killed_in", ["write_metrics", "save_checkpoint"])
def test_a_kill_while_saving_leaves_a_run_that_resumes_exactly(tmp_path, monkeypatch, killed_in):
    """Metrics and checkpoint are two files: whichever write is cut short, the resumed run has one
    record per epoch (none lost, none twice) and the uninterrupted run's parameters."""
    import pyro_gmvae.train as train_module

    reference()
    real = getattr(train_module, killed_in)
    calls = []

    def dies_on_third_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what a kill looks like from the inside, at this point
        real(*args, **kwargs)

    monkeypatch.setattr(train_module, killed_in, dies_on_third_save)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path).run()
    monkeypatch.undo()
    resumed = make_trainer(tmp_path)
    resumed.resume(read_metrics(tmp_path))
    resumed.run()
    assert_same_as_uninterrupted(resumed, tmp_path)


def test_a_checkpoint_after_checkpoint_minutes_mid_epoch_survives_a_kill(tmp_path, monkeypatch):
    """On data whose epochs take minutes (a million rows), --checkpoint-minutes writes a
    checkpoint once that much time has passed, in the middle of an epoch; a run killed later,
    with no save on the way out, resumes from it and ends where the uninterrupted run does."""
    reference()
    clock = [0.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: clock[0])
    svi = PRETRAIN + ANCHOR  # the 0-based epoch where SVI begins

    def ten_minutes_then_a_kill(trainer: Trainer) -> None:
        if (trainer.epoch, trainer.batch) == (svi, 1):
            assert not (tmp_path / CHECKPOINT_FILE).exists()  # checkpoint_every=0: none yet
            clock[0] += 10 * 60  # the ten minutes pass during this batch
        if (trainer.epoch, trainer.batch) == (svi + 1, 2):
            raise KeyboardInterrupt  # a kill: nothing is saved on the way out

    tc = train_config(checkpoint_every=0, checkpoint_minutes=10.0)
    first = make_trainer(tmp_path, tc, on_batch=ten_minutes_then_a_kill)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    state = load_checkpoint(tmp_path)
    assert (state["epoch"], state["batch"]) == (svi, 2)  # after batch 1, mid-epoch
    assert [r["epoch"] for r in read_metrics(tmp_path)] == list(range(1, svi + 1))

    second = make_trainer(tmp_path, tc)
    second.resume(read_metrics(tmp_path))
    second.run()
    assert_same_as_uninterrupted(second, tmp_path)


def test_deferred_loss_checks_are_flushed_before_an_interrupt_saves(tmp_path):
    """On a GPU the loss is read back every ``check_every`` batches; a Ctrl-C in between must
    still count the unchecked batches in the epoch's loss."""
    first = make_trainer(tmp_path)
    first.check_every = 3
    stop_after_batch(first, PRETRAIN + ANCHOR + 1, 1, "flag")
    with pytest.raises(TrainingInterrupted):
        first.run()
    second = make_trainer(tmp_path)
    second.check_every = 3
    second.resume(read_metrics(tmp_path))
    second.run()
    ref = reference()
    assert all(torch.equal(second.model.state_dict()[k], v) for k, v in ref["params"].items())
    losses = [r["loss"] for r in read_metrics(tmp_path)]
    assert losses == pytest.approx([r["loss"] for r in ref["history"]], rel=1e-6)


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    make_trainer(tmp_path, train_config(epochs=0, pretrain_epochs=1)).run()
    tc = train_config(pretrain_epochs=1)
    pyro.set_rng_seed(0)
    other = Trainer(GMVAE(model_config(clusters=4)), X, tc, run_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="another model \\(clusters 3 there, 4 here\\)"):
        other.resume()
    # Without a saved configuration, the weights' shapes still give it away.
    state = load_checkpoint(tmp_path)
    state["config"] = None
    from pyro_gmvae.checkpoints import save_checkpoint

    save_checkpoint(tmp_path / CHECKPOINT_FILE, {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(CheckpointError, match="does not fit this model.*options and data"):
        other.resume()


def test_resume_refuses_a_model_checkpoint_without_training_state(tmp_path):
    pyro.set_rng_seed(0)
    GMVAE(model_config()).save(tmp_path)
    with pytest.raises(CheckpointError, match="no training state.*GMVAE.load"):
        make_trainer(tmp_path).resume()


# ----------------------------------------------------------------------------------------------
# Divergence


def nan_at(trainer: Trainer, epoch: int, batch: int, value: float = float("nan")) -> None:
    """Make the loss of batch ``batch`` of epoch ``epoch`` (0-based) ``value``."""
    for phase in trainer.recipe:
        real = phase.loss

        def loss(trainer_, batch_, real=real):
            out = real(trainer_, batch_)
            if (trainer.epoch, trainer.batch) == (epoch, batch):
                out = out * value
            return out

        phase.loss = loss


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_nan_loss_stops_naming_epoch_and_batch_and_keeps_the_last_good_checkpoint(
    tmp_path, value
):
    saved = {}
    trainer = make_trainer(
        tmp_path, on_epoch=lambda r: saved.update({r["epoch"]: snapshot(tmp_path)})
    )
    last_good = PRETRAIN + ANCHOR + 1  # epochs done when the second SVI epoch diverges
    nan_at(trainer, last_good, 2, value)
    with pytest.raises(
        TrainingDiverged,
        match=f"svi loss became {value} at epoch {last_good + 1}, batch 3; the last good "
        f"checkpoint in {re.escape(str(tmp_path))} is kept.*--lr",
    ):
        trainer.run()
    assert snapshot(tmp_path) == saved[last_good], "nothing written after the last good epoch"
    state = load_checkpoint(tmp_path)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert [r["epoch"] for r in read_metrics(tmp_path)] == list(range(1, last_good + 1))


def test_divergence_before_any_checkpoint_writes_none(tmp_path):
    trainer = make_trainer(tmp_path)
    nan_at(trainer, 0, 1)
    with pytest.raises(
        TrainingDiverged, match="pretrain loss became nan at epoch 1, batch 2; no checkpoint"
    ):
        trainer.run()
    assert not (tmp_path / CHECKPOINT_FILE).exists()
    assert not (tmp_path / METRICS_FILE).exists()


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_deferred_loss_checks_never_save_a_diverged_model(tmp_path):
    """With GPU-style deferred checks, steps on a NaN loss reach the weights before the check;
    a Ctrl-C then must not save them over the last good checkpoint."""
    saved = {}
    trainer = make_trainer(
        tmp_path, on_epoch=lambda r: saved.update({r["epoch"]: snapshot(tmp_path)})
    )
    trainer.check_every = 50
    nan_at(trainer, PRETRAIN, 0)
    stop_after_batch(trainer, PRETRAIN, 1, "flag")
    with pytest.raises(TrainingDiverged, match=f"epoch {PRETRAIN + 1}, batch 1; the last good"):
        trainer.run()
    assert snapshot(tmp_path) == saved[PRETRAIN]


@pytest.mark.parametrize("batch", [1, 3])  # mid-epoch, and the epoch's last batch
def test_weights_made_non_finite_by_a_step_stop_the_run(tmp_path, batch):
    """An infinite gradient can wreck the weights while the loss was still finite: the run
    stops at that batch instead of in Pyro's argument checks, and saves nothing."""
    saved = {}
    trainer = make_trainer(
        tmp_path, on_epoch=lambda r: saved.update({r["epoch"]: snapshot(tmp_path)})
    )

    def step_to_inf(trainer: Trainer) -> None:
        if (trainer.epoch, trainer.batch) == (PRETRAIN, batch):
            with torch.no_grad():
                trainer.model.encoder.loc.weight.fill_(float("inf"))

    trainer.on_batch = step_to_inf
    with pytest.raises(
        TrainingDiverged,
        match=f"weights became NaN or infinite at epoch {PRETRAIN + 1}, batch {batch + 1}; "
        "the last good checkpoint",
    ):
        trainer.run()
    assert snapshot(tmp_path) == saved[PRETRAIN]


# ----------------------------------------------------------------------------------------------
# The command line: exit codes and one-line messages


def gmvae_train(tmp_path: Path, *args: str) -> list[str]:
    """Arguments for a tiny `gmvae train` on 240 digits saved as an .npy file."""
    data_file = tmp_path / "digits240.npy"
    if not data_file.exists():
        np.save(data_file, X)
    return [
        "train",
        "--data",
        str(data_file),
        "--clusters",
        "3",
        "--latent-dim",
        "2",
        "--network",
        "mlp",
        "--hidden",
        "16",
        "--batch-size",
        "60",
        "--lr",
        "0.003",
        "--restarts",
        "1",
        "--augment-rotation",
        "0",
        "--augment-shift",
        "0",
        "--checkpoint-every",
        "1",
        "--anchor-epochs",
        "1",
        "--anchor-min-steps",
        "0",
        "--init",  # named, so stderr holds no "chosen from the data" line
        "tsne",
        "--guide",
        "enumerated",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--no-progress",
        "--no-plots",
        *args,
    ]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, err: str, match: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"one line, no traceback: {err}"
    assert lines[0].startswith("gmvae train: error: "), err
    assert re.search(match, lines[0]), f"{match!r} not in {lines[0]!r}"


def test_cli_divergence_exits_3_naming_the_batch(tmp_path, capsys, monkeypatch):
    real = training.SVI.loss

    def nan_in_second_svi_epoch(self, trainer, batch):
        out = real(self, trainer, batch)
        return out * float("nan") if (trainer.epoch, trainer.batch) == (2, 1) else out

    monkeypatch.setattr(training.SVI, "loss", nan_in_second_svi_epoch)
    out = tmp_path / "run"
    argv = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "3")
    code, stdout, err = run_cli(argv, capsys)
    assert code == 3
    assert err.startswith("gmvae: training diverged: the svi loss became nan at epoch 3, batch 2")
    assert "last good checkpoint" in err and stdout == ""
    assert load_checkpoint(out)["epoch"] == 2


def test_cli_resume_with_a_changed_option_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    base = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "0")
    assert run_cli(base, capsys)[0] == 0
    before = snapshot(out)
    code, _, err = run_cli([*base, "--resume", "--clusters", "4"], capsys)
    assert_user_error(code, err, "--clusters differ from the run being resumed.*drop them")
    code, _, err = run_cli([*base, "--resume", "--lr", "0.01", "--seed", "1"], capsys)
    assert_user_error(code, err, "--lr, --seed differ")
    assert snapshot(out) == before
    code, _, err = run_cli([*base, "--force", "--resume"], capsys)
    assert_user_error(code, err, "contradict")


def test_cli_refuses_foreign_malicious_and_mismatched_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    base = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "0")
    assert run_cli(base, capsys)[0] == 0
    # A run of another configuration, its checkpoint copied over this run's.
    other = tmp_path / "other"
    argv = gmvae_train(tmp_path, "--out", str(other), "--pretrain-epochs", "1", "--epochs", "0")
    assert run_cli([*argv, "--latent-dim", "3"], capsys)[0] == 0
    (out / CHECKPOINT_FILE).write_bytes((other / CHECKPOINT_FILE).read_bytes())
    code, _, err = run_cli([*base, "--resume"], capsys)
    assert_user_error(code, err, "written for another model \\(latent_dim 3 there, 2 here\\)")

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    state = load_checkpoint(other)
    state["rng"] = Payload()
    torch.save(state, out / CHECKPOINT_FILE)
    code, _, err = run_cli([*base, "--resume"], capsys)
    assert_user_error(code, err, "refused: it holds a reference to .*system.*could run code")
    assert not marker.exists()

    raw = (other / CHECKPOINT_FILE).read_bytes()
    (out / CHECKPOINT_FILE).write_bytes(raw[: len(raw) // 2])
    code, _, err = run_cli([*base, "--resume"], capsys)
    assert_user_error(code, err, "truncated or corrupt")


def test_cli_second_ctrl_c_exits_130_with_a_message(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run", interrupted)
    code, _, err = run_cli(gmvae_train(tmp_path, "--out", str(tmp_path / "run")), capsys)
    assert code == 130
    assert err.startswith("gmvae: stopped at once") and "--resume" in err


def bad_npy(tmp_path: Path, array: np.ndarray) -> str:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    return str(path)


def with_nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[5, 7] = np.nan
    return x


@pytest.mark.parametrize(
    ("make_data", "extra", "match"),
    [
        (lambda: with_nan(X), [], "1 NaN .* row 5, column 7; drop or impute"),
        (lambda: np.where(np.arange(64) == 3, np.inf, X), [], "infinite .* row 0, column 3"),
        (lambda: X[:, 0], [], "1-D .*reshape"),
        (lambda: X[:0], [], "0 rows"),
        (lambda: X[:1], [], "only 1 row"),
        (lambda: X[:2], [], "fewer rows \\(2\\) than clusters \\(3\\); lower --clusters"),
        (lambda: X[:20, :10] * 255, [], "standardized table; the bernoulli likelihood.*gaussian"),
        (lambda: X, ["--clusters", "0"], "--clusters must be at least 1"),
        (lambda: X, ["--latent-dim", "-1"], "--latent-dim must be at least 1"),
        (lambda: X, ["--lr", "-0.1"], "--lr must be positive"),
        (lambda: X, ["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, make_data, extra, match):
    argv = gmvae_train(tmp_path, "--out", str(tmp_path / "run"), *extra)
    argv[argv.index("--data") + 1] = bad_npy(tmp_path, make_data())
    code, stdout, err = run_cli(argv, capsys)
    assert_user_error(code, err, match)
    assert stdout == ""


def test_cli_a_binary_table_that_is_not_square_trains_the_way_the_messages_say(tmp_path, capsys):
    """Issue 15 (#24): 0/1 data of 10 columns is a table, which the Bernoulli likelihood refuses,
    and --kind image refused it as not square without saying what would work."""
    binary = (X[:, :10] > 0.5).astype(np.uint8)
    argv = gmvae_train(tmp_path, "--out", str(tmp_path / "run"))
    argv[argv.index("--data") + 1] = bad_npy(tmp_path, binary)
    assert_user_error(*run_cli(argv, capsys)[::2], "bernoulli likelihood.*--kind image")
    code, _, err = run_cli([*argv, "--kind", "image"], capsys)
    assert_user_error(code, err, r"not a square image.*reshape\(len\(x\), 1, 10\)")
    assert "--augment-rotation 0 --augment-shift 0" in err and "--likelihood gaussian" in err
    np.save(tmp_path / "strips.npy", binary.reshape(len(binary), 1, 10))
    argv[argv.index("--data") + 1] = str(tmp_path / "strips.npy")
    code, _, err = run_cli(argv, capsys)  # gmvae_train already turns augmentation off
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["likelihood"] == (
        "bernoulli"
    )


def test_cli_labels_of_another_length(tmp_path, capsys):
    path = tmp_path / "d.npz"
    np.savez(path, images=X.reshape(-1, 8, 8), labels=LABELS[:-1])
    argv = gmvae_train(tmp_path, "--out", str(tmp_path / "run"))
    argv[argv.index("--data") + 1] = str(path)
    assert_user_error(*run_cli(argv, capsys)[::2], "239 labels for 240 rows")


def test_cli_refuses_data_larger_than_memory(tmp_path, capsys, monkeypatch):
    """The loader compares the source and its float32 copy with MemAvailable before allocating;
    images in an .npy file are read from disk as they are used, so they make no such copy."""
    monkeypatch.setattr(dataset, "_BASE_MEMORY_BYTES", 0)
    # X: 15,360 float32 values need (4 + 4) bytes each = 122,880 bytes, against 80% of available
    monkeypatch.setattr(dataset, "available_memory_bytes", lambda: 120_000)
    argv = gmvae_train(tmp_path, "--out", str(tmp_path / "run"))
    streamed = argv[argv.index("--data") + 1]
    copied = tmp_path / "digits240.npz"
    np.savez(copied, X=X)
    argv[argv.index("--data") + 1] = str(copied)
    code, _, err = run_cli(argv, capsys)
    assert_user_error(code, err, "needs about 0.0 GiB but only 0.0 GiB .*subset of the rows")
    assert isinstance(load_data(streamed).x, ScaledRows)  # nothing to refuse
    monkeypatch.setattr(dataset, "available_memory_bytes", lambda: 200_000)
    assert len(load_data(copied)) == len(X)


# ----------------------------------------------------------------------------------------------
# A real Ctrl-C


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX SIGINT delivery")
def test_ctrl_c_saves_a_checkpoint_and_resume_ends_where_an_uninterrupted_run_would(
    tmp_path, capsys
):
    out = tmp_path / "run"
    argv = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "100000")
    command = [sys.executable, "-m", "pyro_gmvae", *argv]
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # as one_torch_thread, for equal results
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / METRICS_FILE).exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no epoch finished within 60 s"
            time.sleep(0.05)
        time.sleep(0.3)  # land somewhere inside a later epoch
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.startswith("gmvae: training interrupted ") and "--resume" in stderr
    assert "Traceback" not in stderr
    state = load_checkpoint(out)  # loadable, and says where training stopped
    stopped = state["epoch"] + (state["batch"] > 0)

    # Resumed in this process (a second interpreter would double the test's time).
    resume = [*argv, "--resume", "--epochs", str(stopped)]  # 1 pretrain + 1 anchor + stopped SVI
    assert cli.main(resume) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == stopped + 2
    assert [r["epoch"] for r in read_metrics(out)] == list(range(1, stopped + 3))

    # The same run uninterrupted, in this process.
    straight = tmp_path / "straight"
    argv_straight = gmvae_train(
        tmp_path, "--out", str(straight), "--pretrain-epochs", "1", "--epochs", str(stopped)
    )
    assert cli.main(argv_straight) == 0
    resumed, uninterrupted = load_checkpoint(out)["model"], load_checkpoint(straight)["model"]
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    losses = [r["loss"] for r in read_metrics(out)]
    assert losses == [r["loss"] for r in read_metrics(straight)]


# ----------------------------------------------------------------------------------------------
# Bad input through the Python API


@pytest.mark.parametrize(
    ("x", "labels", "match"),
    [
        (with_nan(X), None, "1 NaN .* row 5, column 7"),
        (torch.as_tensor(with_nan(X)), None, "1 NaN .* row 5, column 7"),
        (np.full((4, 64), 1e300), None, "infinite"),  # finite float64, inf as float32
        (X[:, 0], None, "1-D"),
        (X.reshape(-1, 8, 8), None, "shape \\(240, 8, 8\\).*flatten images"),
        (X[:, :10], None, "shape \\(240, 10\\); the model expects \\(N, 64\\)"),
        ([[0.1] * 64, [0.2] * 63], None, "cannot convert to an array.*rectangular"),
        (X[:0], None, "0 rows"),
        (X[:1], None, "only 1 row"),
        (X[:2], None, "fewer rows \\(2\\) than clusters \\(3\\)"),
        (X * 255, None, "values range over \\[0, 255\\].*bernoulli.*divide grey levels by 255"),
        (X, LABELS[:-1], "239 labels for 240 rows of data; pass one label per row"),
    ],
)
def test_bad_input_to_fit_raises_data_error(x, labels, match):
    pyro.set_rng_seed(0)
    model = GMVAE(model_config())
    with pytest.raises(DataError, match=match):
        fit(model, x, train_config(), labels=labels, progress=False)


@pytest.mark.parametrize(
    ("model_options", "train_options", "match"),
    [
        ({"clusters": 0}, {}, "--clusters must be at least 1, not 0"),
        ({"latent_dim": -1}, {}, "--latent-dim must be at least 1"),
        ({"hidden": (16, 0)}, {}, "--hidden sizes must be positive"),
        ({}, {"lr": -1e-3}, "--lr must be positive, not -0.001"),
        ({}, {"lr": float("nan")}, "--lr must be a finite number, not nan"),
        ({}, {"beta": float("inf")}, "--beta must be a finite number, not inf"),
        ({}, {"clip_norm": float("nan")}, "--clip-norm must be a finite number, not nan"),
        ({}, {"seed": -1}, "--seed must be in 0..4294967295, not -1"),
        ({}, {"epochs": -1}, "--epochs must be >= 0"),
        ({}, {"device": "tpu"}, "--device must be cpu or cuda"),
    ],
)
def test_impossible_options_raise_config_error(model_options, train_options, match):
    with pytest.raises(ConfigError, match=match):
        model = GMVAE(model_config(**model_options))
        fit(model, X, train_config(**train_options), progress=False)


# ----------------------------------------------------------------------------------------------
# Properties of the model's validators

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
D = 5
_MODEL = GMVAE(model_config(n_features=D, image_shape=None))


def unit_arrays() -> st.SearchStrategy[np.ndarray]:
    """(3..12, D) float32 or float64 arrays of values in [0, 1]."""
    dtypes = st.sampled_from([np.float32, np.float64])
    shapes = st.tuples(st.integers(3, 12), st.just(D))
    return dtypes.flatmap(
        lambda dt: hnp.arrays(dt, shapes, elements=st.floats(0, 1, width=32).map(dt))
    )


@PROPERTY
@given(x=unit_arrays(), as_tensor=st.booleans())
def test_any_finite_unit_array_of_the_right_width_is_accepted(x, as_tensor):
    given_x = torch.as_tensor(x) if as_tensor else x
    t = _MODEL.as_tensor(given_x)
    assert t.dtype == torch.float32 and t.shape == x.shape
    assert torch.equal(t, torch.as_tensor(x, dtype=torch.float32))
    # No pretraining, so no mixture start and its checks of the rows: only the input path.
    trainer = Trainer(_MODEL, given_x, train_config(pretrain_epochs=0), progress=False)
    assert torch.equal(trainer.x, t)


@PROPERTY
@given(
    x=unit_arrays(),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    where=st.tuples(st.integers(0, 100), st.integers(0, D - 1)),
    as_tensor=st.booleans(),
)
def test_any_non_finite_value_raises_data_error(x, bad, where, as_tensor):
    x = x.copy()
    row = where[0] % len(x)
    x[row, where[1]] = bad
    given_x = torch.as_tensor(x) if as_tensor else x
    with pytest.raises(DataError, match=f"the first at row {row}, column {where[1]}"):
        _MODEL.as_tensor(given_x)
    with pytest.raises(DataError, match="NaN .* infinite"):
        Trainer(_MODEL, given_x, train_config(), progress=False)


@PROPERTY
@given(
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=4),
    fill=st.floats(allow_nan=True, allow_infinity=True),
    as_tensor=st.booleans(),
)
def test_any_shape_is_accepted_only_as_rows_of_the_models_width(shape, fill, as_tensor):
    """Whatever the shape and values, the validator either returns (N, D) finite float32 or
    raises DataError, never another exception."""
    x = np.full(shape, fill, dtype=np.float64)
    with np.errstate(over="ignore"):
        representable = bool(np.isfinite(np.float32(fill)))
    given_x = torch.as_tensor(x) if as_tensor else x
    try:
        t = _MODEL.as_tensor(given_x)
    except DataError:
        ok = len(shape) == 2 and shape[0] > 0 and shape[1] == D and representable
        assert not ok, f"valid input {shape} of {fill} was refused"
    else:
        assert tuple(t.shape) == (shape[0], D) and len(shape) == 2
        assert shape[0] > 0 or as_tensor  # empty: refused as an array, an empty tensor passes
        assert bool(torch.isfinite(t).all())


# ----------------------------------------------------------------------------------------------
# A run directory under hostile use: every option checked before anything is written, one writer
# at a time, no resume on other data, signals handled as Ctrl-C (issue 15)


def run_bytes(run: Path) -> dict[str, bytes]:
    """Every file of a run directory (figures too), by relative path, but its lock file."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_a_command_that_fails_before_training_leaves_nothing_that_blocks_its_retry(
    tmp_path, capsys
):
    """--device cuda without a GPU left config.json behind; the retry was refused (#1)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda would train")
    out = tmp_path / "run"
    argv = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "1")
    code, _, err = run_cli([*argv, "--device", "cuda"], capsys)
    assert_user_error(code, err, "no CUDA device")
    assert not out.exists()
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--seed", "-1"], "--seed must be in"),
        (["--device", "cpu:abc"], "--device 'cpu:abc' is not a device"),
        (["--beta", "inf"], "--beta must be a finite number"),
        (["--clip-norm", "nan"], "--clip-norm must be a finite number"),
        (["--init", "spectral", "--init-neighbors", "100000"], "--init-neighbors 100000"),
    ],
)
def test_force_with_a_bad_option_leaves_the_old_run_whole(tmp_path, capsys, flags, match):
    """--force deleted the old run, then failed on an option checked too late (#11)."""
    out = tmp_path / "run"
    argv = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "1")
    assert run_cli(argv, capsys)[0] == 0
    before = run_bytes(out)
    code, _, err = run_cli([*argv, "--force", *flags], capsys)
    assert_user_error(code, err, match)
    assert run_bytes(out) == before


def test_resume_with_a_bad_device_writes_nothing(tmp_path, capsys):
    """--resume --device cpu:abc rewrote config.json before failing, and every later --resume
    failed until the flag was given again (#12)."""
    out = tmp_path / "run"
    argv = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "1")
    assert run_cli(argv, capsys)[0] == 0
    before = run_bytes(out)
    code, _, err = run_cli(["train", "--out", str(out), "--resume", "--device", "cpu:abc"], capsys)
    assert_user_error(code, err, "is not a device")
    assert run_bytes(out) == before
    code, _, err = run_cli(["train", "--out", str(out), "--resume", "--epochs", "2"], capsys)
    assert code == 0, err


def test_resume_on_other_data_is_refused_naming_what_changed(tmp_path, capsys):
    """A data file that shrank, or an edited heldout_fraction, resumed silently (#13)."""
    out = tmp_path / "run"
    argv = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "1")
    assert run_cli(argv, capsys)[0] == 0
    np.save(tmp_path / "digits240.npy", X[:200])
    resume = ["train", "--out", str(out), "--resume", "--epochs", "2"]
    code, _, err = run_cli(resume, capsys)
    assert_user_error(code, err, "trained on other data \\(240 rows of 64 features there, 200")
    np.save(tmp_path / "digits240.npy", X[::-1])  # same size, other rows
    code, _, err = run_cli(resume, capsys)
    assert_user_error(code, err, "the same size, but other values")
    np.save(tmp_path / "digits240.npy", X)
    config = json.loads((out / "config.json").read_text())
    config["data"]["heldout_fraction"] = 0.25
    (out / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(resume, capsys)
    assert_user_error(code, err, "trained on other data \\(240 rows of 64 features there, 180")
    config["data"]["heldout_fraction"] = 0.0
    (out / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(resume, capsys)
    assert code == 0, err


def test_a_second_writer_is_refused_while_a_run_holds_its_directory(tmp_path, capsys):
    """Two --force runs into one directory mixed one's config with the other's checkpoint
    (#10). The first holds the lock; a real second process is refused and changes nothing."""
    from pyro_gmvae.runs import locked

    out = tmp_path / "run"
    argv = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "1")
    assert run_cli(argv, capsys)[0] == 0
    before = run_bytes(out)
    with locked(out):
        second = subprocess.run(
            [sys.executable, "-m", "pyro_gmvae", *argv, "--force"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert second.returncode == 2, second.stderr
    assert f"is in use by a running gmvae command (pid {os.getpid()})" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert run_bytes(out) == before


def test_the_lock_of_a_killed_process_does_not_block_the_next_run(tmp_path):
    """flock is released by the kernel when its holder dies: no stale lock (#10)."""
    from pyro_gmvae.runs import LOCK_FILE, locked

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from pyro_gmvae.runs import locked\n"
            f"with locked(Path({str(run)!r})):\n    print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match="is in use"), locked(run):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert (run / LOCK_FILE).exists()  # the file stays; the lock is gone with its holder
    with locked(run):
        pass


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_save_say_so_and_the_run_resumes(tmp_path, signum, status):
    """They exited 143/129 with no message and lost the progress since the last periodic
    checkpoint (#15). The signal arrives once the run has checkpointed (every 20 epochs) and
    trains on; what it saves is where it stopped, past that checkpoint."""
    out = tmp_path / "run"
    argv = gmvae_train(
        tmp_path,
        "--out",
        str(out),
        "--pretrain-epochs",
        "2",
        "--epochs",
        "100000",
        "--checkpoint-every",
        "20",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyro_gmvae", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / CHECKPOINT_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # training on, past the periodic checkpoint
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    name = signal.Signals(signum).name
    assert "training interrupted" in err and f"({name}); resume with --resume" in err, err
    state = load_checkpoint(out)
    assert (state["epoch"], state["batch"]) > (20, 0)
    more = state["epoch"] - PRETRAIN - ANCHOR + 1  # SVI epochs: one past the saved position
    resumed = subprocess.run(
        [sys.executable, "-m", "pyro_gmvae", "train", "--out", str(out), "--resume"]
        + ["--epochs", str(more), "--no-progress", "--no-plots"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(out)["epoch"] == PRETRAIN + ANCHOR + more


def test_identical_rows_are_refused_before_pretraining(tmp_path, capsys):
    """The t-SNE start segfaulted on identical rows, after the pretraining, on every --resume
    (#16)."""
    np.save(tmp_path / "same.npy", np.repeat(X[:1], 100, axis=0))
    out = tmp_path / "run"
    argv = gmvae_train(tmp_path, "--out", str(out), "--epochs", "1")
    argv[argv.index("--data") + 1] = str(tmp_path / "same.npy")
    code, _, err = run_cli([*argv, "--init", "tsne", "--pretrain-epochs", "150"], capsys)
    assert_user_error(code, err, "take only 1 distinct values, fewer than the 3 clusters")
    assert not out.exists()


@pytest.mark.parametrize(
    ("rows", "flags", "match"),
    [
        (10, ["--init", "spectral"], "--init-neighbors 10 needs more than that many"),
        (3, ["--init", "tsne", "--tsne-input", "auto"], None),  # as many clusters as rows
        (30, ["--init", "tsne", "--tsne-input", "data"], None),  # fewer rows than components
        (3, ["--init", "umap"], None),  # the codes and the data side by side, K rows
    ],
)
def test_small_data_starts_or_is_refused_before_pretraining(tmp_path, capsys, rows, flags, match):
    """#17: the data's map took 50 principal components of 30 rows after the pretraining;
    spectral with 10 rows, and K equal to the rows, failed there too."""
    np.save(tmp_path / "few.npy", X[:rows])
    out = tmp_path / "run"
    argv = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "1")
    argv[argv.index("--data") + 1] = str(tmp_path / "few.npy")
    argv[argv.index("--batch-size") + 1] = "10"
    code, _, err = run_cli([*argv, *flags], capsys)
    if match is None:
        assert code == 0, err
    else:
        assert_user_error(code, err, match)
        assert not out.exists()


def test_a_crafted_checkpoint_position_is_refused(tmp_path):
    """A checkpoint claiming epoch -5 wrote epochs -4..0 (#24)."""
    make_trainer(tmp_path, train_config(epochs=1)).run()
    state = load_checkpoint(tmp_path)
    state["epoch"] = -5
    from pyro_gmvae.checkpoints import save_checkpoint

    save_checkpoint(tmp_path / CHECKPOINT_FILE, {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(CheckpointError, match="does not fit this model \\(a position of epoch -5"):
        make_trainer(tmp_path).resume()


@pytest.mark.parametrize(
    "config_text",
    [
        "[1, 2]",
        "null",
        '{"data": {}, "model": {"clusters": "three"}, "train": {}}',
        '{"data": {}, "model": {}, "train": {"epochs": 2.5}}',
        '{"data": {}, "model": {"hidden": [16, "x"]}, "train": {}}',
        '{"data": [], "model": {}, "train": {}}',
        "[" * 100_000 + "]" * 100_000,
    ],
)
def test_a_hand_edited_config_is_one_line_on_resume(tmp_path, capsys, config_text):
    """Wrong types, a top-level list or null, deep nesting gave tracebacks (#22)."""
    out = tmp_path / "run"
    argv = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "1")
    assert run_cli(argv, capsys)[0] == 0
    (out / "config.json").write_text(config_text)
    code, _, err = run_cli(["train", "--out", str(out), "--resume"], capsys)
    assert_user_error(code, err, "config")


def test_outputs_that_cannot_be_written_are_one_line(tmp_path, capsys):
    """An --out under a file gave a traceback for train, sample and ppc (#22)."""
    (tmp_path / "file").write_text("not a directory")
    argv = gmvae_train(tmp_path, "--out", str(tmp_path / "file" / "run"), "--epochs", "1")
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    out = tmp_path / "run"
    argv = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "1")
    assert run_cli(argv, capsys)[0] == 0
    for command in (
        ["sample", str(out), "--out", str(tmp_path / "file" / "s.png")],
        [
            "ppc",
            str(out),
            "--data",
            str(tmp_path / "digits240.npy"),
            "--num-samples",
            "2",
            "--out",
            str(tmp_path / "file" / "report"),
            "--no-progress",
        ],
    ):
        code, _, err = run_cli(command, capsys)
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "error: cannot write or read" in lines[0], err


@pytest.mark.parametrize(
    ("command", "match"),
    [
        (["evaluate", "--num-samples", "100000000"], "--num-samples must be in 1..100000"),
        (["ppc", "--num-samples", "100000000", "--out", "report"], "need .* GiB, more than"),
    ],
)
def test_sizes_beyond_the_bounds_are_refused_naming_the_bound(tmp_path, capsys, command, match):
    """--num-samples 100000000 gave allocation tracebacks (#21)."""
    out = tmp_path / "run"
    argv = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "1")
    assert run_cli(argv, capsys)[0] == 0
    name, *rest = command
    rest = [str(tmp_path / r) if r == "report" else r for r in rest]
    argv = [name, str(out), "--data", str(tmp_path / "digits240.npy"), *rest]
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    assert re.search(match, err), err


@pytest.mark.parametrize("command", ["evaluate", "ppc", "sample"])
def test_ctrl_c_outside_training_is_one_line_exit_130(tmp_path, capsys, monkeypatch, command):
    """Ctrl-C in evaluate, ppc and sample gave tracebacks (#22)."""
    out = tmp_path / "run"
    argv = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "1")
    assert run_cli(argv, capsys)[0] == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(GMVAE, "load", interrupted)
    data = ["--data", str(tmp_path / "digits240.npy")]
    argv = {
        "evaluate": ["evaluate", str(out), *data],
        "ppc": ["ppc", str(out), *data, "--out", str(tmp_path / "r")],
        "sample": ["sample", str(out), "--out", str(tmp_path / "s.png")],
    }[command]
    code, _, err = run_cli(argv, capsys)
    assert code == 130 and err.strip() == f"gmvae {command}: interrupted"


def test_damaged_model_checkpoints_are_one_line(tmp_path, capsys):
    """GMVAE.load on a checkpoint without weights, with a non-string config or NaN weights
    gave tracebacks (#22); a scaler.json that is not JSON too."""
    from pyro_gmvae.checkpoints import save_checkpoint

    pyro.set_rng_seed(0)
    model = GMVAE(model_config())
    model.save(tmp_path / "m")
    state = load_checkpoint(tmp_path / "m")
    cases = {
        "no weights": {k: v for k, v in state.items() if k not in ("model", "format")},
        "config not a string": {**state, "config": 7},
        "NaN weights": {
            **state,
            "model": {**state["model"], "cluster_means": torch.full((3, 2), float("nan"))},
        },
    }
    for what, broken in cases.items():
        save_checkpoint(
            tmp_path / "m" / CHECKPOINT_FILE, {k: v for k, v in broken.items() if k != "format"}
        )
        with pytest.raises(CheckpointError):
            GMVAE.load(tmp_path / "m")
        code, _, err = run_cli(
            ["sample", str(tmp_path / "m"), "--out", str(tmp_path / "s.png")], capsys
        )
        assert code == 2 and len(err.strip().splitlines()) == 1, (what, err)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("x.npy", None, "is a numpy .npy array, not a checkpoint"),
        ("config.json", b'{"data": {}}', "is not a checkpoint \\(pyro_gmvae writes zip archives"),
        ("notes.txt", b"my notes", "is not a checkpoint"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path, capsys, name, content, match):
    """A plain .npy (or any other file) passed as RUN_DIR was called a pickle that could run
    code (#23)."""
    path = tmp_path / name
    if content is None:
        np.save(path, X)
    else:
        path.write_bytes(content)
    code, _, err = run_cli(["sample", str(path), "--out", str(tmp_path / "s.png")], capsys)
    assert code == 2
    assert re.search(match, err) and "run code" not in err, err


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_a_checkpoint_that_is_not_a_regular_file_is_refused_unread(tmp_path, target):
    """A checkpoint.pt linked to /dev/zero was read until the kernel killed the process (#20)."""
    run = tmp_path / "run"
    run.mkdir()
    if target == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs on this platform")
        os.mkfifo(tmp_path / "pipe")  # opening it for reading would block forever
        target = tmp_path / "pipe"
    elif not Path(target).exists():
        pytest.skip(f"{target} is absent")
    (run / CHECKPOINT_FILE).symlink_to(target)
    with pytest.raises(CheckpointError, match="is not a regular file"):
        load_checkpoint(run)


def test_a_checkpoint_beyond_the_size_bound_is_refused_unread(tmp_path, monkeypatch):
    from pyro_gmvae import checkpoints

    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(b"\0" * 4096)
    monkeypatch.setattr(checkpoints, "MAX_CHECKPOINT_BYTES", 1024)
    with pytest.raises(CheckpointError, match="more than any pyro_gmvae checkpoint"):
        load_checkpoint(path)


@pytest.fixture
def iris_run(tmp_path, capsys) -> tuple[Path, Path]:
    """A tiny run on iris as a CSV whose labels are the strings of a 'species' column."""
    from sklearn.datasets import load_iris

    iris = load_iris()
    csv = tmp_path / "iris.csv"
    rows = [",".join([*iris.feature_names, "species"])]
    rows += [
        ",".join([*map(str, features), iris.target_names[label]])
        for features, label in zip(iris.data, iris.target, strict=True)
    ]
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    argv = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "1")
    argv[argv.index("--data") + 1] = str(csv)
    code, _, err = run_cli([*argv, "--label-column", "species", "--likelihood", "gaussian"], capsys)
    assert code == 0, err
    return out, csv


def test_evaluate_and_ppc_take_the_runs_label_column(iris_run, capsys):
    """evaluate ignored the run's saved label column: "column 'species' is not numeric" (#2)."""
    out, csv = iris_run
    code, stdout, err = run_cli(["evaluate", str(out), "--data", str(csv), "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["n"] == 150 and result["n_classes"] == 3 and result["accuracy"] is not None


def test_a_table_run_checked_on_images_names_the_mismatch(iris_run, capsys):
    """ppc of a table run on images blamed --label-column, which was not given (#23)."""
    out, _ = iris_run
    code, _, err = run_cli(
        ["ppc", str(out), "--data", "digits", "--out", str(out.parent / "r"), "--no-progress"],
        capsys,
    )
    assert code == 2
    assert "label" not in err
    assert re.search("has 64 features but .* on 4", err), err


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``path`` for the block, or a skip where this process may not
    mount one (it takes root, as CI and the development box have)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.parametrize("how", ["disk full", "read-only remount"])
def test_a_run_whose_disk_fills_or_turns_read_only_stops_in_one_line_keeping_its_checkpoint(
    tmp_path, capsys, how
):
    """A full disk or a read-only remount mid-run gave a traceback (#22); the last good
    checkpoint survives, as atomic writes promise, and the run resumes once there is room."""
    with tmpfs(tmp_path / "mnt", "2m") as mnt:
        out = mnt / "run"
        argv = gmvae_train(tmp_path, "--out", str(out), "--pretrain-epochs", "1", "--epochs", "1")
        assert run_cli(argv, capsys)[0] == 0
        before = (out / CHECKPOINT_FILE).read_bytes()
        if how == "disk full":
            filler = mnt / "filler"
            with open(filler, "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
        else:
            remounted = subprocess.run(
                ["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True
            )
            if remounted.returncode != 0:
                pytest.skip(f"cannot remount read-only here: {remounted.stderr.strip()}")
        resume = ["train", "--out", str(out), "--resume", "--epochs", "3"]
        code, _, err = run_cli(resume, capsys)
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "error: cannot write or read" in lines[0], err
        assert (out / CHECKPOINT_FILE).read_bytes() == before
        if how == "disk full":
            filler.unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        code, _, err = run_cli(resume, capsys)
        assert code == 0, err


def test_a_scaler_that_is_not_json_is_one_line(iris_run, capsys):
    """A scaler.json that is not JSON gave a traceback (#22)."""
    out, csv = iris_run
    (out / "scaler.json").write_text("{not json")
    code, _, err = run_cli(["evaluate", str(out), "--data", str(csv)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "scaler.json is not a scaler saved by gmvae train" in err


def test_ppc_on_a_single_row_is_one_line(iris_run, tmp_path, capsys):
    """ppc on a single row gave a traceback (#22)."""
    out, csv = iris_run
    one = tmp_path / "one.csv"
    lines = csv.read_text().splitlines()
    one.write_text("\n".join(lines[:2]) + "\n")
    code, _, err = run_cli(
        ["ppc", str(out), "--data", str(one), "--out", str(tmp_path / "r"), "--no-progress"], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "need at least 2" in err

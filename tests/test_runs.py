"""Tests for pyro_gmvae.runs: atomic writes, run directories, and checkpoints that cannot run code."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from pyro_gmvae import files
from pyro_gmvae.checkpoints import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CONFIG_FILE,
    load_checkpoint,
    save_checkpoint,
)
from pyro_gmvae.config import ModelConfig, RunConfig
from pyro_gmvae.errors import CheckpointError, ConfigError, RunDirectoryError
from pyro_gmvae.files import atomic_write_bytes, atomic_write_text
from pyro_gmvae.model import GMVAE
from pyro_gmvae.runs import prepare_run_directory
from pyro_gmvae.train import METRICS_FILE, read_metrics, write_metrics


def tiny_model_config(**overrides) -> ModelConfig:
    values = dict(clusters=3, latent_dim=2, hidden=(16,), n_features=16, image_shape=(4, 4))
    return ModelConfig(**(values | overrides))


def leftovers(directory: Path) -> list[str]:
    """Temporary files an atomic write might have left behind."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert leftovers(target.parent) == []


def test_atomic_write_files_follow_the_umask(tmp_path):
    """Run files are shared: not the owner-only mode that tempfile.mkstemp would give them."""
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_bytes(tmp_path / "f", b"x")
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch, fail_at):
    target = tmp_path / CHECKPOINT_FILE
    save_checkpoint(target, {"model": {"w": torch.arange(4.0)}})
    before = target.read_bytes()

    def fail(*args, **kwargs):
        raise KeyboardInterrupt  # the worst case: not even an Exception

    if fail_at == "write":
        real_fdopen = os.fdopen

        class FailingFile(io.BufferedWriter):
            def write(self, data):
                super().write(data[: len(data) // 2])
                fail()

        monkeypatch.setattr(
            files.os, "fdopen", lambda fd, mode: FailingFile(real_fdopen(fd, mode, buffering=0))
        )
    else:
        monkeypatch.setattr(files.os, fail_at, fail)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, {"model": {"w": torch.zeros(1000)}})
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []
    assert torch.equal(load_checkpoint(target)["model"]["w"], torch.arange(4.0))


def test_metrics_round_trip_and_corrupt_metrics_are_reported(tmp_path):
    records = [{"epoch": 1, "loss": 2.5}, {"epoch": 2, "loss": 2.0}]
    write_metrics(tmp_path / METRICS_FILE, records)
    assert read_metrics(tmp_path) == records
    assert read_metrics(tmp_path / "absent") == []
    (tmp_path / METRICS_FILE).write_text('{"epoch": 1}\n{"epoch": 2, "lo')
    with pytest.raises(RunDirectoryError, match="not readable JSON lines.*delete it"):
        read_metrics(tmp_path)


@pytest.mark.parametrize(
    "lines",
    [
        '{"epoch": 1}\n[1, 2]\n',  # JSON, but not a record
        '{"epoch": 1}\n{"epoch": 1}\n',  # a duplicate
        '{"epoch": 2}\n',  # a gap
        "7\n",
        "[" * 100_000 + "\n",  # deeper than the JSON parser's recursion
    ],
)
def test_metrics_that_are_json_but_not_records_are_refused(tmp_path, lines):
    (tmp_path / METRICS_FILE).write_text(lines)
    with pytest.raises(RunDirectoryError, match="is not a run's metrics"):
        read_metrics(tmp_path)


# ----------------------------------------------------------------------------------------------
# Run directories


def make_run(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    RunConfig(model=tiny_model_config()).save(path / CONFIG_FILE)
    write_metrics(path / METRICS_FILE, [{"epoch": 1}])
    save_checkpoint(path / CHECKPOINT_FILE, {"epoch": 1})
    return path


def test_new_run_directory_is_created_and_an_empty_one_reused(tmp_path):
    assert prepare_run_directory(tmp_path / "a" / "b", resume=False, force=False).is_dir()
    (tmp_path / "empty").mkdir()
    assert prepare_run_directory(tmp_path / "empty", resume=False, force=False).is_dir()


def test_existing_run_is_never_overwritten_without_force(tmp_path):
    run = make_run(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(RunDirectoryError, match="not empty; pass --resume.*--force"):
        prepare_run_directory(run, resume=False, force=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_force_removes_the_runs_own_files_and_figures_only(tmp_path):
    """Old figures would pass for the new run's under --no-plots (issue 15, item 14)."""
    run = make_run(tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    (run / "figures").mkdir()
    (run / "figures" / "old.png").write_bytes(b"png")
    prepare_run_directory(run, resume=False, force=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert (run / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("resume", [False, True])
def test_temporary_files_of_a_killed_writer_are_removed(tmp_path, resume):
    """kill -9 mid-write leaves .checkpoint.pt.PID.HEX.tmp; the next writer removes it."""
    run = make_run(tmp_path / "run")
    (run / ".checkpoint.pt.123.abcd1234.tmp").write_bytes(b"half")
    (run / "figures").mkdir()
    (run / "figures" / ".latent.png.123.abcd1234.tmp").write_bytes(b"half")
    prepare_run_directory(run, resume=resume, force=not resume)
    assert leftovers(run) == []
    assert not (run / "figures").exists() or leftovers(run / "figures") == []
    assert (run / CHECKPOINT_FILE).exists() == resume


@pytest.mark.parametrize(
    "config_text",
    [
        None,  # no config.json at all
        '{"name": "my web app", "port": 8080}',  # someone else's config.json
        "{}",
        "[1, 2]",
        "not json",
        '{"data": {}, "model": {"colour": "red"}, "train": {}}',  # unknown option
    ],
)
def test_force_refuses_directories_that_are_not_runs(tmp_path, config_text):
    project = tmp_path / "project"
    project.mkdir()
    (project / "checkpoint.pt").write_bytes(b"someone else's")
    if config_text is not None:
        (project / CONFIG_FILE).write_text(config_text)
    before = {p.name: p.read_bytes() for p in project.iterdir()}
    with pytest.raises(RunDirectoryError, match="not a pyro_gmvae run directory.*another --out"):
        prepare_run_directory(project, resume=False, force=True)
    assert {p.name: p.read_bytes() for p in project.iterdir()} == before


def test_run_directory_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirectoryError, match="is a file, not a directory"):
        prepare_run_directory(tmp_path / "file", resume=False, force=False)
    with pytest.raises(RunDirectoryError, match="contradict"):
        prepare_run_directory(tmp_path / "x", resume=True, force=True)
    with pytest.raises(RunDirectoryError, match="holds no checkpoint.pt; start a new run"):
        prepare_run_directory(tmp_path / "x", resume=True, force=False)
    started = tmp_path / "started"
    started.mkdir()
    RunConfig(model=tiny_model_config()).save(started / CONFIG_FILE)
    with pytest.raises(RunDirectoryError, match="before its first checkpoint.*--force"):
        prepare_run_directory(started, resume=True, force=False)
    run = make_run(tmp_path / "run")
    assert prepare_run_directory(run, resume=True, force=False) == run


# ----------------------------------------------------------------------------------------------
# Checkpoints: round trip, format, corruption


def test_checkpoint_round_trips_exactly(tmp_path):
    state = {
        "model": {"w": torch.randn(3, 4), "b": torch.arange(3)},
        "epoch": 7,
        "note": "text",
        "nested": {"xs": [1, 2.5, None], "t": (1, 2)},
    }
    save_checkpoint(tmp_path / CHECKPOINT_FILE, state)
    loaded = load_checkpoint(tmp_path)  # a directory means its checkpoint.pt
    assert loaded["format"] == CHECKPOINT_FORMAT and loaded["version"] == CHECKPOINT_VERSION
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert torch.equal(loaded["model"]["b"], state["model"]["b"])
    assert (loaded["epoch"], loaded["note"], loaded["nested"]) == (7, "text", state["nested"])


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*gmvae train"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.1, 10, 0])
def test_truncated_checkpoint_is_reported_as_such(tmp_path, keep):
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, {"model": {"w": torch.randn(500)}})
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*train again"):
        load_checkpoint(path)


def test_checkpoint_with_a_damaged_tensor_is_not_loaded_silently(tmp_path):
    """torch.load itself would return the damaged weights; the zip's CRC-32 catches them."""
    path = tmp_path / CHECKPOINT_FILE
    weights = torch.randn(500)
    save_checkpoint(path, {"model": {"w": weights}})
    raw = bytearray(path.read_bytes())
    start = raw.find(weights.numpy().tobytes())
    assert start > 0
    raw[start + 100 : start + 104] = b"\x00\x00\xc0\x7f"  # one weight becomes NaN
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="archive/data/0 fails its checksum.*another copy"):
        load_checkpoint(path)


def test_other_format_version_names_both_versions(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION + 1}, path)
    with pytest.raises(
        CheckpointError,
        match=f"format version {CHECKPOINT_VERSION + 1}, this pyro_gmvae reads version "
        f"{CHECKPOINT_VERSION}",
    ):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [{"w": torch.ones(2)}, [1, 2], torch.ones(2)])
def test_foreign_torch_file_is_not_a_checkpoint(tmp_path, content):
    torch.save(content, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="not a pyro_gmvae checkpoint"):
        load_checkpoint(tmp_path)


def test_model_checkpoint_of_another_configuration_is_refused(tmp_path):
    """GMVAE.load rebuilds the saved configuration; custom networks that don't fit are refused."""
    torch.manual_seed(0)
    GMVAE(tiny_model_config(latent_dim=2)).save(tmp_path / "m")
    from pyro_gmvae.networks import Encoder

    wrong_encoder = Encoder(16, (16,), 5)  # latent size 5, the checkpoint has 2
    with pytest.raises(CheckpointError, match="does not fit this model's configuration"):
        GMVAE.load(tmp_path / "m", encoder=wrong_encoder)
    (tmp_path / "bare").mkdir()
    save_checkpoint(tmp_path / "bare" / CHECKPOINT_FILE, {"model": {}})
    with pytest.raises(CheckpointError, match="no model configuration"):
        GMVAE.load(tmp_path / "bare")


# ----------------------------------------------------------------------------------------------
# Untrusted checkpoints cannot run code


class _RunsShell:
    """Unpickling this would run a shell command that creates ``marker``."""

    reference = f"{os.system.__module__}.system"  # posix.system

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _OpensFile:
    """Unpickling this would create ``marker`` through builtins.open."""

    reference = "io.open"

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def malicious_files(tmp_path: Path, payload) -> dict[str, Path]:
    """The same payload three ways: inside a torch.save'd checkpoint with a valid header, as a
    raw pickle of a checkpoint-like dict, and as a bare pickle; each named checkpoint.pt."""
    files = {}
    for how in ("torch.save", "pickle dict", "pickle bare"):
        path = tmp_path / how.replace(" ", "_").replace(".", "_") / CHECKPOINT_FILE
        path.parent.mkdir()
        header = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
        if how == "torch.save":
            torch.save(header | {"model": {"w": torch.ones(1)}, "epoch": payload}, path)
        elif how == "pickle dict":
            path.write_bytes(pickle.dumps(header | {"model": payload}))
        else:
            path.write_bytes(pickle.dumps(payload, protocol=2))
        RunConfig(model=tiny_model_config()).save(path.parent / CONFIG_FILE)
        files[how] = path
    return files


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload_class", [_RunsShell, _OpensFile])
def test_malicious_checkpoint_is_refused_without_running_it(tmp_path, payload_class):
    marker = tmp_path / "pwned"
    files = malicious_files(tmp_path, payload_class(marker))
    for how, path in files.items():
        with pytest.raises(CheckpointError, match="refused.*could run code") as info:
            load_checkpoint(path)
        assert "weights_only=False" not in str(info.value), "never advise the unsafe load"
        with pytest.raises(CheckpointError, match="refused"):
            GMVAE.load(path.parent)
        assert not marker.exists(), f"{how}: the payload ran"
    with pytest.raises(CheckpointError, match=f"a reference to {payload_class.reference}"):
        load_checkpoint(files["torch.save"])
    # The payload is real: an unsafe loader would have run it.
    pickle.loads(files["pickle bare"].read_bytes())
    assert marker.exists()


def test_checkpoint_written_by_torch_save_of_a_module_is_refused(tmp_path):
    """A whole pickled nn.Module (the usual torch.save(model) habit) is code, not weights."""
    path = tmp_path / CHECKPOINT_FILE
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": torch.nn.Linear(2, 2),
        },
        path,
    )
    with pytest.raises(CheckpointError, match="refused.*torch.nn.modules.linear.Linear"):
        load_checkpoint(path)


def test_zip_without_torch_data_is_corrupt(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"not a pickle")
    with pytest.raises(CheckpointError, match="truncated or corrupt|refused"):
        load_checkpoint(path)
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / CHECKPOINT_FILE).write_text(json.dumps({"format": CHECKPOINT_FORMAT}))
    # Neither a zip nor a pickle: named for what it is not, never as a pickle that may run code.
    with pytest.raises(CheckpointError, match="is not a checkpoint \\(pyro_gmvae writes zip"):
        load_checkpoint(tmp_path / "j")


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "{run}", "--data", "digits"],
        ["ppc", "{run}", "--data", "digits", "--out", "{tmp}/ppc"],
        ["sample", "{run}", "--out", "{tmp}/s.png"],
    ],
)
def test_commands_that_load_a_run_refuse_a_malicious_checkpoint(tmp_path, capsys, command):
    from pyro_gmvae import cli

    marker = tmp_path / "pwned"
    path = malicious_files(tmp_path, _RunsShell(marker))["torch.save"]
    argv = [a.format(run=path.parent, tmp=tmp_path) for a in command]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gmvae {command[0]}: error: ") and len(err.splitlines()) == 1
    assert "refused" in err and "could run code" in err
    assert not marker.exists()


@pytest.mark.parametrize(
    "features, image, network, hidden, latent",
    [
        (4, None, "mlp", (32, 32), 2),
        (13, None, "mlp", (104, 104), 6),
        (40, None, "mlp", (256, 256), 10),
        (64, None, "mlp", (500, 500, 2000), 10),
        (16, (4, 4), "mlp", (128, 128), 8),
        (64, (8, 8), "conv", (256,), 10),
        (784, (28, 28), "conv", (256,), 10),
    ],
)
def test_a_network_not_given_is_sized_from_the_data(features, image, network, hidden, latent):
    config = ModelConfig(n_features=features, image_shape=image)
    chosen = {"network": network, "hidden": hidden, "latent_dim": latent}
    assert config.size_from_data() == chosen
    assert (config.network, config.hidden, config.latent_dim) == (network, hidden, latent)
    given = ModelConfig(
        n_features=features, image_shape=image, network="mlp", hidden=(7,), latent_dim=3
    )
    assert given.size_from_data() == {} and (given.hidden, given.latent_dim) == ((7,), 3)


def test_gmvae_train_prints_and_saves_the_network_and_start_it_chose_from_the_data(
    tmp_path, capsys
):
    import numpy as np
    from helpers import blobs

    from pyro_gmvae.runs import train_run
    from pyro_gmvae.train import TrainConfig

    x, _ = blobs(n=60, d=5)
    np.save(tmp_path / "table.npy", x)
    config = RunConfig.from_dict(
        {
            "data": {"data": str(tmp_path / "table.npy"), "kind": "table"},
            "model": {"clusters": 3, "likelihood": "gaussian"},
        }
    )
    config.train = TrainConfig(
        epochs=1, pretrain_epochs=1, anchor_epochs=0, restarts=1, device="cpu"
    )
    train_run(config, tmp_path / "run", progress=False, plots=False)
    assert (
        "chosen from the data's 5 features, without labels: --network mlp, --hidden 40 40, "
        "--latent-dim 2, --init data-gmm, --guide enumerated (pass them to choose)"
        in capsys.readouterr().err
    )
    saved_config = RunConfig.load(tmp_path / "run" / "config.json")
    saved = saved_config.model
    assert (saved.hidden, saved.latent_dim) == ((40, 40), 2)
    assert saved_config.train.init == "data-gmm"  # a resume starts the same way
    assert saved.guide == "enumerated"  # no labels known (config.guide_for)
    assert GMVAE.load(tmp_path / "run").encoder.loc.out_features == 2


def test_a_run_saved_before_the_consistency_term_resumes_without_it():
    """Its config.json has ``aux_weight`` but no ``consistency_weight``: resumed, the run keeps
    the pretraining it began with; a config that names neither takes today's default."""
    saved = RunConfig().to_dict()
    del saved["train"]["consistency_weight"]
    assert RunConfig.from_dict(saved).train.consistency_weight == 0.0
    assert RunConfig.from_dict({**saved, "train": {"seed": 3}}).train.consistency_weight == (
        RunConfig().train.consistency_weight
    )
    saved["train"]["consistency_weight"] = 5.0
    assert RunConfig.from_dict(saved).train.consistency_weight == 5.0


def test_a_run_saved_before_longer_pretraining_with_labels_resumes_as_it_began():
    """A config.json with ``aux_weight`` but no ``consistency_pretrain_factor`` was saved when
    pretraining was as long with labels as without: resumed, its recipe keeps that length."""
    saved = RunConfig().to_dict()
    del saved["train"]["consistency_pretrain_factor"]
    assert RunConfig.from_dict(saved).train.consistency_pretrain_factor == 1.0
    saved["train"]["consistency_pretrain_factor"] = 3.0
    assert RunConfig.from_dict(saved).train.consistency_pretrain_factor == 3.0
    fresh = RunConfig.from_dict({"train": {"seed": 3}}).train
    assert fresh.consistency_pretrain_factor == RunConfig().train.consistency_pretrain_factor


def test_a_run_saved_when_the_umap_start_made_one_map_resumes_with_that_map():
    """Its config.json holds ``umap_neighbors`` as one number: it loads as that one value, so a
    resumed run's start is the map it began with, not today's several."""
    saved = RunConfig().to_dict()
    saved["train"]["umap_neighbors"] = 20
    assert RunConfig.from_dict(saved).train.umap_neighbors == (20,)
    with pytest.raises(ConfigError, match="umap_neighbors"):
        RunConfig.from_dict({"train": {"umap_neighbors": "20"}})

"""Data-parallel training (pyro_gmvae/distributed.py): two CPU processes with gloo.

Two launches, each a few seconds of training and ~10 s of start-up: ``torchrun`` running
``distributed_worker.py`` (the Python API: a run, then the same run resumed on two processes),
and ``gmvae train --devices 2`` (Lightning starting the second process itself), stopped by
Ctrl-C and resumed in one process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from distributed_worker import BATCH, PRETRAIN_EPOCHS, N, config, model_config, recipe
from helpers import blobs
from torch.utils.data import DistributedSampler

from pyro_gmvae import GMVAE, DistributedConfig
from pyro_gmvae.cli import main
from pyro_gmvae.distributed import GlobalEpochSampler, check_lightning, launch_rank
from pyro_gmvae.errors import ConfigError
from pyro_gmvae.train import SVI, Pretrain, Recipe, Trainer, read_metrics

pytest.importorskip("lightning", reason="the 'distributed' extra (in 'test') is not installed")

TESTS = Path(__file__).resolve().parent


def _run(command: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """The directory where the two processes of distributed_worker.py wrote their results."""
    out = tmp_path_factory.mktemp("two_processes")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    _run([*torchrun, "--nproc-per-node", "2", str(TESTS / "distributed_worker.py"), str(out)], out)
    return out


@pytest.mark.parametrize("when", ["", "_resumed"])
def test_both_processes_end_with_identical_parameters(two_processes, when):
    """Through pretraining, the mixture start (rank 0's, broadcast), anchor and SVI epochs;
    and after resuming that run for one more SVI epoch on two processes."""
    rank0 = torch.load(two_processes / f"rank0{when}.pt")
    rank1 = torch.load(two_processes / f"rank1{when}.pt")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name  # the same averaged gradients


def test_pretraining_matches_one_process_over_the_same_global_batches(two_processes):
    """One process, stepping on the union of the two processes' minibatches (rank r takes every
    second row of the sampler's permutation from r), reaches the same weights.

    Pretraining draws no random numbers, so the only difference is float32 rounding: the mean
    over 2B rows against the average of two means over B rows, about 1e-7 of each gradient.
    Adam's steps are at most ~lr = 3e-3 each, so 8 steps can differ by about 8 * 3e-3 * 1e-7
    per weight, rounding of the weights aside: 1e-6 leaves a margin of 10x over the largest
    difference seen (3e-8), and a real error (a wrong batch, a gradient not averaged, a loss
    scaled by the world size) moves weights by 1e-4 or more.
    """
    x, _ = blobs(n=N)
    pyro.set_rng_seed(0)
    model = GMVAE(model_config(x.shape[1]))
    trainer = Trainer(model, x, config(), recipe=[Pretrain(PRETRAIN_EPOCHS)], progress=False)
    trainer.optimizer = trainer.make_optimizer()
    phase = trainer.recipe[0]
    for epoch in range(PRETRAIN_EPOCHS):
        generator = torch.Generator()
        generator.manual_seed(config().seed + epoch)  # DistributedSampler's shuffle
        perm = torch.randperm(N, generator=generator)
        shares = [perm[rank::2] for rank in range(2)]
        for b in range(N // 2 // BATCH):
            idx = torch.cat([share[b * BATCH : (b + 1) * BATCH] for share in shares])
            trainer.step(phase.loss(trainer, trainer.minibatch(idx)))
    pretrained = torch.load(two_processes / "pretrained.pt")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(pretrained[name], value, rtol=0, atol=1e-6, msg=name)


def test_rank_0s_checkpoint_loads_and_predicts_in_one_process(two_processes):
    run = two_processes / "run"
    model = GMVAE.load(run)
    rank0 = torch.load(two_processes / "rank0_resumed.pt")
    for name, value in model.state_dict().items():
        assert torch.equal(value, rank0[name]), name
    x, labels = blobs(n=N)
    assert model.predict(x).shape == (N,)
    records = read_metrics(run)
    assert [r["phase"] for r in records] == ["pretrain"] * 2 + ["anchor"] + ["svi"] * 2
    assert all(r["processes"] == 2 for r in records)
    assert records[-1]["accuracy"] > 0.5  # scored on rank 0, with the labels
    assert not list(run.glob(".*.tmp"))  # every file renamed into place


def test_a_two_process_run_resumes_in_one_process(two_processes, tmp_path):
    """The checkpoint is the single-process trainer's: one more SVI epoch on one process."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pt", "metrics.jsonl"):
        (run / name).write_bytes((two_processes / "run" / name).read_bytes())
    x, labels = blobs(n=N)
    model = GMVAE(model_config(x.shape[1]))
    longer = Recipe(recipe(tmp_path)).replace("svi", SVI(3))
    trainer = Trainer(model, x, config(), recipe=longer, run_dir=run, progress=False)
    trainer.resume(read_metrics(run))
    assert (trainer.epoch, trainer.begun) == (5, 3)
    history = trainer.run()
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert np.isfinite(history[-1]["loss"]) and "processes" not in history[-1]


def test_gmvae_train_on_two_processes_stops_on_ctrl_c_and_resumes_in_one(tmp_path, capsys):
    """Lightning's own launcher: ``gmvae train --devices 2`` starts the second process. SIGINT
    to the first process alone stops both after the same step (they agree after every step),
    with a checkpoint that one process resumes to the end and evaluates."""
    x, _ = blobs(n=N)
    x = (x - x.mean(0)) / x.std(0)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "run"
    gmvae = [sys.executable, "-m", "pyro_gmvae", "train", "--out", str(out), "--no-plots"]
    flags = ["--no-progress", "--devices", "2", "--accelerator", "cpu", "--data", "x.npy"]
    flags += ["--likelihood", "gaussian", "--clusters", "3", "--latent-dim", "2", "--hidden"]
    flags += ["32", "--pretrain-epochs", "40", "--anchor-epochs", "1", "--epochs", "1"]
    flags += ["--anchor-min-steps", "0"]
    flags += ["--batch-size", "16", "--init", "gmm", "--restarts", "1", "--device", "cpu"]
    flags += ["--checkpoint-every", "1"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        [*gmvae, *flags], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        deadline = time.monotonic() + 180
        while not (out / "checkpoint.pt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint after 180 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err[-3000:]
    assert "training interrupted in epoch" in err and "--resume" in err
    records = read_metrics(out)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (len(records), 0)  # at an epoch's start
    assert len(records) < 40 and all(r["processes"] == 2 for r in records)
    assert not list(out.glob(".*.tmp"))

    _run([*gmvae[:-1], "--resume", "--no-progress", "--no-plots"], tmp_path)  # one process
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == list(range(1, 43))
    assert "processes" not in records[-1] and records[-1]["phase"] == "svi"
    assert main(["evaluate", str(out), "--data", str(tmp_path / "x.npy"), "--json"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["elbo"])


@pytest.mark.slow  # a third launch of two processes; the default suite has two
def test_a_process_that_dies_stops_the_run_with_one_line_and_an_intact_checkpoint(tmp_path):
    x, _ = blobs(n=N)
    np.save(tmp_path / "x.npy", (x - x.mean(0)) / x.std(0))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pyro_gmvae", "train", "--out", str(out), "--no-plots"]
    command += ["--no-progress", "--devices", "2", "--accelerator", "cpu", "--data", "x.npy"]
    command += ["--likelihood", "gaussian", "--clusters", "3", "--latent-dim", "2", "--hidden"]
    command += ["32", "--pretrain-epochs", "300", "--batch-size", "16", "--device", "cpu"]
    # --init, --network and --guide given: no "chosen from the data" line before the error
    command += ["--checkpoint-every", "1", "--init", "tsne", "--network", "mlp", "--guide"]
    command += ["marginal"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        deadline = time.monotonic() + 180
        while not (out / "checkpoint.pt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint after 180 s"
            time.sleep(0.05)
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert children, "Lightning started no second process"
        os.kill(int(children[0]), signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 4, err[-3000:]
    line = next(x for x in err.splitlines() if x.startswith("gmvae:"))
    assert "another training process died" in line and "--resume" in line
    assert not list(out.glob(".*.tmp"))
    GMVAE.load(out)  # the last checkpoint is whole


# ------------------------------------------------------------------------- no processes
def test_without_lightning_the_flags_give_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    for name in ("lightning", "lightning.pytorch"):
        monkeypatch.setitem(sys.modules, name, None)  # import lightning raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'pyro_gmvae\[distributed\]'"):
        check_lightning()
    out = tmp_path / "run"
    argv = ["train", "--data", "digits", "--clusters", "3", "--out", str(out), "--devices", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'pyro_gmvae[distributed]'" in err
    assert not out.exists()


def test_only_options_beyond_the_default_ask_for_lightning():
    assert not DistributedConfig().uses_lightning  # gmvae train keeps the current trainer
    assert DistributedConfig(devices=2).world_size == 2
    assert DistributedConfig(accelerator="gpu").uses_lightning
    assert DistributedConfig(devices=4, num_nodes=2).world_size == 8
    for bad in (dict(devices=0), dict(num_nodes=0), dict(accelerator="tpu")):
        with pytest.raises(ConfigError):
            DistributedConfig(**bad).validate()


def test_the_sampler_shuffles_by_the_runs_global_epoch():
    """A fit resumed at epoch 3 draws, in its second epoch, what epoch 4 of one fit draws."""
    data = range(10)
    for rank in range(2):
        resumed = GlobalEpochSampler(data, 3, num_replicas=2, rank=rank, seed=5)
        resumed.set_epoch(1)  # Lightning counts the epochs of its fit
        whole = DistributedSampler(data, num_replicas=2, rank=rank, seed=5)
        whole.set_epoch(4)
        assert list(resumed) == list(whole)


def test_the_launch_rank_comes_from_the_launchers_environment(monkeypatch):
    for name in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launch_rank(devices=4) == 0  # the process that starts the others
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert launch_rank(devices=4) == 6
    monkeypatch.setenv("RANK", "3")  # torchrun's, which wins
    assert launch_rank(devices=4) == 3

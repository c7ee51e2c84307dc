"""benchmarks/speed.py: what it times computes the trainer's loss, and the script runs.

Correctness only: no timing is asserted (the machine is shared and timings are noisy).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import JitTraceEnum_ELBO

from pyro_gmvae import GMVAE, SVI, ModelConfig, TrainConfig, Trainer
from pyro_gmvae.reference import hand_loss

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
N, D, K, Z = 6, 16, 3, 2


def _load_speed():
    # As `python benchmarks/speed.py` does, so that the script finds its _paths module.
    if str(SCRIPT.parent) not in sys.path:
        sys.path.append(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["speed"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


speed = _load_speed()


def tiny_model(guide: str) -> tuple[GMVAE, torch.Tensor]:
    """A float32 model of tiny 4x4 images, its prior moved off the symmetric start, and its
    data ``(N, D)``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    config = ModelConfig(
        clusters=K, latent_dim=Z, hidden=(8,), n_features=D, image_shape=(4, 4), guide=guide
    )
    model = GMVAE(config)
    with torch.no_grad():
        model.cluster_raw_scales.normal_(0.0, 0.5)
        model.cluster_logits.normal_(0.0, 1.0)
        if model.encoder.cluster_offset is not None:
            model.encoder.cluster_offset.weight.normal_(0.0, 1.0)
    x = torch.rand(N, D, generator=torch.Generator().manual_seed(1))
    return model, x


def tiny_config(**kwargs) -> TrainConfig:
    return TrainConfig(**({"pretrain_epochs": 0, "batch_size": N, "device": "cpu"} | kwargs))


def runners_of(guide: str, names: list[str], beta: float = 1.0) -> dict[str, speed.Runner]:
    model, x = tiny_model(guide)
    config = tiny_config(epochs=1, beta=beta)
    return {n: speed.make_runner(model, x, config, speed.VARIANTS[n]) for n in names}


@pytest.mark.parametrize("beta", [1.0, 2.5])
@pytest.mark.parametrize("guide", ["marginal", "enumerated"])
def test_the_hand_variant_is_the_oracle_and_pyro_agrees(guide, beta):
    """The benchmark's reference row is pyro_gmvae.reference.hand_loss, run as an SVI phase,
    and the trainer's own SVI phase agrees with it on a moved view (tests/test_reference.py
    checks the library itself more closely)."""
    runners = runners_of(guide, ["hand", "pyro"], beta)
    hand, pyro_runner = runners["hand"], runners["pyro"]
    assert isinstance(hand.phase, speed.HandSVI) and hand.phase.beta == beta
    assert type(pyro_runner.phase) is SVI and pyro_runner.trainer.recipe.names == ["svi"]
    batch = hand.trainer.minibatch(torch.arange(N))
    assert batch.view is not None
    losses = {}
    for name, runner in runners.items():
        pyro.set_rng_seed(3)
        losses[name] = runner.loss(batch)
    pyro.set_rng_seed(3)
    oracle = hand_loss(hand.trainer.model, batch.x, batch.view, beta=beta)
    torch.testing.assert_close(losses["hand"], oracle, rtol=0, atol=0)
    torch.testing.assert_close(losses["pyro"], oracle, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_variants_agree_with_the_hand_loss(beta):
    """Every non-JIT Pyro variant the benchmark times computes the same loss and gradients."""
    names = [n for n in speed.VARIANTS if not n.startswith("jit")]
    runners = runners_of("marginal", names, beta)
    trainer = runners["hand"].trainer
    batch = speed.whole_batch(trainer)
    agreement = speed.check_agreement(trainer.model, runners, batch, seed=5)
    for name in names[1:]:
        assert agreement[name]["rel_loss"] < 1e-5, name
        assert agreement[name]["rel_grad"] < 1e-4, name


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_jit_loss_agrees_when_drawing_as_jit():
    """JitTraceEnum_ELBO's compiled loss equals the hand-written one drawing z as a traced graph
    does (torch.normal), once compiled: the JIT variants are timed computing the same thing."""
    runners = runners_of("enumerated", ["hand", "jit", "jit:direct"])
    trainer = runners["hand"].trainer
    agreement = speed.check_agreement(trainer.model, runners, speed.whole_batch(trainer), seed=5)
    for name in ("jit", "jit:direct"):
        assert agreement[name]["rel_loss"] < 1e-5, name
        assert agreement[name]["rel_grad"] < 1e-4, name


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("guide", ["marginal", "enumerated"])
def test_the_trainer_trains_with_the_jit_elbo_as_with_the_plain_one(guide):
    """``Trainer(elbo=JitTraceEnum_ELBO(...))``, with moved views as training passes them: the
    compiled loss follows the same trajectory (its z draws differ, so not bit for bit)."""
    losses = {}
    for name, elbo in [
        ("plain", None),
        ("jit", JitTraceEnum_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)),
    ]:
        model, x = tiny_model(guide)
        config = tiny_config(lr=1e-2, epochs=40)  # one batch an epoch
        trainer = Trainer(model, x, config, elbo=elbo, progress=False)
        assert trainer.recipe.names == ["svi"] and trainer.recipe["svi"].elbo is not None
        trainer.run()
        losses[name] = np.array([r["loss"] for r in trainer.history])
    assert np.isfinite(losses["jit"]).all()
    first, last = losses["jit"][:5].mean(), losses["jit"][-5:].mean()
    assert last < first - 1.0
    assert last == pytest.approx(losses["plain"][-5:].mean(), rel=0.03)


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        speed.parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--device" in out and "--grid" in out and "--repeats" in out


MICRO = ["--grid", "tiny", "--repeats", "2", "--warmup", "1", "--guides", "marginal"]


def test_micro_run_steps(mnist8k_path, tmp_path, capsys, monkeypatch):
    """Section 1 in this process: both Pyro and hand steps timed, their losses agree."""
    result = tmp_path / "speed.json"
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave this process alone
    speed.main([*MICRO, "--variants", "pyro", "--skip-epochs", "--json", str(result)])
    out = capsys.readouterr().out
    assert "## 1. One optimizer step" in out and "## Targets" in out
    data = json.loads(result.read_text())
    assert {r["variant"] for r in data["steps"]} == {"hand", "pyro"}
    for row in data["steps"]:
        assert row["step"] > 0 and row["forward"] > 0
        if row["variant"] == "pyro":
            assert row["agreement"]["rel_loss"] < 1e-4 and row["agreement"]["rel_grad"] < 1e-3


@pytest.mark.parametrize(
    "compare, first, second",
    [("layouts", "library", "contiguous"), ("precisions", "bfloat16", "float32")],
)
def test_pairs_time_the_same_weights_two_ways(
    compare, first, second, mnist8k_path, tmp_path, monkeypatch
):
    """``--layouts`` and ``--precisions``: a pretraining and an SVI row per guide and batch, and
    before any step the two models of one seed give the same loss (two layouts of the
    convolutions) or one within bfloat16's round-off and not equal (two precisions): what is
    timed is one computation done two ways."""
    result = tmp_path / f"{compare}.json"
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    speed.main([*MICRO, f"--{compare}", "--guides", "enumerated", "--json", str(result)])
    rows = json.loads(result.read_text())[compare]
    assert [(r["batch"], r["phase"]) for r in rows] == [
        (b, phase) for b in (8, 16) for phase in ("pretrain", "svi")
    ]
    first_difference = rows[0]["loss_relative_difference"]
    if compare == "layouts":
        assert first_difference < 1e-6  # the same arithmetic
    else:
        assert 0 < first_difference < 1e-2  # bfloat16's round-off
    for row in rows:
        assert row[f"{first}_s"] > 0 and row[f"{second}_s"] > 0
        assert row["loss_relative_difference"] < (1e-3 if compare == "layouts" else 1e-1)


def test_epoch_worker_hand_and_pyro_train_alike(mnist8k_path):
    """One tiny epoch measured as the grid's subprocesses do (here in this process). With the
    same seed the hand-written loss, put in the trainer's place, follows Pyro's trajectory."""
    spec = {
        "guide": "enumerated",
        "clusters": 3,
        "batch_size": 16,
        "rows": 40,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "seed": 0,
        "hidden": [8],
        "latent_dim": 2,
        "warmup": 1,
        "step_repeats": 2,
    }
    pyro_result = speed.epoch_worker(spec | {"variant": "pyro"})
    hand_result = speed.epoch_worker(spec | {"variant": "hand"})
    for result in (pyro_result, hand_result):
        assert result["batches"] == 3
        assert result["epoch_s"] > 0 and result["step_s"] > 0 and result["peak_mb"] > 0
        assert result["examples_per_s"] == pytest.approx(40 / result["epoch_s"])
    assert math.isfinite(pyro_result["loss"])
    assert hand_result["loss"] == pytest.approx(pyro_result["loss"], rel=1e-4)


@pytest.mark.slow
def test_script_end_to_end(mnist8k_path, tmp_path):
    """The script as a user runs it: a subprocess per epoch configuration, exit status 0."""
    result = tmp_path / "speed.json"
    cmd = [sys.executable, str(SCRIPT), *MICRO, "--clusters", "2", "3", "--json", str(result)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(result.read_text())
    assert [r["clusters"] for r in data["epochs"]] == [2, 3]
    assert all(r["examples_per_s"] > 0 and r["peak_mb"] > 0 for r in data["epochs"])

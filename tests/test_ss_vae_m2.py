"""benchmarks/ss_vae_m2.py, the port of Pyro's ss_vae_M2, and semisupervised.py running it.

The port's ELBO on a labelled batch equals the hand computation at the observed y, on an
unlabelled batch the q(y|x)-weighted sum over the enumerated classes; its auxiliary loss is
``-46 log q(y|x)``; its epoch interleaves labelled batches as the example's does; trained on a few
labels of separable data it names the classes; the benchmark script runs it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import blobs
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate

from pyro_gmvae.dataset import labelled_rows

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
B, D, C, Z = 4, 6, 3, 2


def _load(name: str):
    # As `python benchmarks/semisupervised.py` does, so that the scripts find their neighbours.
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


m2 = _load("ss_vae_m2")


@pytest.fixture
def tiny():
    """A float64 SSVAE of C = 3 classes, rows of D = 6 pixels in [0, 1], z of Z = 2, one hidden
    layer of 5; its output layers moved off their start so q(y|x) is not near uniform."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = m2.SSVAE(
        output_size=C,
        input_size=D,
        z_dim=Z,
        hidden_layers=(5,),
        config_enum="parallel",
        aux_loss_multiplier=46.0,
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    x = torch.rand(B, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, x


def _elbo_loss(model, x, ys=None, seed=3):
    pyro.set_rng_seed(seed)
    guide = config_enumerate(model.guide, "parallel", expand=True)
    elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    return elbo.differentiable_loss(model.model, guide, x, ys)


def _log_normal(v, loc, scale):
    return (-0.5 * ((v - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(
        -1
    )


def _joint_minus_guide(model, x, ys):
    """``log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)`` for z drawn from ``q(z|x,y)`` as
    the guide draws it; ``ys (..., B, C)``, result ``(..., B)``."""
    x_in = x.expand(ys.shape[:-1] + (D,))
    loc, scale = model.encoder_z([x_in, ys])
    z = dist.Normal(loc, scale).rsample()
    mean = model.decoder([z, ys])
    log_px = (x * torch.log(mean) + (1 - x) * torch.log1p(-mean)).sum(-1)
    log_pz = _log_normal(z, torch.zeros_like(z), torch.ones_like(z))
    return log_px + math.log(1.0 / C) + log_pz - _log_normal(z, loc, scale)


def test_labelled_batch_elbo_equals_hand_computation_at_the_observed_y(tiny):
    model, x = tiny
    ys = torch.nn.functional.one_hot(torch.tensor([2, 0, 1, 2]), C).double()
    loss = _elbo_loss(model, x, ys)
    pyro.set_rng_seed(3)
    expected = -_joint_minus_guide(model, x, ys).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-10)


def test_unlabelled_batch_elbo_is_the_q_weighted_sum_over_enumerated_classes(tiny):
    model, x = tiny
    loss = _elbo_loss(model, x)
    q = model.encoder_y(x)  # (B, C)
    assert q.std() > 0.05  # far from uniform, so a wrong weighting would show
    pyro.set_rng_seed(3)
    each = _joint_minus_guide(model, x, torch.eye(C, dtype=x.dtype)[:, None, :].expand(C, B, C))
    expected = -((q * (each.T - torch.log(q))).sum())
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-10)


def test_auxiliary_loss_is_46_times_minus_log_q_y_on_labelled_rows_only(tiny):
    model, x = tiny
    y = torch.tensor([2, 0, 1, 2])
    ys = torch.nn.functional.one_hot(y, C).double()
    loss = Trace_ELBO().differentiable_loss(model.model_classify, model.guide_classify, x, ys)
    expected = -46.0 * torch.log(model.encoder_y(x)[torch.arange(B), y]).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-10)
    assert Trace_ELBO().loss(model.model_classify, model.guide_classify, x) == 0.0


def test_schedule_interleaves_labelled_batches_as_the_example():
    # The example's MNIST: 3,000 of 50,000 labelled, batches of 200: one in int(50000/3000) = 16.
    schedule = m2.supervised_schedule(15, 235, 16)
    assert [i for i, s in enumerate(schedule) if s] == list(range(1, 226, 16))
    # digits here: 50 of 1,438 labelled, one short labelled batch among 7 unlabelled ones.
    assert m2.supervised_schedule(1, 7, int(1438 / 50)) == [i == 1 for i in range(8)]
    with pytest.raises(ValueError, match="places 1 of 3 labelled batches"):
        m2.supervised_schedule(3, 2, 4)


def test_a_few_labels_name_the_classes_of_separable_data():
    x, y = blobs(300, 16, seed=0)
    known = labelled_rows(y, 9, seed=1)
    config = m2.M2Config(z_dim=2, hidden_layers=(32,), batch_size=30, num_epochs=10)
    model, history = m2.train_ss_vae(x[known], y[known], x[~known], 3, config, seed=1)
    assert len(history) == 10 and np.isfinite(history[-1]["loss_unsup"][0])
    # Without the labels the classes would come out permuted (about 1/3 right, or 0).
    assert (m2.predict_classes(model, x[~known]) == y[~known]).mean() > 0.9


def test_semisupervised_script_runs_ss_vae_m2_alone(tmp_path):
    semisupervised = _load("semisupervised")
    argv = ["--datasets", "digits", "--seeds", "0", "--methods", "ss_vae_M2", "--m2-epochs", "1"]
    assert semisupervised.main([*argv, "--out", str(tmp_path)]) == 0
    (result,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert result["method"] == "ss_vae_M2" and result["labels_known"] == 50
    assert result["config"]["num_epochs"] == 1 and result["config"]["aux_loss_multiplier"] == 46
    assert 0 <= result["heldout"] <= 1 and 0 <= result["unlabelled"] <= 1
    assert "| digits | 50 | ss_vae_M2 |" in (tmp_path / "results.md").read_text()

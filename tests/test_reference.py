"""pyro_gmvae.reference: the trainer's phases compute the hand-written negative ELBO, beta included.

The oracle is the one ``benchmarks/speed.py`` times; here it holds the Pyro program to the math:
the SVI phase's loss (y summed out) and the Anchor phase's (y given), for both guides, with the
KL terms weighted by beta, on the same draws of z, and their gradients.
"""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch

from pyro_gmvae import GMVAE, SVI, Anchor, ModelConfig, Recipe, Start, TrainConfig, Trainer
from pyro_gmvae.reference import hand_loss
from pyro_gmvae.train import Batch

N, D, K, Z = 6, 16, 3, 2
#: Each row's cluster in the Anchor phase: every cluster held by two rows.
GIVEN = np.array([0, 1, 2, 2, 1, 0])


def tiny_trainer(guide: str, beta: float = 1.0) -> Trainer:
    """A float32 trainer of a tiny 4x4-image model, its prior moved off the symmetric start; its
    recipe an Anchor phase (each row held at :data:`GIVEN`) and an SVI phase, both at ``beta``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    config = ModelConfig(
        clusters=K, latent_dim=Z, hidden=(8,), n_features=D, image_shape=(4, 4), guide=guide
    )
    model = GMVAE(config)
    x = torch.rand(N, D, generator=torch.Generator().manual_seed(1))
    train = TrainConfig(pretrain_epochs=0, batch_size=N, device="cpu")
    recipe = Recipe([Anchor(1, beta=beta), SVI(1, beta=beta)])
    trainer = Trainer(model, x, train, recipe=recipe, progress=False)
    trainer.start_mixture(Start(np.eye(K)[GIVEN]), cluster_encoder_epochs=0)
    with torch.no_grad():
        # Away from the start's symmetries (q(z|x,y) equal for every y, uniform weights), so
        # that a term missing from one side cannot cancel.
        model.cluster_logits.normal_(0.0, 1.0)
        if model.encoder.cluster_offset is not None:
            model.encoder.cluster_offset.weight.normal_(0.0, 1.0)
    return trainer


def all_rows(trainer: Trainer, view: torch.Tensor | None = None) -> Batch:
    """The whole (tiny) training set as one batch, with ``view`` for the encoders if given."""
    return Batch(torch.arange(N), trainer.x, view)


def phase_and_oracle(trainer: Trainer, name: str, batch: Batch, seed: int = 3):
    """The loss of phase ``name`` and the oracle's, each after seeding with ``seed`` (so both
    draw the same z)."""
    phase = trainer.recipe[name]
    y = torch.as_tensor(GIVEN) if name == "anchor" else None
    pyro.set_rng_seed(seed)
    loss = phase.loss(trainer, batch)
    pyro.set_rng_seed(seed)
    oracle = hand_loss(trainer.model, batch.x, batch.view, beta=phase.beta, y=y)
    return loss, oracle


def assert_same_gradients(trainer: Trainer, a: torch.Tensor, b: torch.Tensor) -> None:
    """The gradients of ``a`` and ``b`` agree to float32 round-off, over all the parameters
    together (one relative norm: single entries of a large gradient carry its round-off)."""
    params = list(trainer.model.parameters())

    def flat_gradient(loss: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat(
            [
                (torch.zeros_like(p) if g is None else g).flatten()
                for p, g in zip(params, grads, strict=True)
            ]
        )

    grads = [flat_gradient(a), flat_gradient(b)]
    assert grads[1].norm() > 0
    assert float((grads[0] - grads[1]).norm() / grads[1].norm()) < 1e-5


@pytest.mark.parametrize("beta", [1.0, 2.5])
@pytest.mark.parametrize("guide", ["marginal", "enumerated"])
@pytest.mark.parametrize("phase", ["svi", "anchor"])
def test_the_phase_loss_equals_the_oracle_and_so_do_its_gradients(phase, guide, beta):
    trainer = tiny_trainer(guide, beta)
    loss, oracle = phase_and_oracle(trainer, phase, all_rows(trainer))
    torch.testing.assert_close(oracle, loss, rtol=1e-5, atol=1e-5)
    assert_same_gradients(trainer, loss, oracle)


@pytest.mark.parametrize("guide", ["marginal", "enumerated"])
def test_beta_weighs_the_kl_terms_not_the_likelihood(guide):
    """On the same draws the oracle is ``-log_lik + beta * KL``, affine in beta; the old
    convention (the likelihood divided by beta) would give another value at beta = 2.5."""
    trainer = tiny_trainer(guide)
    batch = all_rows(trainer)

    def oracle(beta: float) -> float:
        pyro.set_rng_seed(3)
        return float(hand_loss(trainer.model, batch.x, beta=beta).detach())

    neg_log_lik, kl = oracle(0.0), oracle(1.0) - oracle(0.0)
    assert kl > 0.1  # the KL term is not negligible on these draws
    assert oracle(2.5) == pytest.approx(neg_log_lik + 2.5 * kl, rel=1e-5)
    trainer = tiny_trainer(guide, beta=2.5)
    loss, _ = phase_and_oracle(trainer, "svi", batch)
    assert float(loss.detach()) == pytest.approx(neg_log_lik + 2.5 * kl, rel=1e-5)
    assert float(loss.detach()) != pytest.approx(neg_log_lik / 2.5 + kl, rel=1e-3)


@pytest.mark.parametrize("guide", ["marginal", "enumerated"])
@pytest.mark.parametrize("phase", ["svi", "anchor"])
def test_the_encoders_see_the_view_the_likelihood_scores_the_data(phase, guide):
    """With an augmented view, as :meth:`Trainer.minibatch` makes it in training."""
    trainer = tiny_trainer(guide, beta=2.5)
    batch = trainer.minibatch(torch.arange(N))
    assert batch.view is not None and not torch.equal(batch.view, batch.x)
    loss, oracle = phase_and_oracle(trainer, phase, batch)
    torch.testing.assert_close(oracle, loss, rtol=1e-5, atol=1e-5)
    assert_same_gradients(trainer, loss, oracle)
    _, without_view = phase_and_oracle(trainer, phase, all_rows(trainer))
    assert abs(float((oracle - without_view).detach())) > 1e-3


@pytest.mark.parametrize("guide", ["marginal", "enumerated"])
@pytest.mark.parametrize("phase", ["svi", "anchor"])
def test_agreement_needs_the_same_draws(phase, guide):
    """The equality above is not trivial: other draws of z give another loss."""
    trainer = tiny_trainer(guide)
    batch = all_rows(trainer)
    pyro.set_rng_seed(3)
    loss = trainer.recipe[phase].loss(trainer, batch)
    pyro.set_rng_seed(4)
    y = torch.as_tensor(GIVEN) if phase == "anchor" else None
    other = hand_loss(trainer.model, batch.x, y=y)
    assert abs(float((loss - other).detach())) > 1e-3


@pytest.mark.parametrize("guide", ["marginal", "enumerated"])
def test_the_anchor_loss_is_the_given_clusters_not_the_sum(guide):
    """Held at other clusters, the Anchor loss changes; it is not the SVI loss either."""
    trainer = tiny_trainer(guide)
    batch = all_rows(trainer)
    anchor, _ = phase_and_oracle(trainer, "anchor", batch)
    svi, _ = phase_and_oracle(trainer, "svi", batch)
    pyro.set_rng_seed(3)
    elsewhere = hand_loss(trainer.model, batch.x, y=torch.as_tensor((GIVEN + 1) % K))
    assert abs(float((anchor - svi).detach())) > 1e-3
    assert abs(float((anchor - elsewhere).detach())) > 1e-3

"""The GMVAE's model and guides: the enumerated ELBO is exact, shapes under enumeration, the API."""

from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from torch.nn import functional as F

from pyro_gmvae import (
    GMVAE,
    Bernoulli,
    ConfigError,
    ContinuousBernoulli,
    DataError,
    Gaussian,
    ModelConfig,
)
from pyro_gmvae.checkpoints import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from pyro_gmvae.networks import (
    ConvClusterEncoder,
    ConvDecoder,
    ConvEncoder,
    Decoder,
    Encoder,
)

N, D, K, Z = 5, 4, 3, 2


#: ``--network conv``'s tiny data: 8x8 images, the smallest with a convolution of stride 2.
CONV_SHAPE = (8, 8)


def tiny_model(guide: str, likelihood: str = "bernoulli", network: str = "mlp", **kwargs) -> GMVAE:
    """A float64 model small enough to check by hand, with a non-uniform prior; ``conv``
    networks read rows of :data:`CONV_SHAPE` images."""
    pyro.set_rng_seed(0)
    conv = network == "conv"
    config = ModelConfig(
        clusters=K,
        latent_dim=Z,
        hidden=(8,),
        n_features=math.prod(CONV_SHAPE) if conv else D,
        image_shape=CONV_SHAPE if conv else None,
        network=network,
        likelihood=likelihood,
        guide=guide,
        **kwargs,
    )
    model = GMVAE(config).double()
    with torch.no_grad():
        # Move away from the symmetric initial values so a mistake in any term shows.
        model.cluster_raw_scales.normal_(0.0, 0.5)
        if config.learn_weights:
            model.cluster_logits.normal_(0.0, 1.0)
        if model.encoder.cluster_offset is not None:
            model.encoder.cluster_offset.weight.normal_(0.0, 1.0)
    return model


def tiny_data(likelihood: str, network: str = "mlp") -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    d = math.prod(CONV_SHAPE) if network == "conv" else D
    if likelihood == "gaussian":
        return torch.randn(N, d, generator=g, dtype=torch.float64)
    return torch.rand(N, d, generator=g, dtype=torch.float64)


def enum_loss_and_guide_trace(model: GMVAE, x: torch.Tensor):
    """``TraceEnum_ELBO``'s loss and the trace of the guide run inside that very computation,
    so the hand computation can reuse its draws of z."""
    tracer = poutine.trace(model.guide)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model.model, tracer, x)
    return loss, tracer.trace


def log_lik(model: GMVAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x|z) per example ``(N,)``; Bernoulli written out so it does not rely on the module."""
    out = model.decoder(z)
    if model.config.likelihood == "bernoulli":
        return (x * out - F.softplus(out)).sum(-1)
    return model.likelihood(out).log_prob(x)


def log_normal(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Diagonal Gaussian log-density summed over the last dimension, written out."""
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * np.log(2 * np.pi)).sum(-1)


def hand_elbo_enumerated(model: GMVAE, x: torch.Tensor, z: torch.Tensor, clusters) -> torch.Tensor:
    """sum_n sum_y q(y|x_n) [log p(y) + log p(z_yn|y) + log p(x_n|z_yn) - log q(y|x_n)
    - log q(z_yn|x_n,y)], an explicit loop over ``clusters``; ``z (K, N, Z)``."""
    log_q_y = F.log_softmax(model.cluster_encoder(x), -1)  # (N, K)
    log_pi = F.log_softmax(model.cluster_logits, -1)
    means, scales = model.cluster_means, model.cluster_scales()
    total = torch.zeros((), dtype=x.dtype)
    for k in clusters:
        zk = z[k]  # (N, Z)
        loc, scale = model.encoder(x, torch.tensor([[k]]))  # (1, N, Z)
        term = (
            log_pi[k]
            + log_normal(zk, means[k], scales[k])
            + log_lik(model, x, zk)
            - log_q_y[:, k]
            - log_normal(zk, loc[0], scale[0])
        )
        total = total + (log_q_y[:, k].exp() * term).sum()
    return total


def hand_elbo_marginal(model: GMVAE, x: torch.Tensor, z: torch.Tensor, clusters) -> torch.Tensor:
    """sum_n [logsumexp_y (log p(y) + log p(z_n|y)) + log p(x_n|z_n) - log q(z_n|x_n)], the
    mixture prior an explicit loop over ``clusters``; ``z (N, Z)``."""
    log_pi = F.log_softmax(model.cluster_logits, -1)
    means, scales = model.cluster_means, model.cluster_scales()
    log_prior = torch.stack(
        [log_pi[k] + log_normal(z, means[k], scales[k]) for k in clusters], -1
    ).logsumexp(-1)
    loc, scale = model.encoder(x)
    return (log_prior + log_lik(model, x, z) - log_normal(z, loc, scale)).sum()


HAND_ELBO = {"enumerated": hand_elbo_enumerated, "marginal": hand_elbo_marginal}


@pytest.mark.parametrize(
    "likelihood, network",
    [
        ("bernoulli", "mlp"),
        ("continuous_bernoulli", "mlp"),
        ("gaussian", "mlp"),
        ("bernoulli", "conv"),
        ("gaussian", "conv"),
    ],
)
@pytest.mark.parametrize("guide", ["enumerated", "marginal"])
def test_enumerated_elbo_equals_hand_sum_over_clusters(guide, likelihood, network):
    model = tiny_model(guide, likelihood, network)
    x = tiny_data(likelihood, network)
    loss, guide_trace = enum_loss_and_guide_trace(model, x)
    z = guide_trace.nodes["z"]["value"]

    expected = -HAND_ELBO[guide](model, x, z, range(K))
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-10)
    # The gradients agree too: it is the same function of the parameters, not only the same value.
    grads = torch.autograd.grad(
        loss, list(model.parameters()), allow_unused=True, retain_graph=True
    )
    expected_grads = torch.autograd.grad(expected, list(model.parameters()), allow_unused=True)
    for g, e in zip(grads, expected_grads, strict=True):
        if g is None or e is None:
            assert g is None or not g.any()
            assert e is None or not e.any()
        else:
            torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("guide", ["enumerated", "marginal"])
def test_hand_sum_missing_a_cluster_does_not_match(guide):
    """The exactness test can fail: every cluster's term contributes."""
    model = tiny_model(guide)
    x = tiny_data("bernoulli")
    loss, guide_trace = enum_loss_and_guide_trace(model, x)
    z = guide_trace.nodes["z"]["value"]
    for dropped in range(K):
        partial = -HAND_ELBO[guide](model, x, z, [k for k in range(K) if k != dropped])
        assert abs(float(loss.detach() - partial.detach())) > 1e-3


def test_fresh_draws_of_z_change_the_loss():
    """The hand sum is compared on the guide's own draws: other draws give another value."""
    model = tiny_model("marginal")
    x = tiny_data("bernoulli")
    loss, _ = enum_loss_and_guide_trace(model, x)
    other_z = model.encoder(x)[0] + torch.randn(N, Z, dtype=torch.float64)
    assert abs(float((loss + hand_elbo_marginal(model, x, other_z, range(K))).detach())) > 1e-3


# ------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("network", ["mlp", "conv"])
@pytest.mark.parametrize("guide", ["enumerated", "marginal"])
def test_shapes_under_enumeration(guide, network):
    model = tiny_model(guide, network=network)
    x = tiny_data("bernoulli", network)
    D = x.shape[1]
    guide_trace = poutine.trace(poutine.enum(model.guide, first_available_dim=-2)).get_trace(x)
    model_trace = poutine.trace(
        poutine.enum(poutine.replay(model.model, trace=guide_trace), first_available_dim=-2)
    ).get_trace(x)
    model_trace.compute_log_prob()

    y = model_trace.nodes["y"]
    assert y["value"].shape == (K, 1)
    assert torch.equal(y["value"].squeeze(-1), torch.arange(K))
    assert y["infer"].get("enumerate") == "parallel"

    z_shape = (K, N, Z) if guide == "enumerated" else (N, Z)
    assert guide_trace.nodes["z"]["value"].shape == z_shape
    assert model_trace.nodes["z"]["value"].shape == z_shape
    # p(z|y) is evaluated for every cluster: batch (K, N) in both cases (broadcast for marginal).
    assert model_trace.nodes["z"]["log_prob"].shape == (K, N)
    x_shape = (K, N) if guide == "enumerated" else (N,)
    assert model_trace.nodes["x"]["log_prob"].shape == x_shape
    assert model_trace.nodes["x"]["fn"].event_shape == (D,)
    if guide == "enumerated":
        assert guide_trace.nodes["y"]["value"].shape == (K, 1)
        assert "y" not in model_trace.nodes or model_trace.nodes["y"]["is_observed"] is False


# ---------------------------------------------------------------------------------- public API
@pytest.fixture(params=["enumerated", "marginal"])
def fitted_like(request) -> GMVAE:
    """An untrained float32 model: the API's contracts hold for any parameters."""
    pyro.set_rng_seed(0)
    return GMVAE(
        ModelConfig(clusters=K, latent_dim=Z, hidden=(8,), n_features=D, guide=request.param)
    )


@pytest.fixture
def x_np() -> np.ndarray:
    return np.random.default_rng(0).random((7, D)).astype(np.float32)


def test_predict_proba_predict_encode_reconstruct(fitted_like, x_np):
    model = fitted_like
    proba = model.predict_proba(x_np)
    assert proba.shape == (7, K)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert (proba >= 0).all()
    pred = model.predict(x_np)
    assert pred.shape == (7,)
    assert set(pred) <= set(range(K))
    np.testing.assert_array_equal(pred, proba.argmax(1))
    assert model.encode(x_np).shape == (7, Z)
    rec = model.reconstruct(x_np)
    assert rec.shape == (7, D)
    assert ((rec >= 0) & (rec <= 1)).all()
    # torch input gives the same answer as numpy input
    np.testing.assert_allclose(model.predict_proba(torch.from_numpy(x_np)), proba)


def test_sample_from_a_cluster(fitted_like):
    x, y = fitted_like.sample(6, cluster=2)
    assert x.shape == (6, D) and y.shape == (6,)
    assert (y == 2).all()
    x, y = fitted_like.sample(50)
    assert set(y) <= set(range(K))
    for bad in (-1, K):
        with pytest.raises(ValueError, match="cluster must be in"):
            fitted_like.sample(3, cluster=bad)


def test_marginal_predict_proba_is_exact_bayes_at_encoder_mean(x_np):
    pyro.set_rng_seed(0)
    model = GMVAE(
        ModelConfig(clusters=K, latent_dim=Z, hidden=(8,), n_features=D, guide="marginal")
    )
    with torch.no_grad():
        model.cluster_logits.normal_()
        model.cluster_raw_scales.normal_(0, 0.5)
        x = torch.from_numpy(x_np)
        z = model.encoder(x)[0]
        pi = F.softmax(model.cluster_logits, -1)
        dens = torch.stack(
            [
                pi[k]
                * torch.distributions.Normal(model.cluster_means[k], model.cluster_scales()[k])
                .log_prob(z)
                .sum(-1)
                .exp()
                for k in range(K)
            ],
            -1,
        )
        expected = dens / dens.sum(-1, keepdim=True)
        np.testing.assert_allclose(model.predict_proba(x_np), expected.numpy(), rtol=1e-5)

        # Pyro's own exact marginal of y in the model conditioned on z says the same.
        conditioned = poutine.condition(model.model, data={"z": z})
        marginals = TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(
            conditioned, lambda x: None, x
        )
        np.testing.assert_allclose(marginals["y"].probs.numpy(), expected.numpy(), rtol=1e-5)


def test_enumerated_predict_proba_is_the_cluster_encoder(x_np):
    pyro.set_rng_seed(0)
    model = GMVAE(
        ModelConfig(clusters=K, latent_dim=Z, hidden=(8,), n_features=D, guide="enumerated")
    )
    with torch.no_grad():
        expected = F.softmax(model.cluster_encoder(torch.from_numpy(x_np)), -1).numpy()
    np.testing.assert_allclose(model.predict_proba(x_np), expected, rtol=1e-5)


def test_save_load_round_trip(fitted_like, x_np, tmp_path):
    model = fitted_like
    with torch.no_grad():
        model.cluster_logits.normal_()  # not the initial values: the load must restore them
    model.save(tmp_path / "m")
    loaded = GMVAE.load(tmp_path / "m")
    assert loaded.config == model.config
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for name in state:
        assert torch.equal(state[name], loaded_state[name]), name
    np.testing.assert_array_equal(loaded.predict_proba(x_np), model.predict_proba(x_np))
    np.testing.assert_array_equal(loaded.encode(x_np), model.encode(x_np))


@pytest.mark.parametrize("guide", ["enumerated", "marginal"])
def test_a_conv_model_round_trips_with_its_networks(guide, tmp_path):
    model = tiny_model(guide, network="conv").float()
    x = tiny_data("bernoulli", "conv").float().numpy()
    model.save(tmp_path / "m")
    loaded = GMVAE.load(tmp_path / "m")
    assert loaded.config.network == "conv"
    assert isinstance(loaded.encoder, ConvEncoder) and isinstance(loaded.decoder, ConvDecoder)
    if guide == "enumerated":
        assert isinstance(loaded.cluster_encoder, ConvClusterEncoder)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    np.testing.assert_array_equal(loaded.encode(x), model.encode(x))


def test_auto_gives_images_convolutions_and_tables_an_mlp():
    images = GMVAE(ModelConfig(clusters=K, n_features=64, image_shape=CONV_SHAPE))
    assert images.config.network == "conv" and isinstance(images.encoder, ConvEncoder)
    table = GMVAE(ModelConfig(clusters=K, n_features=D))
    assert table.config.network == "mlp" and type(table.encoder) is Encoder
    # 4x4 images leave no room for a convolution of stride 2.
    small = GMVAE(ModelConfig(clusters=K, n_features=16, image_shape=(4, 4)))
    assert small.config.network == "mlp"


def test_a_model_saved_before_network_existed_loads_as_the_mlp_it_was(tmp_path):
    """Its config.json has no ``network``: auto would now build conv networks for its 8x8
    images, which its MLP weights do not fit."""
    model = GMVAE(
        ModelConfig(clusters=K, hidden=(8,), n_features=64, image_shape=CONV_SHAPE, network="mlp")
    )
    model.save(tmp_path / "m")
    state = load_checkpoint(tmp_path / "m" / CHECKPOINT_FILE)
    config = json.loads(state["config"])
    del config["model"]["network"]
    save_checkpoint(tmp_path / "m" / CHECKPOINT_FILE, {**state, "config": json.dumps(config)})
    loaded = GMVAE.load(tmp_path / "m")
    assert loaded.config.network == "mlp" and type(loaded.encoder) is Encoder
    x = tiny_data("bernoulli", "conv").float().numpy()
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


def test_conv_networks_on_a_table_name_the_fix():
    with pytest.raises(ConfigError, match="--network conv.*not images.*--network mlp"):
        GMVAE(ModelConfig(clusters=K, n_features=D, network="conv"))
    with pytest.raises(ConfigError, match=r"\(8, 8\) holds 64 pixels"):
        GMVAE(ModelConfig(clusters=K, n_features=D, image_shape=(8, 8), network="conv"))
    with pytest.raises(ConfigError, match="--network must be one of auto, mlp, conv"):
        GMVAE(ModelConfig(clusters=K, n_features=D, network="cnn"))


def test_bfloat16_is_for_the_convolutional_networks():
    """``--precision bfloat16`` reaches each conv network (and a saved model keeps it); on a
    table's fully connected networks, which would compute in float32 anyway, it names the fix."""
    images = GMVAE(
        ModelConfig(clusters=K, n_features=64, image_shape=CONV_SHAPE, precision="bfloat16")
    )
    networks = [images.encoder.trunk, images.decoder, images.cluster_encoder.net[0]]
    assert [n.autocast_dtype for n in networks] == [torch.bfloat16] * 3
    with pytest.raises(ConfigError, match="--precision bfloat16 applies to the convolutional"):
        GMVAE(ModelConfig(clusters=K, n_features=D, precision="bfloat16"))
    with pytest.raises(ConfigError, match="--precision must be one of float32, bfloat16"):
        GMVAE(ModelConfig(clusters=K, n_features=64, image_shape=CONV_SHAPE, precision="half"))


def test_a_bfloat16_model_loads_in_bfloat16(tmp_path):
    model = GMVAE(
        ModelConfig(clusters=K, n_features=64, image_shape=CONV_SHAPE, precision="bfloat16")
    )
    model.save(tmp_path / "m")
    loaded = GMVAE.load(tmp_path / "m")
    assert loaded.decoder.autocast_dtype is torch.bfloat16
    x = tiny_data("bernoulli", "conv").float().numpy()
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


class CountingDecoder(Decoder):
    def __init__(self, *args):
        super().__init__(*args)
        self.calls = 0

    def forward(self, z):
        self.calls += 1
        return super().forward(z)


def test_custom_networks_and_likelihood_are_used(x_np):
    config = ModelConfig(clusters=K, latent_dim=Z, hidden=(8,), n_features=D, guide="enumerated")
    decoder = CountingDecoder(Z, (6,), D)
    likelihood = ContinuousBernoulli(D)
    encoder_calls = []

    class LoggingClusterEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(D, K)

        def forward(self, x):
            encoder_calls.append(x.shape)
            return self.net(x)

    cluster_encoder = LoggingClusterEncoder()
    model = GMVAE(config, decoder=decoder, likelihood=likelihood, cluster_encoder=cluster_encoder)
    assert model.decoder is decoder and model.likelihood is likelihood
    x = torch.from_numpy(x_np)
    TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, x)
    assert decoder.calls == 1
    assert encoder_calls == [(7, D)]
    trace = poutine.trace(poutine.enum(model.guide, first_available_dim=-2)).get_trace(x)
    model_trace = poutine.trace(
        poutine.enum(poutine.replay(model.model, trace=trace), first_available_dim=-2)
    ).get_trace(x)
    assert isinstance(model_trace.nodes["x"]["fn"].base_dist, dist.ContinuousBernoulli)
    # The custom decoder's parameters are the model's: they train and they are saved.
    assert any(p is decoder.net[0].weight for p in model.parameters())


class ShiftedEncoder(Encoder):
    """q(z|x) moved by a constant, so its use is visible in every output."""

    def forward(self, x, y=None):
        loc, scale = super().forward(x, y)
        return loc + 100.0, scale


def test_custom_encoder_is_used(x_np):
    config = ModelConfig(clusters=K, latent_dim=Z, hidden=(8,), n_features=D, guide="marginal")
    plain = GMVAE(config)
    encoder = ShiftedEncoder(D, (8,), Z)
    encoder.load_state_dict(plain.encoder.state_dict())
    shifted = GMVAE(config, encoder=encoder)
    np.testing.assert_allclose(shifted.encode(x_np), plain.encode(x_np) + 100.0, rtol=1e-5)
    trace = poutine.trace(shifted.guide).get_trace(torch.from_numpy(x_np))
    assert (trace.nodes["z"]["fn"].base_dist.loc > 50).all()


class StudentPrior(GMVAE):
    """A heavier-tailed p(z|y), by subclassing only."""

    def latent_prior(self, y):
        return dist.StudentT(3.0, self.cluster_means[y], self.cluster_scales()[y]).to_event(1)


class FavourFirstCluster(GMVAE):
    def cluster_prior(self):
        logits = torch.full((self.n_clusters,), -5.0, dtype=self.cluster_means.dtype)
        logits[0] = 0.0
        return dist.Categorical(logits=logits)


@pytest.mark.parametrize("subclass", [StudentPrior, FavourFirstCluster])
@pytest.mark.parametrize("guide", ["enumerated", "marginal"])
def test_subclassed_priors_change_the_loss(subclass, guide):
    config = ModelConfig(clusters=K, latent_dim=Z, hidden=(8,), n_features=D, guide=guide)
    x = tiny_data("bernoulli").float()
    losses = []
    for cls in (GMVAE, subclass):
        pyro.set_rng_seed(0)
        model = cls(config)
        pyro.set_rng_seed(1)
        elbo = TraceEnum_ELBO(max_plate_nesting=1)
        losses.append(elbo.differentiable_loss(model.model, model.guide, x).item())
    assert abs(losses[0] - losses[1]) > 1e-3


def test_student_prior_is_the_one_in_the_model_trace():
    config = ModelConfig(clusters=K, latent_dim=Z, hidden=(8,), n_features=D)
    model = StudentPrior(config)
    x = tiny_data("bernoulli").float()
    guide_trace = poutine.trace(model.guide).get_trace(x)
    trace = poutine.trace(
        poutine.enum(poutine.replay(model.model, trace=guide_trace), first_available_dim=-2)
    ).get_trace(x)
    assert isinstance(trace.nodes["z"]["fn"].base_dist, dist.StudentT)
    assert FavourFirstCluster(config).sample(20)[1].tolist().count(0) >= 15


def test_fixed_uniform_weights():
    model = GMVAE(
        ModelConfig(clusters=K, latent_dim=Z, hidden=(8,), n_features=D, learn_weights=False)
    )
    names = dict(model.named_parameters())
    assert "cluster_logits" not in names
    assert "cluster_logits" in dict(model.named_buffers())
    np.testing.assert_allclose(model.mixture_weights(), np.full(K, 1 / K))
    learned = GMVAE(
        ModelConfig(clusters=K, latent_dim=Z, hidden=(8,), n_features=D, learn_weights=True)
    )
    assert "cluster_logits" in dict(learned.named_parameters())


# ------------------------------------------------------------------------------ data checks
@pytest.mark.parametrize("likelihood", [Bernoulli, ContinuousBernoulli])
def test_unit_interval_likelihoods_reject_grey_levels_0_to_255(likelihood):
    lik = likelihood(D)
    lik.check_support(np.array([[0.0, 0.5, 1.0, 0.2]]))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        lik.check_support(np.array([[0.0, 255.0, 12.0, 1.0]]))
    with pytest.raises(DataError):
        lik.check_support(np.array([[-0.1, 0.5, 0.5, 0.5]]))


def test_gaussian_accepts_any_real_values():
    Gaussian(D).check_support(np.array([[-3.0, 0.0, 250.0, -1e3]]))


@pytest.mark.parametrize(
    "shape", [(7,), (7, D + 1), (7, 2, 2), (0, D + 1)], ids=["1d", "wide", "3d", "empty-wide"]
)
def test_wrong_shape_raises_data_error(fitted_like, shape):
    with pytest.raises(DataError, match="shape"):
        fitted_like.predict(np.zeros(shape, dtype=np.float32))


def test_non_finite_input_raises_data_error(fitted_like, x_np):
    x_np[2, 1] = np.nan
    with pytest.raises(DataError):
        fitted_like.predict(x_np)

"""Pyro's semi-supervised VAE M2 (Kingma et al. 2014), ported from ``examples/vae/ss_vae_M2.py``
for ``semisupervised.py`` to run on the rows and labels it gives pyro_gmvae.

Ported from pyro-ppl/pyro at commit ff6ae1c (examples/vae/ss_vae_M2.py and utils/custom_mlp.py;
the batching of utils/mnist_cached.py). A benchmark baseline, not part of the library.

**Kept as in the example.** The model ``p(z) = N(0, I)``, ``p(y) = Cat(1/C)``, ``p(x|y,z) =
Bernoulli(decoder(z, y))`` (validation off: pixels are in ``[0, 1]``, not 0/1) and the guide
``q(y|x) = Cat(encoder_y(x))``, ``q(z|x,y) = N(encoder_z(x, y))``, site names ``y``, ``z``, ``x``
in one ``pyro.plate("data")``, y observed on labelled batches and enumerated on the others
(``config_enumerate(guide, "parallel", expand=True)``, ``TraceEnum_ELBO(max_plate_nesting=1,
strict_enumeration_warning=False)``); the auxiliary loss ``-46 * log q(y|x)`` on labelled batches
(``model_classify``, site ``y_aux`` under ``poutine.scale``, an empty guide, ``Trace_ELBO``),
stepped after the ELBO on every batch by a second SVI sharing the ELBO's optimizer; the networks
(``custom_mlp.MLP``: inputs concatenated, broadcast under enumeration; hidden layers
``Linear -> Softplus`` with weights and biases drawn from ``N(0, 0.001^2)``; output layers with
PyTorch's default initialisation and softmax over ``dim=1``, sigmoid, or identity and ``exp`` for
``encoder_z``'s location and scale), built in the example's order so a seed gives its weights;
``pyro.module("ss_vae", ...)`` in the two models; the classifier (the one-hot of the most
probable class of ``q(y|x)``); the optimizer (``pyro.optim.Adam``, ``betas=(beta_1, 0.999)``); one
epoch (``run_inference_for_epoch``: shuffled ``DataLoader``\\ s of labelled and unlabelled rows,
batches of 200, the ``i``-th batch labelled when ``i % int(N / n_labelled) == 1`` until the
labelled batches run out, every loss stepped on each batch, losses summed over rows); the
defaults of the example's flags (``z_dim=50``, ``hidden_layers=[500]``, learning rate 0.00042,
``beta_1=0.9``, batch size 200, 50 epochs, parallel enumeration, ``aux_loss_multiplier=46``, no
JIT) and ``pyro.set_rng_seed(seed)`` before the networks are built.

**Changed.**

- Data: the rows are what pyro_gmvae trains on (``load_data(...).x``: mnist8k's 784 pixels
  divided by 255, digits' 64 pixels, 0..16 in scikit-learn, divided by 16, so both in ``[0, 1]``;
  the example divides MNIST's by 255 too), with ``C`` the number of classes and ``D`` the row's
  width instead of 10 and 784. The labelled, unlabelled and held-out rows are
  ``semisupervised.py``'s, not the example's split of MNIST's 60,000 (the last 10,000 a
  validation set, ``sup_num / 10`` labelled per class, the 10,000 test digits to score).
- Batching: the example asserts that the batch size divides the labelled, validation, training
  and test counts. Here a loader's last batch may be short (``drop_last=False``, as its
  ``DataLoader``\\ s would do), so 50 or 100 labelled rows are one labelled batch of 50 or 100 an
  epoch, and the unlabelled rows end in one short batch. ``N`` in the schedule is the number of
  training rows (the example's ``train_data_size``, 50,000, labelled and unlabelled together).
  A schedule that would not reach every labelled batch raises ``ValueError`` (the example would
  run out of unlabelled batches and stop with ``StopIteration``).
- The auxiliary loss is on: the example's ``--aux-loss`` flag is off by default, but its
  ``EXAMPLE_RUN`` line and Pyro's tutorial turn it on with ``-alm 46``, and M2 without it learns
  little from a few labels. ``beta_1`` stays the flag's default, 0.9 (``EXAMPLE_RUN`` has 0.95).
- Scoring: no validation set, so no "best validation accuracy": the networks after the last epoch
  are scored, with plain accuracy (``argmax q(y|x)`` against the class), on the unlabelled training
  rows and the held-out rows. Nothing is scored between epochs (the example scores its validation
  and test sets every epoch, which also draws from torch's random stream for their shuffling).
- Plumbing: the settings are an :class:`M2Config`; a ``device`` argument replaces ``use_cuda``;
  the unlabelled loader yields rows alone instead of rows and NaN labels; no Visdom, log file or
  plots; per-epoch losses and seconds are returned instead of printed; Pyro's param store is
  cleared before training.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro.distributions.util import broadcast_shape
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm


@dataclass
class M2Config:
    """The example's flags that shape a run, at the example's defaults (but ``aux_loss``)."""

    z_dim: int = 50
    hidden_layers: tuple[int, ...] = (500,)
    aux_loss: bool = True
    aux_loss_multiplier: float = 46.0
    enum_discrete: str = "parallel"
    learning_rate: float = 0.00042
    beta_1: float = 0.9
    batch_size: int = 200
    num_epochs: int = 50


class Exp(nn.Module):
    """``exp``, as a module: the scale head of ``encoder_z``."""

    def forward(self, val: torch.Tensor) -> torch.Tensor:
        return torch.exp(val)


class MLP(nn.Module):
    """``custom_mlp.MLP`` as ``ss_vae_M2`` uses it.

    ``mlp_sizes`` is ``[input] + hidden + [output]``, the output an int or a list of sizes (one
    head each, with the matching entry of ``output_activation``). ``forward`` takes a tensor or a
    list of tensors ``(..., d_i)``, concatenated on the last dim (broadcast first when
    ``allow_broadcast``, for inputs with an enumeration dim), and returns ``(..., output)`` or a
    list of those.
    """

    def __init__(
        self,
        mlp_sizes: Sequence[int | Sequence[int]],
        activation: type[nn.Module] = nn.ReLU,
        output_activation: Any = None,
        allow_broadcast: bool = False,
    ) -> None:
        super().__init__()
        input_size, hidden_sizes, output_size = mlp_sizes[0], mlp_sizes[1:-1], mlp_sizes[-1]
        self.allow_broadcast = allow_broadcast
        layers: list[nn.Module] = []
        last = input_size
        for size in hidden_sizes:
            linear = nn.Linear(last, size)
            # The example's "for numerical stability" start: hidden layers near zero.
            linear.weight.data.normal_(0, 0.001)
            linear.bias.data.normal_(0, 0.001)
            layers += [linear, activation()]
            last = size
        self.hidden = nn.Sequential(*layers)
        self.single_output = isinstance(output_size, int)
        sizes = [output_size] if self.single_output else list(output_size)
        activations = (
            list(output_activation)
            if isinstance(output_activation, (list, tuple))
            else [output_activation] * len(sizes)
        )
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(last, size), *([_instance(act)] if act else []))
            for size, act in zip(sizes, activations, strict=True)
        )

    def forward(self, inputs: torch.Tensor | Sequence[torch.Tensor]) -> Any:
        if not torch.is_tensor(inputs):
            if self.allow_broadcast:
                shape = broadcast_shape(*[s.shape[:-1] for s in inputs]) + (-1,)
                inputs = [s.expand(shape) for s in inputs]
            inputs = torch.cat(list(inputs), dim=-1)
        h = self.hidden(inputs)
        outputs = [head(h) for head in self.heads]
        return outputs[0] if self.single_output else outputs


def _instance(activation: Any) -> nn.Module:
    """``custom_mlp.call_nn_op``: a softmax over dim 1, any other class with no arguments."""
    if not isinstance(activation, type):
        return activation
    return activation(dim=1) if activation in (nn.Softmax, nn.LogSoftmax) else activation()


class SSVAE(nn.Module):
    """The example's semi-supervised VAE: networks, model, guide, classifier and auxiliary loss.

    Args:
        output_size: number of classes C (y is a one-hot ``(C,)``).
        input_size: width D of a row, pixels in ``[0, 1]``.
        z_dim: size Z of the style latent z.
        hidden_layers: hidden widths of every network.
        config_enum: ``"parallel"`` lets the networks broadcast over the enumeration dim.
        aux_loss_multiplier: weight of ``-log q(y|x)`` on labelled rows in ``model_classify``.
    """

    def __init__(
        self,
        output_size: int = 10,
        input_size: int = 784,
        z_dim: int = 50,
        hidden_layers: Sequence[int] = (500,),
        config_enum: str | None = None,
        aux_loss_multiplier: float | None = None,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.input_size = input_size
        self.z_dim = z_dim
        self.hidden_layers = list(hidden_layers)
        self.allow_broadcast = config_enum == "parallel"
        self.aux_loss_multiplier = aux_loss_multiplier
        hidden = self.hidden_layers
        self.encoder_y = MLP(
            [input_size, *hidden, output_size],
            activation=nn.Softplus,
            output_activation=nn.Softmax,
            allow_broadcast=self.allow_broadcast,
        )
        self.encoder_z = MLP(
            [input_size + output_size, *hidden, [z_dim, z_dim]],
            activation=nn.Softplus,
            output_activation=[None, Exp],
            allow_broadcast=self.allow_broadcast,
        )
        self.decoder = MLP(
            [z_dim + output_size, *hidden, input_size],
            activation=nn.Softplus,
            output_activation=nn.Sigmoid,
            allow_broadcast=self.allow_broadcast,
        )

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> torch.Tensor:
        """The generative process, for rows ``xs (B, D)`` and one-hot classes ``ys (B, C)`` or
        None::

            p(z) = N(0, I)
            p(y) = Cat(1/C)                # observed where ys is given
            p(x|y,z) = Bernoulli(decoder(z, y))

        Returns the Bernoulli means ``(B, D)``, ``(C, B, D)`` when y is enumerated.
        """
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        options = dict(dtype=xs.dtype, device=xs.device)
        with pyro.plate("data"):
            prior_loc = torch.zeros(batch_size, self.z_dim, **options)
            prior_scale = torch.ones(batch_size, self.z_dim, **options)
            # (B, Z), or (C, B, Z) when the guide enumerates y
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            alpha_prior = torch.ones(batch_size, self.output_size, **options) / (
                1.0 * self.output_size
            )
            # (B, C) observed, or (C, B, C) enumerated in the guide
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            loc = self.decoder([zs, ys])
            pyro.sample("x", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=xs)
            return loc

    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        """The variational family, for rows ``xs (B, D)`` and one-hot ``ys (B, C)`` or None::

        q(y|x) = Cat(encoder_y(x))            # only where ys is not given
        q(z|x,y) = N(encoder_z(x, y))         # a diagonal Normal
        """
        with pyro.plate("data"):
            if ys is None:
                alpha = self.encoder_y(xs)
                # (C, B, C) under parallel enumeration (expand=True), the C one-hots
                ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            loc, scale = self.encoder_z([xs, ys])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def classifier(self, xs: torch.Tensor) -> torch.Tensor:
        """The one-hot ``(B, C)`` of the most probable class of ``q(y|x)`` for ``xs (B, D)``."""
        alpha = self.encoder_y(xs)
        _, ind = torch.topk(alpha, 1)
        return torch.zeros_like(alpha).scatter_(1, ind, 1.0)

    def model_classify(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        """Kingma et al.'s auxiliary loss: ``-aux_loss_multiplier * log q(y|x)`` on labelled
        rows ``xs (B, D)``, ``ys (B, C)``; nothing without ``ys``."""
        pyro.module("ss_vae", self)
        with pyro.plate("data"):
            if ys is not None:
                alpha = self.encoder_y(xs)
                with pyro.poutine.scale(scale=self.aux_loss_multiplier):
                    pyro.sample("y_aux", dist.OneHotCategorical(alpha), obs=ys)

    def guide_classify(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        """The empty guide of ``model_classify``, which has no latent sites."""


def supervised_schedule(
    sup_batches: int, unsup_batches: int, periodic_interval_batches: int
) -> list[bool]:
    """Which batches of an epoch are labelled, as ``run_inference_for_epoch`` decides: batch
    ``i`` when ``i % periodic_interval_batches == 1``, until the ``sup_batches`` are used.

    Raises:
        ValueError: the rule would not place every labelled batch (the example would then run
            out of unlabelled batches).
    """
    schedule, placed = [], 0
    for i in range(sup_batches + unsup_batches):
        is_supervised = i % periodic_interval_batches == 1 and placed < sup_batches
        placed += is_supervised
        schedule.append(is_supervised)
    if placed < sup_batches:
        raise ValueError(
            f"the example's schedule places {placed} of {sup_batches} labelled batches among "
            f"{sup_batches + unsup_batches} (one every {periodic_interval_batches}); label fewer "
            "rows or use larger batches"
        )
    return schedule


def run_inference_for_epoch(
    data_loaders: dict[str, DataLoader], losses: list[SVI], periodic_interval_batches: int
) -> tuple[list[float], list[float]]:
    """One epoch: every loss stepped on each batch, labelled batches interleaved by
    :func:`supervised_schedule`; returns each loss's sum over the labelled and over the
    unlabelled batches."""
    epoch_losses_sup = [0.0] * len(losses)
    epoch_losses_unsup = [0.0] * len(losses)
    sup_iter = iter(data_loaders["sup"])
    unsup_iter = iter(data_loaders["unsup"])
    schedule = supervised_schedule(
        len(data_loaders["sup"]), len(data_loaders["unsup"]), periodic_interval_batches
    )
    for is_supervised in schedule:
        if is_supervised:
            xs, ys = next(sup_iter)
            for loss_id, loss in enumerate(losses):
                epoch_losses_sup[loss_id] += loss.step(xs, ys)
        else:
            (xs,) = next(unsup_iter)
            for loss_id, loss in enumerate(losses):
                epoch_losses_unsup[loss_id] += loss.step(xs)
    return epoch_losses_sup, epoch_losses_unsup


def train_ss_vae(
    x_sup: np.ndarray,
    y_sup: np.ndarray,
    x_unsup: np.ndarray,
    n_classes: int,
    config: M2Config,
    seed: int,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[SSVAE, list[dict[str, Any]]]:
    """Train the example's SSVAE on labelled rows ``x_sup (L, D)`` of classes ``y_sup (L,)``
    (integers below ``n_classes``) and unlabelled rows ``x_unsup (U, D)``, all in ``[0, 1]``.

    Returns the networks and one record an epoch: its losses per row (each loss's sum over the
    labelled batches over L, over the unlabelled batches over U, as the example prints them) and
    its seconds.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    ss_vae = SSVAE(
        output_size=n_classes,
        input_size=x_sup.shape[1],
        z_dim=config.z_dim,
        hidden_layers=config.hidden_layers,
        config_enum=config.enum_discrete,
        aux_loss_multiplier=config.aux_loss_multiplier,
    ).to(device)
    optimizer = Adam({"lr": config.learning_rate, "betas": (config.beta_1, 0.999)})
    guide = config_enumerate(ss_vae.guide, config.enum_discrete, expand=True)
    elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    losses = [SVI(ss_vae.model, guide, optimizer, loss=elbo)]
    if config.aux_loss:
        losses.append(SVI(ss_vae.model_classify, ss_vae.guide_classify, optimizer, Trace_ELBO()))

    def rows(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)

    ys = torch.nn.functional.one_hot(torch.as_tensor(y_sup, dtype=torch.long), n_classes)
    data_loaders = {
        "sup": DataLoader(TensorDataset(rows(x_sup), rows(ys)), config.batch_size, shuffle=True),
        "unsup": DataLoader(TensorDataset(rows(x_unsup)), config.batch_size, shuffle=True),
    }
    sup_num, unsup_num = len(x_sup), len(x_unsup)
    periodic_interval_batches = int((sup_num + unsup_num) / (1.0 * sup_num))
    history = []
    bar = tqdm(range(config.num_epochs), desc="ss_vae_M2", disable=not progress)
    for epoch in bar:
        began = time.perf_counter()
        sup, unsup = run_inference_for_epoch(data_loaders, losses, periodic_interval_batches)
        history.append(
            {
                "epoch": epoch,
                "loss_sup": [v / sup_num for v in sup],
                "loss_unsup": [v / unsup_num for v in unsup],
                "seconds": time.perf_counter() - began,
            }
        )
        bar.set_postfix(loss=f"{history[-1]['loss_unsup'][0]:.1f}")
    return ss_vae, history


@torch.no_grad()
def predict_classes(ss_vae: SSVAE, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The example's classifier on rows ``x (N, D)``: the classes ``(N,)`` of highest
    ``q(y|x)``."""
    device = next(ss_vae.parameters()).device
    out = []
    for start in range(0, len(x), batch_size):
        xs = torch.as_tensor(np.asarray(x[start : start + batch_size], np.float32), device=device)
        out.append(ss_vae.classifier(xs).argmax(-1).cpu().numpy())
    return np.concatenate(out)


def config_record(config: M2Config) -> dict[str, Any]:
    """``config`` as JSON-ready values, to store beside a result."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }

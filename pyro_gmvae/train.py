"""Fitting a GMVAE: the training recipe, an ordered list of named phases, and the loop that runs it.

The default recipe (:func:`default_recipe`) reads, as the README and the paper's VaDE start do::

    Pretrain(pretrain_epochs)                      autoencoder, -log p(x | z = mean of q(z|x))
    Anchor(anchor_epochs, beta=anchor_beta,        -ELBO given y = each row's start cluster,
           classify=anchor_classify,               - alpha log q(y = start cluster | x);
           on_begin=[MixtureStart()])              begins with the mixture start, a new Adam
    SVI(epochs, beta=beta, lr_decay=lr_decay)      -ELBO with y summed out by TraceEnum_ELBO

A phase is a small object: its length, its loss, what happens when it begins (``on_begin``
actions, a new optimizer or not) and its learning rate. A researcher changes the recipe through
:class:`Recipe`'s methods (``replace``, ``insert``, ``without``) and passes it to :func:`fit` or
:class:`Trainer`; nothing private is touched. :class:`Trainer` derives the current phase, the total
length and the resume state from the recipe; a run directory, if given, receives per-epoch
metrics and checkpoints that let an interrupted run continue on the same trajectory.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from torch.nn import functional as F
from tqdm.auto import tqdm

from .checkpoints import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from .config import AUTO_START, RunConfig, TrainConfig, start_for
from .dataset import MISSING_LABEL, ScaledRows, check_min_rows, has_label, labelled_rows
from .errors import CheckpointError, ConfigError, DataError, RunDirectoryError
from .files import atomic_write_text
from .metrics import class_accuracy, clustering_scores
from .model import GMVAE
from .rng import rng_state, seed_everything, set_rng_state
from .start import (
    STARTS,
    Start,
    StartFunction,
    check_start,
    count_distinct,
    find_start,
    start_sample_size,
    tie_to_classes,
)
from .start import mixture_moments as _mixture_moments

METRICS_FILE = "metrics.jsonl"

_TORCH_VERSION = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])


class TrainingInterrupted(RuntimeError):
    """Training stopped on request (Ctrl-C, SIGTERM, SIGHUP); the checkpoint, if any, lets it
    resume exactly. ``signal`` is the number of the signal that asked, if one did."""

    def __init__(self, message: str, signal: int | None = None):
        super().__init__(message)
        self.signal = signal


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing after the last good checkpoint was saved."""


class TrainingProcessLost(RuntimeError):
    """One of the processes of a multi-process run died or became unreachable
    (:mod:`pyro_gmvae.distributed`); the others stopped, and the last checkpoint, written
    atomically by rank 0, is intact."""


def resolve_device(device: str | None) -> torch.device:
    """``device`` as a torch device; ``None`` means CUDA when available, else the CPU.

    Raises:
        ConfigError: a device torch does not know, or CUDA where none is available.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "--device cuda was asked for but no CUDA device is available; use --device cpu"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
                "device(s), numbered from 0"
            )
    elif resolved.type != "cpu":
        raise ConfigError(f"--device must be cpu or cuda, not {device!r}")
    return resolved


def augment_images(
    x: torch.Tensor,
    image_shape: tuple[int, int],
    rotation: float,
    shift: float,
    scale: float = 0.0,
) -> torch.Tensor:
    """Random small rotations (up to ``rotation`` degrees), shifts (up to ``shift`` of the
    width) and, when ``scale`` > 0, zooms (by a factor within 1 ± ``scale``) of flattened images
    ``x (N, H*W)``; the same shape comes back."""
    n = x.shape[0]
    h, w = image_shape
    angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(rotation)
    offset = (torch.rand(n, 2, device=x.device) * 2 - 1) * (2 * shift)  # grid spans [-1, 1]
    cos, sin = angle.cos(), angle.sin()
    if scale > 0:  # drawn only then, so the other moves draw the same numbers without it
        zoom = 1 + (torch.rand(n, device=x.device) * 2 - 1) * scale
        cos, sin = cos / zoom, sin / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, offset[:, 0]], -1), torch.stack([sin, cos, offset[:, 1]], -1)], 1
    )
    grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
    out = F.grid_sample(x.view(n, 1, h, w), grid, align_corners=False, padding_mode="zeros")
    return out.view(n, h * w).clamp(0.0, 1.0)


def strongly_moved(x: torch.Tensor, image_shape: tuple[int, int]) -> torch.Tensor:
    """FixMatch's strong moves (Sohn et al. 2020), as far as they suit grey images: flattened
    images ``x (N, H*W)`` rotated up to 25 degrees, shifted up to 0.15 of the width, zoomed by up
    to 15%, and half of them with a random square of 0.35 of the side blanked (cutout)."""
    n, (h, w) = x.shape[0], image_shape
    out = augment_images(x, image_shape, rotation=25.0, shift=0.15, scale=0.15).view(n, h, w)
    side = max(1, round(0.35 * h))
    top = torch.randint(0, h - side + 1, (n, 1, 1), device=x.device)
    left = torch.randint(0, w - side + 1, (n, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    square = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    blanked = (torch.rand(n, device=x.device) < 0.5).view(n, 1, 1)
    return out.masked_fill(square & blanked, 0.0).reshape(n, h * w)


@dataclass
class Batch:
    """One minibatch: the rows ``idx (B,)`` of the training data, their values ``x (B, D)``, and
    what the networks see instead of ``x`` (a randomly moved copy), if anything: ``view``. When
    some labels are known, ``y (B,)`` the rows' classes and ``known (B,)`` which of them are given
    to training, with ``aux_weight`` the weight of the classification term on those and
    ``consistency_weight`` that of pretraining's consistency term on the others.

    ``size``, when set, is the number N of training rows the batch was drawn from: the ELBO
    phases then size the ``data`` plate to N with ``idx`` its subsample and divide by N, the
    same per-example loss in expectation, as each process of data-parallel training computes
    it (:mod:`pyro_gmvae.distributed`). ``None``, the single-process default, leaves the loss
    exactly as it always was: a plate of B rows, divided by B.
    """

    idx: torch.Tensor
    x: torch.Tensor
    view: torch.Tensor | None = None
    size: int | None = None
    y: torch.Tensor | None = None
    known: torch.Tensor | None = None
    aux_weight: float = 0.0
    consistency_weight: float = 0.0

    @property
    def seen(self) -> torch.Tensor:
        """What the encoders see: the view when there is one, else the data."""
        return self.x if self.view is None else self.view

    @property
    def args(self) -> tuple[torch.Tensor, ...]:
        """The model's and guide's arguments (a traced, JIT loss cannot take None)."""
        return (self.x,) if self.view is None else (self.x, self.view)

    @property
    def plate(self) -> dict[str, Any]:
        """The model's and guide's ``size`` and ``subsample`` keywords: none by default."""
        return {} if self.size is None else {"size": self.size, "subsample": self.idx}

    @property
    def examples(self) -> int:
        """What the ELBO phases divide their loss by for a per-example loss: B, or ``size``."""
        return len(self.x) if self.size is None else self.size

    @property
    def labelled(self) -> dict[str, Any]:
        """The model's and guide's keyword arguments for the known labels (none without)."""
        if self.known is None:
            return {}
        return {"y_obs": self.y, "known": self.known, "aux_weight": self.aux_weight}


# ---------------------------------------------------------------------------------- phases
def epochs_within(
    epochs: int, batches_per_epoch: int, max_steps: int | None = None, min_steps: int | None = None
) -> int:
    """How many of ``epochs`` to run on data of ``batches_per_epoch`` minibatches: ``epochs``,
    or ``max_steps`` steps rounded to whole epochs (at least one) when that is fewer, or
    ``min_steps`` steps rounded up to whole epochs when that is more; 0 stays 0."""
    length = epochs
    if length == 0:
        return 0
    if max_steps is not None:
        length = min(length, max(1, round(max_steps / batches_per_epoch)))
    if min_steps is not None:
        length = max(length, math.ceil(min_steps / batches_per_epoch))
    return length


@dataclass
class Phase:
    """One stretch of the recipe: ``epochs`` passes over the training rows minimising
    :meth:`loss`, a per-example loss of a minibatch, or fewer when ``max_steps`` says so, or more
    when ``min_steps`` does.

    Args:
        epochs: the phase's length in passes over the data (0: the phase is skipped, its
            ``on_begin`` too).
        name: what the records' ``phase`` field and the figures call it; unique in a recipe.
        max_steps: at most this many optimizer steps (of ``batch_size`` rows), rounded to whole
            epochs and at least one: a larger data set then gets fewer passes, not more steps
            (None: ``epochs`` alone). See :meth:`length`.
        min_steps: at least this many optimizer steps, rounded up to whole epochs: a smaller
            data set then gets more passes, not fewer steps (None: ``epochs`` alone).
        lr: Adam's learning rate in the phase (None: ``TrainConfig.lr``).
        lr_decay: the learning rate is multiplied by this every 10 epochs of the phase (every
            tenth of ``epochs``' length, when ``max_steps`` shortens it).
        new_optimizer: begin with a fresh Adam (its moments forgotten) instead of continuing.
        on_begin: actions called with the trainer, in order, when the phase begins (before the
            optimizer is made), e.g. :class:`MixtureStart`.
    """

    epochs: int
    name: str = "phase"
    max_steps: int | None = None
    min_steps: int | None = None
    lr: float | None = None
    lr_decay: float = 1.0
    new_optimizer: bool = False
    on_begin: Sequence[Callable[[Trainer], None]] = ()

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"phase {self.name!r}: epochs must be >= 0, not {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(
                f"phase {self.name!r}: max_steps must be at least 1 (None: no limit), not "
                f"{self.max_steps}"
            )
        if self.min_steps is not None and self.min_steps < 1:
            raise ConfigError(
                f"phase {self.name!r}: min_steps must be at least 1 (None: no floor), not "
                f"{self.min_steps}"
            )
        if None not in (self.min_steps, self.max_steps) and self.min_steps > self.max_steps:
            raise ConfigError(
                f"phase {self.name!r}: min_steps {self.min_steps} is more than max_steps "
                f"{self.max_steps}"
            )
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"phase {self.name!r}: lr_decay must be in (0, 1]")
        self.on_begin = tuple(self.on_begin)

    def length(self, batches_per_epoch: int) -> int:
        """The phase's length in epochs on data of ``batches_per_epoch`` minibatches (see
        :func:`epochs_within`)."""
        return epochs_within(self.epochs, batches_per_epoch, self.max_steps, self.min_steps)

    def loss(self, trainer: Trainer, batch: Batch) -> torch.Tensor:
        """The loss of ``batch``, per example (a scalar tensor to minimise)."""
        raise NotImplementedError

    def learning_rate(self, base_lr: float, epoch: int, length: int | None = None) -> float:
        """The learning rate in epoch ``epoch`` (0-based) of the phase, whose length is
        ``length`` epochs (None: ``epochs``): decayed every 10 epochs, or at the same fractions
        of a phase that ``max_steps`` shortened, so the schedule keeps its shape."""
        period = 10 if length is None or length >= self.epochs else 10 * length / self.epochs
        return (self.lr or base_lr) * self.lr_decay ** math.floor(epoch / period + 1e-9)

    def check(self, trainer: Trainer) -> None:
        """Refuse, before any training, what this phase cannot do with the trainer's data."""
        for action in self.on_begin:
            if hasattr(action, "check"):
                action.check(trainer)

    def describe(self) -> dict[str, Any]:
        """The phase as plain values, for checkpoints and people."""
        described = {"name": self.name, "kind": type(self).__name__, "epochs": self.epochs}
        steps = {"max_steps": self.max_steps, "min_steps": self.min_steps}
        return described | {k: v for k, v in steps.items() if v is not None}


@dataclass
class Pretrain(Phase):
    """Autoencoder pretraining (VaDE): -log p(x | z = mean of q(z|x)), the prior unused.

    When some labels are known, the labelled rows add the classification term that SVI gives
    them, ``-aux_weight * log q(y|x)`` at their class (summed over the labelled rows of the
    batch and divided by its size, as the ELBO phases do). The codes are then shaped by the
    classes from the first step: the start's clusters find them, where codes learnt without the
    labels confuse classes that the labels alone can no longer pull apart (on mnist8k with 100
    labels the start rose from 0.894 to 0.928-0.935 on two seeds; benchmarks/RESULTS.md).

    For images, ``consistency_weight`` adds FixMatch's term (Sohn et al. 2020) on the unlabelled
    rows: where q(y|x) on what the encoders see (the moved copy) is above ``confidence``, minus
    log q(y|x) at that class on a :func:`strongly_moved` copy, summed and divided by the batch's
    size. The classes the labels taught then reach the unlabelled rows through moves that keep
    a digit's class, so the codes are shaped by more than the few labelled rows.
    """

    name: str = "pretrain"
    new_optimizer: bool = True
    confidence: float = 0.95

    def loss(self, trainer: Trainer, batch: Batch) -> torch.Tensor:
        model = trainer.model
        loc, _ = model.encoder(batch.seen)
        loss = -model.likelihood(model.decoder(loc)).log_prob(batch.x).mean()
        if batch.known is not None and batch.aux_weight and bool(batch.known.any()):
            log_q = model.cluster_log_proba(batch.seen[batch.known])  # (L, K)
            at_class = log_q.gather(-1, batch.y[batch.known].unsqueeze(-1)).sum()
            loss = loss - batch.aux_weight * at_class / len(batch.x)
        unlabelled = None if batch.known is None else ~batch.known
        if (
            unlabelled is not None
            and batch.consistency_weight
            and trainer.image_shape is not None
            and bool(unlabelled.any())
        ):
            seen, x = batch.seen[unlabelled], batch.x[unlabelled]
            term = self.consistency(model, seen, x, trainer.image_shape)
            loss = loss + batch.consistency_weight * term / len(batch.x)
        return loss

    def consistency(
        self, model: GMVAE, seen: torch.Tensor, x: torch.Tensor, image_shape: tuple[int, int]
    ) -> torch.Tensor:
        """FixMatch's unlabelled loss, summed over the rows: where q(y|x) on what the encoders
        see is above ``confidence``, minus log q(y|x) at that class on a strongly moved copy."""
        with torch.no_grad():
            confident, guess = model.cluster_log_proba(seen).exp().max(-1)
        log_q = model.cluster_log_proba(strongly_moved(x, image_shape))
        at_guess = log_q.gather(-1, guess.unsqueeze(-1)).squeeze(-1)
        return -(at_guess * (confident > self.confidence)).sum()


@dataclass
class Anchor(Phase):
    """The negative ELBO given each row's cluster at the start (``trainer.assignments``), KL
    terms weighted by ``beta``: it moves each code towards its own cluster before SVI sums y.

    ``classify`` alpha adds ``-alpha * log q(y_start|x)`` per example, the start's cluster taken
    as each row's label, as the labelled rows' auxiliary term does with their class (q(y|x) is
    :meth:`~pyro_gmvae.model.GMVAE.cluster_log_proba`: the cluster encoder, or p(y|z) at the mean
    of q(z|x)). The ELBO given y only pulls a code towards its own cluster's mean; the term also
    pushes it from the clusters it is confused with, so the model's clusters reach the start's
    in fewer epochs (on mnist8k the ELBO alone agreed with the start on 96% of the rows after 90
    epochs, with the term on 97% after 30; benchmarks/RESULTS.md). The term belongs to this
    phase's objective, not to the generative story, so it is written here, as the
    autoencoder's loss is in :class:`Pretrain`.
    """

    name: str = "anchor"
    beta: float = 1.0
    classify: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._elbo = TraceEnum_ELBO(max_plate_nesting=1)  # a new model per batch: no JIT

    def loss(self, trainer: Trainer, batch: Batch) -> torch.Tensor:
        if trainer.assignments is None:
            raise RuntimeError(
                f"phase {self.name!r} holds each row at its start cluster, but there is no start: "
                "begin it (or an earlier phase) with on_begin=[MixtureStart()], or call "
                "trainer.start_mixture() before run()"
            )
        y = trainer.assignments[batch.idx]
        model = poutine.condition(trainer.model_fn, data={"y": y})
        guide = trainer.guide_fn
        if trainer.model.cluster_encoder is not None:
            # q(z|x,y) at the given y; hidden, so that q(y|x) adds no term to this loss.
            guide = poutine.block(poutine.condition(guide, data={"y": y}), hide=["y"])
        elbo = self._elbo.differentiable_loss(
            model, guide, *batch.args, kl_scale=self.beta, **batch.plate
        )
        loss = elbo / batch.examples  # per example, as the term's mean over the batch is
        if self.classify:
            log_q = trainer.model.cluster_log_proba(batch.seen)  # (B, K)
            loss = loss - self.classify * log_q.gather(-1, y.unsqueeze(-1)).mean()
        return loss


@dataclass
class SVI(Phase):
    """Stochastic variational inference: the negative ELBO per example with y summed out
    exactly, KL terms weighted by ``beta`` (1: the exact ELBO). ``elbo`` is the estimator
    (default ``TraceEnum_ELBO(max_plate_nesting=1)``; ``JitTraceEnum_ELBO`` works too)."""

    name: str = "svi"
    beta: float = 1.0
    elbo: pyro.infer.ELBO | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.elbo is None:
            self.elbo = TraceEnum_ELBO(max_plate_nesting=1)

    def loss(self, trainer: Trainer, batch: Batch) -> torch.Tensor:
        loss = self.elbo.differentiable_loss(
            trainer.model_fn,
            trainer.guide_fn,
            *batch.args,
            kl_scale=self.beta,
            **batch.plate,
            **batch.labelled,
        )
        return loss / batch.examples


@dataclass
class MixtureStart:
    """An ``on_begin`` action: start the prior p(y) p(z|y) from clusters of the training rows
    found by ``init`` (a name of :data:`~pyro_gmvae.start.STARTS` or a start function; None:
    ``TrainConfig.init``) on the codes of the encoder, then fit q(y|x) to them for
    ``cluster_encoder_epochs`` (None: ``TrainConfig.cluster_encoder_epochs``; enumerated guide
    only). See :meth:`Trainer.start_mixture`.

    With labels known the clusters are tied to the classes (:func:`~pyro_gmvae.start.tie_to_classes`)
    and, with ``classifier`` and the consistency term on (images), combined with the pretrained
    q(y|x) (:meth:`GMVAE.predict_proba`), which the labelled rows' term and the consistency term
    taught: it decides the rows the start's mixture is torn about (on `digits` with 50 labels,
    seed 2, the start's unlabelled rows rose from 0.925 to 0.945, held-out 0.914 to 0.930;
    benchmarks/RESULTS.md)."""

    init: str | StartFunction | None = None
    cluster_encoder_epochs: int | None = None
    classifier: bool = True

    def start_function(self, trainer: Trainer) -> tuple[str, StartFunction | None]:
        """The start's name and function (None for a name of ``STARTS``); ``auto`` resolved by
        :func:`~pyro_gmvae.config.start_for` of the model's features."""
        init = trainer.config.init if self.init is None else self.init
        if init == AUTO_START:
            init = start_for(trainer.model.config.n_features)
        return (init, None) if isinstance(init, str) else (init.__name__, init)

    def check(self, trainer: Trainer) -> None:
        name, fn = self.start_function(trainer)
        if fn is None:
            check_start(name, len(trainer.x), trainer.model.n_clusters, trainer.config)

    def __call__(self, trainer: Trainer) -> None:
        name, fn = self.start_function(trainer)
        began = time.perf_counter()
        rows = len(trainer.x)
        sample = start_sample_size(rows, trainer.config)
        on = f" on {sample:,} of {rows:,} rows" if sample < rows else ""
        with trainer.activity(f"mixture start ({name}{on})"):
            codes = trainer.codes()
            data = trainer.host_rows()
            uniform = not trainer.model.config.learn_weights
            start = find_start(
                fn or name, codes, data, trainer.model.n_clusters, trainer.config, uniform
            )
            if trainer.known is not None:
                # q(y|x) is worth a vote where the consistency term taught it from every row
                # (images); on a table only the few labelled rows did, and the product there
                # scored no better (iris, wine: benchmarks/RESULTS.md).
                taught = trainer.image_shape is not None and trainer.config.consistency_weight > 0
                use = self.classifier and taught
                classifier = trainer.model.predict_proba(trainer.x) if use else None
                known = trainer.known.cpu().numpy()
                start = tie_to_classes(start, trainer.labels, known, classifier)
        if start.source is None:  # the record and the figures name every start
            start.source = name
        epochs = self.cluster_encoder_epochs
        trainer.start_mixture(
            start, codes, trainer.config.cluster_encoder_epochs if epochs is None else epochs
        )
        trainer.start_info["seconds"] = time.perf_counter() - began  # the record's start_seconds


class Recipe(Sequence[Phase]):
    """An ordered list of uniquely named phases; immutable: the methods return a new recipe.

    ``recipe["anchor"]`` is the phase of that name, ``recipe[1]`` the second one.
    """

    def __init__(self, phases: Iterable[Phase]):
        self.phases: tuple[Phase, ...] = tuple(phases)
        names = [p.name for p in self.phases]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ConfigError(f"phase names must be unique in a recipe: {duplicated} repeat")
        if not all(isinstance(p, Phase) for p in self.phases):
            raise TypeError("a recipe holds Phase objects")

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return self.phases[self.index(key)]
        return self.phases[key]

    def __len__(self) -> int:
        return len(self.phases)

    def __repr__(self) -> str:
        return "Recipe([\n" + "".join(f"    {p!r},\n" for p in self.phases) + "])"

    def index(self, name: str) -> int:  # type: ignore[override]
        for i, phase in enumerate(self.phases):
            if phase.name == name:
                return i
        raise KeyError(f"no phase named {name!r}; the recipe has {self.names}")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.phases]

    @property
    def total_epochs(self) -> int:
        """The phases' ``epochs`` added up, before any ``max_steps`` (see :meth:`lengths`)."""
        return sum(p.epochs for p in self.phases)

    def lengths(self, batches_per_epoch: int) -> list[int]:
        """Each phase's length in epochs on data of ``batches_per_epoch`` minibatches."""
        return [p.length(batches_per_epoch) for p in self.phases]

    def replace(self, name: str, phase: Phase) -> Recipe:
        """The recipe with the phase called ``name`` replaced by ``phase``."""
        i = self.index(name)
        return Recipe(self.phases[:i] + (phase,) + self.phases[i + 1 :])

    def insert(
        self, phase: Phase, *, after: str | None = None, before: str | None = None
    ) -> Recipe:
        """The recipe with ``phase`` added after (or before) the phase of that name; at the end
        when neither is given."""
        if after is not None and before is not None:
            raise ValueError("pass after= or before=, not both")
        i = len(self.phases)
        if after is not None:
            i = self.index(after) + 1
        elif before is not None:
            i = self.index(before)
        return Recipe(self.phases[:i] + (phase,) + self.phases[i:])

    def without(self, name: str) -> Recipe:
        """The recipe without the phase called ``name``."""
        i = self.index(name)
        return Recipe(self.phases[:i] + self.phases[i + 1 :])

    def locate(self, epoch: int, lengths: Sequence[int] | None = None) -> tuple[int, int]:
        """``(phase index, epoch within that phase)`` of global epoch ``epoch`` (0-based), the
        phases ``lengths`` epochs long (None: their ``epochs``)."""
        lengths = [p.epochs for p in self.phases] if lengths is None else lengths
        total = sum(lengths)
        for i, length in enumerate(lengths):
            if epoch < length:
                return i, epoch
            epoch -= length
        raise IndexError(f"epoch {epoch + total} is past the recipe's {total} epochs")

    def describe(self) -> list[dict[str, Any]]:
        return [p.describe() for p in self.phases]


def default_recipe(
    config: TrainConfig, elbo: pyro.infer.ELBO | None = None, images: bool = True
) -> Recipe:
    """The recipe of ``gmvae train``, from ``config``: pretraining, then the mixture start and the
    anchor epochs, then SVI with y summed out (``elbo``: its estimator). Without pretraining
    there are no codes to start from: SVI alone, from the prior as it is.

    With labels known and the consistency term on, for ``images`` (the term needs moves that keep
    a class), pretraining is ``consistency_pretrain_factor`` times as long (1 by default, since
    the default pretraining is the 300 epochs that FixMatch's term was measured to need: mnist8k
    with 100 labels, held-out 0.951 at 150 epochs, 0.960 at 300, five seeds;
    benchmarks/RESULTS.md)."""
    svi = dict(  # 0 steps: no limit
        max_steps=config.steps or None, beta=config.beta, lr_decay=config.lr_decay, elbo=elbo
    )
    if config.pretrain_epochs == 0:
        return Recipe([SVI(config.epochs, **svi)])
    start = (MixtureStart(),)
    anchor = config.anchor_epochs
    pretrain_epochs, pretrain_steps = config.pretrain_epochs, config.pretrain_steps
    if images and config.semi_supervised and config.consistency_weight:
        factor = config.consistency_pretrain_factor
        # At least one epoch and step where there were any: a factor never turns pretraining off.
        pretrain_epochs = max(1, round(factor * pretrain_epochs))
        pretrain_steps = max(1, round(factor * pretrain_steps)) if pretrain_steps else 0
    return Recipe(
        [
            Pretrain(pretrain_epochs, max_steps=pretrain_steps or None),
            Anchor(
                anchor,
                max_steps=config.anchor_steps or None,
                min_steps=config.anchor_min_steps or None,
                beta=config.anchor_beta,
                classify=config.anchor_classify,
                on_begin=start,
                new_optimizer=True,
            ),
            SVI(
                config.epochs,
                **svi,
                lr=config.svi_lr or None,
                # Without anchor epochs the start begins SVI itself.
                on_begin=() if anchor else start,
                new_optimizer=not anchor,
            ),
        ]
    )


# ---------------------------------------------------------------------------------- metrics
def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run (``metrics.jsonl``): JSON objects with epochs 1, 2, ...

    Raises:
        RunDirectoryError: a line that is not JSON, not an object, or out of order.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        return []

    def bad(why: str) -> RunDirectoryError:
        return RunDirectoryError(
            f"{path} is not a run's metrics ({why}); restore it from a copy, or delete it to "
            "resume without the earlier epochs' records"
        )

    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError, RecursionError) as e:
        raise bad(f"not readable JSON lines: {e}") from None
    for i, record in enumerate(records, 1):
        if not isinstance(record, dict) or record.get("epoch") != i:
            raise bad(f"record {i} is not the object of epoch {i}: {str(record)[:60]}")
    return records


def write_metrics(path: str | Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(Path(path), "".join(json.dumps(r) + "\n" for r in records))


# ---------------------------------------------------------------------------------- trainer
class Trainer:
    """Runs ``recipe`` (default: :func:`default_recipe` of ``config``) on ``model`` and ``x``.

    Args:
        model: the GMVAE to fit (changed in place).
        x: training data ``(N, D)``, already preprocessed (images in [0, 1]): an array or
            tensor, copied to the device as one float32 tensor, or a
            :class:`~pyro_gmvae.dataset.ScaledRows` (images in an .npy file, as
            :func:`~pyro_gmvae.data.load_data` gives them), kept where it is, on disk, and read
            a minibatch at a time: the same rows in the same order, so the same training.
        config: the training options.
        recipe: the phases to run; default :func:`default_recipe` of ``config``.
        labels: ``(N,)`` reference labels, for scoring each epoch, and the classes of the rows
            that ``known`` marks: classes 0, 1, ..., and
            :data:`~pyro_gmvae.dataset.MISSING_LABEL` (-1) on rows that have none, which every
            score leaves out (as ``load_data(..., allow_missing_labels=True)`` gives them).
        known: ``(N,)`` bool, the rows whose label training sees (y observed there, enumerated
            elsewhere; cluster k is class k), each with a label; None: ``config.labels_known``
            rows drawn with the seed, balanced per class, among the rows that have a label (all
            of those for ``"all"``), or none when that is 0 (clustering, labels only score).
        run_dir: where metrics and checkpoints go; ``None`` keeps everything in memory.
        run_config: the run's full configuration, saved inside each checkpoint.
        elbo: the SVI phase's estimator in the default recipe (give a recipe or this, not both).
        progress: show a tqdm bar.
        on_epoch: called with each epoch's record (e.g. to plot live in a notebook).
        on_batch: called with the trainer after each optimizer step (``trainer.epoch`` and
            ``trainer.batch`` say where); it may call :meth:`request_stop`.
        extra_state: plain values saved in every checkpoint, returned by :meth:`resume`
            (``gmvae train`` keeps a fingerprint of the training data there).
    """

    def __init__(
        self,
        model: GMVAE,
        x: np.ndarray | torch.Tensor | ScaledRows,
        config: TrainConfig,
        *,
        recipe: Recipe | Iterable[Phase] | None = None,
        labels: np.ndarray | None = None,
        known: np.ndarray | torch.Tensor | None = None,
        run_dir: str | Path | None = None,
        run_config: RunConfig | None = None,
        elbo: pyro.infer.ELBO | None = None,
        progress: bool = True,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        on_batch: Callable[[Trainer], None] | None = None,
        extra_state: dict[str, Any] | None = None,
    ):
        config.validate()
        if recipe is not None and elbo is not None:
            raise ValueError("pass elbo to the recipe's SVI phase, or no recipe")
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        #: The training rows: a float32 tensor on the device, or the ScaledRows given.
        self.x = model.check_input(x)
        check_min_rows(self.x, model.n_clusters)  # the mixture fit needs a row per cluster
        if labels is not None and len(labels) != len(self.x):
            raise DataError(
                f"{len(labels)} labels for {len(self.x)} rows of data; pass one label per row "
                "(or no labels)"
            )
        self.labels = None if labels is None else np.asarray(labels)
        #: ``(N,)`` bool, the rows that have a label (the rows scored); None without labels.
        self.labelled = None if labels is None else has_label(self.labels)
        self.classes: torch.Tensor | None = None  # (N,) each row's class where known, else 0
        self.known = self._known_rows(known)
        images = model.config.image_shape is not None
        self.recipe = default_recipe(config, elbo, images) if recipe is None else Recipe(recipe)
        #: Each phase's length in epochs on this data (``max_steps`` applied).
        self.lengths = self.recipe.lengths(self.batches_per_epoch)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.run_config = run_config
        # Bound once: JitTraceEnum_ELBO caches its compiled loss by id(model) and id(guide), and
        # every access to a method makes a new bound-method object.
        self.model_fn = model.model
        self.guide_fn = model.guide
        self.progress = progress
        self.on_epoch = on_epoch
        self.on_batch = on_batch
        self.extra_state = extra_state or {}
        self.image_shape = model.config.image_shape
        self.history: list[dict[str, Any]] = []
        # Position: completed epochs, the next batch within the current epoch, and how many of
        # the recipe's phases have begun (their on_begin run).
        self.epoch = 0
        self.batch = 0
        self.begun = 0
        self.perm: torch.Tensor | None = None
        self.epoch_loss = 0.0
        # What the mixture start found: each row's cluster (held by Anchor phases), and its notes.
        self.assignments: torch.Tensor | None = None
        self.start_info: dict[str, Any] | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._stop_signal: int | None = None
        self._stop_requested = False
        self._saved_at = time.monotonic()  # when the last checkpoint was written (or run began)
        self._bar: tqdm | None = None
        # Reading a loss back syncs a GPU with the host: there, check for NaN every 50 batches.
        self.check_every = 1 if self.device.type == "cpu" else 50
        for phase in self.recipe:
            phase.check(self)
            if self.known is not None and type(getattr(phase, "elbo", None)).__name__[:3] == "Jit":
                # The labels enter as tensor keyword arguments, which a JIT loss hashes by
                # identity: it would compile anew for every batch.
                raise ConfigError(
                    f"phase {phase.name!r}: a JIT-compiled ELBO cannot take the known labels; "
                    "use TraceEnum_ELBO (the default) when labels are known"
                )
        if any(
            isinstance(a, MixtureStart)
            for p, length in zip(self.recipe, self.lengths, strict=True)
            for a in p.on_begin
            if length
        ):
            # Before any training: rows that are all alike cannot make K clusters (and crash
            # t-SNE), and would only be found out after pretraining.
            distinct = count_distinct(self.host_rows(), model.n_clusters)
            if distinct < model.n_clusters:
                raise DataError(
                    f"the {len(self.x)} training rows take only {distinct} distinct values, "
                    f"fewer than the {model.n_clusters} clusters; pass --clusters {distinct} or "
                    "fewer, or check the data"
                )

    def _known_rows(self, known: np.ndarray | torch.Tensor | None) -> torch.Tensor | None:
        """The rows whose class training sees, a bool tensor ``(N,)`` on the device, or None."""
        if known is None and not self.config.semi_supervised:
            return None
        if self.labels is None:
            raise DataError(
                "training with labels known needs the labels: pass labels= (or data with a "
                "label column), or no --labels-known"
            )
        if known is None:
            known = labelled_rows(self.labels, self.config.labels_known, self.config.seed)
        known = np.asarray(torch.as_tensor(known).cpu())
        if known.shape != (len(self.x),) or known.dtype != np.bool_:
            raise DataError(
                f"known must be a bool mask of shape ({len(self.x)},), one per training row, "
                f"not {known.dtype} of shape {known.shape}"
            )
        unlabelled = known & ~self.labelled
        if unlabelled.any():
            raise DataError(
                f"known marks {int(unlabelled.sum())} row(s) whose label is missing "
                f"({MISSING_LABEL}, the first row {int(np.argmax(unlabelled))}); mark only rows "
                "that have a label"
            )
        if not known.any():
            raise DataError("known marks no row; mark at least one, or pass no known")
        named = self.labels[known]
        K = self.model.n_clusters
        if not np.issubdtype(named.dtype, np.integer) or named.min() < 0 or named.max() >= K:
            raise DataError(
                f"the labels of the labelled rows must be classes 0..{K - 1} (cluster k is "
                "class k); encode them as integers and pass as many --clusters as classes"
            )
        self.classes = torch.as_tensor(
            np.where(known, self.labels, 0).astype(np.int64), device=self.device
        )
        return torch.as_tensor(known, device=self.device)

    # ------------------------------------------------------------------------------ position
    @property
    def total_epochs(self) -> int:
        return sum(self.lengths)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.x) / self.config.batch_size)

    def locate(self, epoch: int) -> tuple[int, int]:
        """``(phase index, epoch within that phase)`` of epoch ``epoch`` (0-based) on this data."""
        return self.recipe.locate(epoch, self.lengths)

    def phase_at(self, epoch: int) -> Phase:
        """The phase that epoch ``epoch`` (0-based) belongs to."""
        return self.recipe[self.locate(epoch)[0]]

    def learning_rate(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (0-based), by its phase's schedule."""
        index, position = self.locate(epoch)
        return self.recipe[index].learning_rate(self.config.lr, position, self.lengths[index])

    def start_record(self) -> dict[str, Any]:
        """What the record of the current epoch says of a mixture start made as it began: the
        start's ``start`` name, its ``start_scores`` (each candidate's, if it chose between some) and ``start_seconds``;
        nothing in other epochs."""
        info = self.start_info
        if info is None or info["epoch"] != self.epoch or info["source"] is None:
            return {}
        record: dict[str, Any] = {"start": info["source"]}
        if info["scores"]:
            record["start_scores"] = info["scores"]
        if "seconds" in info:
            record["start_seconds"] = info["seconds"]
        return record

    def describe_recipe(self) -> list[dict[str, Any]]:
        """The recipe as plain values, each phase with its ``length`` in epochs on this data."""
        return [
            p.describe() | {"length": n} for p, n in zip(self.recipe, self.lengths, strict=True)
        ]

    # ------------------------------------------------------------------------------- pieces
    def make_optimizer(self) -> torch.optim.Optimizer:
        """A fresh Adam over the model's parameters."""
        # Fused Adam updates all parameters in one kernel; torch's default loops over them,
        # which cost 7-13 ms a step on the CPU box at the default size (benchmarks/SPEED.md).
        # The CPU kernel arrived in torch 2.4; older versions keep the default.
        fused = self.device.type == "cuda" or _TORCH_VERSION >= (2, 4)
        return torch.optim.Adam(self.model.parameters(), lr=self.config.lr, fused=fused)

    def host_rows(self) -> np.ndarray | ScaledRows:
        """The training rows ``(N, D)`` float32 on the host, as a start reads them: the training
        tensor copied, or the :class:`~pyro_gmvae.dataset.ScaledRows` itself (``np.asarray``
        copies it, for a start that needs the whole)."""
        return self.x if isinstance(self.x, ScaledRows) else self.x.cpu().numpy()

    def minibatch(self, idx: torch.Tensor) -> Batch:
        """The rows ``idx`` and, for images with augmentation on, a randomly moved view.

        In ``view`` mode the networks see the view and the likelihood scores the original; in
        ``data`` mode the view replaces the original altogether. Rows of a
        :class:`~pyro_gmvae.dataset.ScaledRows` are read from disk (in file order, returned in
        the order of ``idx``) and copied to the device.
        """
        if isinstance(self.x, ScaledRows):
            xb = torch.as_tensor(self.x[idx.cpu().numpy()], device=self.device)
        else:
            xb = self.x[idx]
        c = self.config
        labelled = {}
        if self.known is not None:
            labelled = {
                "y": self.classes[idx],
                "known": self.known[idx],
                "aux_weight": c.aux_weight,
                "consistency_weight": c.consistency_weight,
            }
        if self.image_shape is None or (c.augment_rotation == 0 and c.augment_shift == 0):
            return Batch(idx, xb, **labelled)
        view = augment_images(xb, self.image_shape, c.augment_rotation, c.augment_shift)
        if c.augment_mode == "view":
            return Batch(idx, xb, view, **labelled)
        return Batch(idx, view, **labelled)

    def step(self, loss: torch.Tensor) -> None:
        """One optimizer step on ``loss``, gradients clipped to ``clip_norm``."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        self.optimizer.step()

    @torch.no_grad()
    def codes(self) -> np.ndarray:
        """The means of q(z|x) of the training rows, ``(N, Z)`` float64 on the host."""
        encoder = self.model.encoder
        return self.model._batched(lambda b: encoder(b)[0], self.x).cpu().double().numpy()

    @torch.no_grad()
    def start_mixture(
        self,
        start: Start | np.ndarray,
        codes: np.ndarray | None = None,
        cluster_encoder_epochs: int | None = None,
    ) -> None:
        """Start the prior from a :class:`~pyro_gmvae.start.Start` (or its responsibilities
        ``(N, K)``) of the training rows: each cluster's weight, mean and variance of the codes
        (the means of q(z|x), ``codes`` if already computed), q(z|x) narrow, and q(y|x) fitted
        to them for ``cluster_encoder_epochs`` (enumerated guide; at most
        ``config.cluster_encoder_steps`` steps, rounded to whole epochs). Each row's most probable
        cluster is held during Anchor phases.

        :class:`MixtureStart` calls this with the clusters its start finds.
        """
        if not isinstance(start, Start):
            start = Start(np.asarray(start, dtype=np.float64))
        model = self.model
        responsibilities = np.asarray(start.responsibilities, dtype=np.float64)
        if responsibilities.shape != (len(self.x), model.n_clusters):
            raise ValueError(
                f"responsibilities have shape {responsibilities.shape}; pass one row of "
                f"{model.n_clusters} cluster probabilities per training row, "
                f"({len(self.x)}, {model.n_clusters})"
            )
        if codes is None:
            codes = self.codes()
        self.assignments = torch.as_tensor(responsibilities.argmax(1), device=self.device)
        self.start_info = {"epoch": self.epoch, "source": start.source, "scores": start.scores}
        weights, means, variances = _mixture_moments(codes, responsibilities)
        model.set_prior(means, np.sqrt(variances), weights)
        if hasattr(model.encoder, "reset_scale"):
            # The pretrained encoder never trained its scale: start q(z|x) narrow relative to
            # the clusters, or the first ELBO steps see a huge KL and wreck the codes.
            model.encoder.reset_scale(0.1 * float(np.sqrt(variances).min()))
        epochs = (
            self.config.cluster_encoder_epochs
            if cluster_encoder_epochs is None
            else cluster_encoder_epochs
        )
        # As a phase's length: a larger data set gets fewer epochs, not more steps.
        steps = self.config.cluster_encoder_steps or None
        epochs = epochs_within(epochs, self.batches_per_epoch, max_steps=steps)
        if model.cluster_encoder is not None and epochs > 0:
            with torch.enable_grad():
                self._fit_cluster_encoder(
                    torch.as_tensor(responsibilities, dtype=torch.float32, device=self.device),
                    epochs,
                )

    def _fit_cluster_encoder(self, responsibilities: torch.Tensor, epochs: int) -> None:
        """Start q(y|x) from the start's responsibilities, so the enumerated guide begins where
        the marginal one would (cross-entropy to soft targets), on what it will see in SVI: the
        moved views when augmentation is on.

        The gradients come from ``torch.autograd.grad``, not ``backward``: on several processes
        this runs on rank 0 alone, between DDP's steps, and a ``backward`` would reach DDP's
        hooks on the parameters, which would then take q(y|x) as used by rank 0 in the next
        step, where only SVI uses it, and stop ("gradient which is undefined, but still
        allreduced by DDP reducer")."""
        encoder = self.model.cluster_encoder
        params = list(encoder.parameters())
        optimizer = torch.optim.Adam(params, lr=self.config.lr)
        n, bs = len(self.x), self.config.batch_size
        for _ in range(epochs):
            for idx in torch.randperm(n, device=self.device).split(bs):
                logits = encoder(self.minibatch(idx).seen)
                loss = -(responsibilities[idx] * F.log_softmax(logits, -1)).sum(-1).mean()
                for p, grad in zip(params, torch.autograd.grad(loss, params), strict=True):
                    p.grad = grad
                optimizer.step()
        for p in params:
            p.grad = None

    @contextlib.contextmanager
    def activity(self, what: str) -> Iterator[None]:
        """Show ``what`` and its elapsed time on the progress bar while the block runs (a start
        can take minutes without a step), and keep that time out of the bar's rate and ETA."""
        bar = self._bar
        if bar is None or bar.disable:
            yield
            return
        done = threading.Event()
        began = time.perf_counter()

        def tick() -> None:
            while not done.wait(1.0):
                bar.set_description_str(f"{what} {time.perf_counter() - began:.0f}s", refresh=True)

        ticker = threading.Thread(target=tick, daemon=True)
        bar.set_description_str(what, refresh=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()
            bar.set_description_str("", refresh=False)
            bar.unpause()

    # ------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": json.dumps(self.run_config.to_dict()) if self.run_config else None,
            "recipe": json.dumps(self.describe_recipe()),
            "model": self.model.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "epoch": self.epoch,
            "batch": self.batch,
            "begun": self.begun,
            "perm": self.perm,
            "epoch_loss": self.epoch_loss,
            "assignments": self.assignments,
            "start": self.start_info,
            "rng": rng_state(self.device),
            "extra": self.extra_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        begun, epoch, batch = state["begun"], state["epoch"], state["batch"]
        if not all(isinstance(v, int) and v >= 0 for v in (begun, epoch, batch)):
            raise ValueError(f"a position of epoch {epoch}, batch {batch}, {begun} phases begun")
        if state["optimizer"] is not None:
            self.optimizer = self.make_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.batch, self.begun = epoch, batch, begun
        self.perm = None if state["perm"] is None else state["perm"].to(self.device)
        self.epoch_loss = state["epoch_loss"]
        assignments = state["assignments"]
        self.assignments = None if assignments is None else assignments.to(self.device)
        self.start_info = state["start"]
        set_rng_state(state["rng"], self.device)

    def _checkpoint_due(self) -> bool:
        """Whether ``checkpoint_minutes`` have passed since the last checkpoint (or the run's
        beginning), with a run directory to write it to."""
        minutes = self.config.checkpoint_minutes
        return (
            self.run_dir is not None
            and minutes > 0
            and time.monotonic() - self._saved_at >= 60 * minutes
        )

    def _checkpoint_after_epoch(self) -> bool:
        """Whether the epoch just ended (``epoch`` counts it) gets a checkpoint: the last one,
        every ``checkpoint_every``-th, and one ending ``checkpoint_minutes`` after the last save.
        The rule of the multi-process trainer's rank 0 too."""
        every = self.config.checkpoint_every
        return (
            self.epoch == self.total_epochs
            or bool(every and self.epoch % every == 0)
            or self._checkpoint_due()
        )

    def save(self) -> None:
        self._saved_at = time.monotonic()
        if self.run_dir is not None:
            # Metrics first: killed in between, the metrics are ahead of the checkpoint and
            # resume drops the extra records; the other way round an epoch's record would be lost.
            write_metrics(self.run_dir / METRICS_FILE, self.history)
            save_checkpoint(self.run_dir / CHECKPOINT_FILE, self.state_dict())

    def resume(self, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Continue from the run directory's checkpoint; metrics after it are dropped. Returns
        the checkpoint's ``extra_state``.

        Raises :class:`CheckpointError` when the checkpoint holds no training state or was
        written for another model or recipe.
        """
        path = self.run_dir / CHECKPOINT_FILE
        state = load_checkpoint(path, map_location=self.device)
        if state.get("config"):
            try:
                saved = RunConfig.from_dict(json.loads(state["config"])).model
            except (ValueError, TypeError, AttributeError) as e:  # ConfigError is a ValueError
                raise CheckpointError(f"{path} holds an unreadable configuration ({e})") from None
            changed = [
                f"{k} {v!r} there, {getattr(self.model.config, k)!r} here"
                for k, v in vars(saved).items()
                if getattr(self.model.config, k) != v
            ]
            if changed:
                raise CheckpointError(
                    f"{path} was written for another model ({'; '.join(changed)}); resume with "
                    "the options and data it was trained with, or start a new run"
                )
        if "begun" not in state:
            raise CheckpointError(
                f"{path} holds no training state: it is a model saved by GMVAE.save (or by a "
                "pyro_gmvae before 0.2), which GMVAE.load reads but training cannot continue from"
            )
        self._check_recipe(path, state)
        try:
            self.load_state_dict(state)
        except KeyError as e:
            raise CheckpointError(f"{path} holds no training state ({e} is missing)") from None
        except (RuntimeError, ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(
                f"{path} does not fit this model ({str(e).splitlines()[0]}); resume with the "
                "options and data it was trained with, or start a new run"
            ) from None
        self.history = [r for r in (history or []) if r.get("epoch", math.inf) <= self.epoch]
        return state.get("extra") or {}

    def _check_recipe(self, path: Path, state: dict[str, Any]) -> None:
        """The phases a checkpoint has begun must be those of this recipe, of the same lengths
        (the last begun one may be longer or shorter: ``--epochs`` may change on resume)."""
        try:
            saved = json.loads(state["recipe"])
            # "length": the epochs run on the data (max_steps applied); older checkpoints: epochs
            done = [(p["name"], p.get("length", p["epochs"])) for p in saved][: state["begun"]]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CheckpointError(f"{path} holds no readable recipe") from None
        here = [(p.name, n) for p, n in zip(self.recipe, self.lengths, strict=True)][: len(done)]
        if [n for n, _ in done] != [n for n, _ in here] or done[:-1] != here[:-1]:
            raise CheckpointError(
                f"{path} was trained with the phases {done}, this recipe has {here}; resume "
                "with the recipe it was trained with, or start a new run"
            )

    # ------------------------------------------------------------------------------ loop
    def request_stop(self, signum: int | None = None) -> None:
        """Stop after the current batch, saving a checkpoint (what Ctrl-C, SIGTERM and SIGHUP
        do); a second request while stopping stops at once."""
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        self._stop_signal = signum

    def run(self) -> list[dict[str, Any]]:
        """Run the recipe to its end; returns the per-epoch records.

        A run that starts from the beginning first seeds every generator with ``config.seed``
        (the model's weights are the caller's: build it after ``pyro.set_rng_seed(seed)`` for
        the run ``gmvae train`` makes).

        Raises :class:`TrainingInterrupted` after Ctrl-C, SIGTERM or SIGHUP (having saved a
        checkpoint mid-epoch) and :class:`TrainingDiverged` when the loss stops being finite.
        """
        if (self.epoch, self.batch, self.begun) == (0, 0, 0):
            seed_everything(self.config.seed)
        self._saved_at = time.monotonic()
        in_main = threading.current_thread() is threading.main_thread()
        handled = [signal.SIGINT, signal.SIGTERM] + (
            [signal.SIGHUP] if hasattr(signal, "SIGHUP") else []
        )
        previous = {}
        if in_main:
            for s in handled:
                previous[s] = signal.signal(s, lambda signum, frame: self.request_stop(signum))
        n_batches = self.batches_per_epoch
        self._bar = tqdm(
            total=self.total_epochs * n_batches,
            initial=self.epoch * n_batches + self.batch,
            disable=not self.progress,
            unit="step",
            dynamic_ncols=True,
        )
        try:
            while self.epoch < self.total_epochs:
                record = self._run_epoch()
                self._bar.set_postfix(
                    {"phase": record["phase"]}
                    | {
                        k: f"{v:.4g}"
                        for k, v in record.items()
                        if k in ("loss", "accuracy", "class_accuracy")
                    }
                )
        finally:
            self._bar.close()
            self._bar = None
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.history

    def _begin(self, index: int) -> None:
        """Begin phase ``index`` (and mark the empty phases before it as begun)."""
        phase = self.recipe[index]
        for action in phase.on_begin:
            action(self)
        if phase.new_optimizer or self.optimizer is None:
            self.optimizer = self.make_optimizer()
        self.begun = index + 1

    def _run_epoch(self) -> dict[str, Any]:
        index, _ = self.locate(self.epoch)
        phase = self.recipe[index]
        if self.begun <= index:
            self._begin(index)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.epoch)
        n, bs = len(self.x), self.config.batch_size
        if self.perm is None:
            self.perm = torch.randperm(n, device=self.device)
            self.batch, self.epoch_loss = 0, 0.0
        n_batches = self.batches_per_epoch
        pending: list[torch.Tensor] = []
        start = time.perf_counter()
        self.model.train()
        while self.batch < n_batches:
            idx = self.perm[self.batch * bs : (self.batch + 1) * bs]
            # Outside the try: a DataError (a ValueError) from reading the data is not a NaN.
            batch = self.minibatch(idx)
            try:
                loss = phase.loss(self, batch)
            except ValueError:
                # Pyro refuses distributions with NaN parameters: a step since the last check
                # (deferred on a GPU) made the weights non-finite. Name the batch, not Pyro.
                self._add_losses(pending, phase.name, last=self.batch - 1)
                self._check_weights(self.batch - 1)
                raise
            pending.append(loss.detach() * len(idx))
            if len(pending) >= self.check_every or self.batch == n_batches - 1:
                self._add_losses(pending, phase.name, last=self.batch)
            self.step(loss)
            if self.on_batch is not None:
                self.on_batch(self)
            stopping = self._stop_requested
            saving = stopping or self._checkpoint_due()
            if saving:  # the checkpoint must hold no unchecked step
                self._add_losses(pending, phase.name, last=self.batch)
                self._check_weights(self.batch)
            self.batch += 1
            if self._bar is not None:
                self._bar.update(1)
            if saving and self.batch < n_batches:
                if stopping:
                    self._interrupt()
                self.save()  # mid-epoch: resume continues this epoch's permutation
        self._check_weights(n_batches - 1)  # a finite loss can still end in an inf gradient
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "phase": phase.name,
            "loss": self.epoch_loss / n,
            "seconds": time.perf_counter() - start,
        }
        record |= self.start_record()
        if not isinstance(phase, Pretrain) and self.labelled is not None and self.labelled.any():
            predicted = self.model.predict(self.x)
            record |= clustering_scores(self.labels, predicted)
            if self.known is not None:
                # Clusters are classes: plain accuracy, on the rows with a label training never saw.
                unseen = self.labelled & ~self.known.cpu().numpy()
                if unseen.any():
                    record["class_accuracy"] = class_accuracy(
                        self.labels[unseen], predicted[unseen]
                    )
        self.epoch += 1
        self.perm, self.batch = None, 0
        self.history.append(record)
        if self._checkpoint_after_epoch() or self._stop_requested:
            self.save()
        if self.on_epoch is not None:
            self.on_epoch(record)
        if self._stop_requested and self.epoch < self.total_epochs:
            self._interrupt()
        return record

    def _add_losses(self, pending: list[torch.Tensor], phase: str, last: int) -> None:
        """Check the unchecked losses of batches ``last - len(pending) + 1 .. last`` and add them
        to the epoch's total; ``pending`` is emptied."""
        if not pending:
            return
        values = torch.stack(pending)
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad) > 0:
            i = int(bad[0, 0])
            batch = last - len(pending) + 1 + i
            raise self._diverged(f"the {phase} loss became {float(values[i])}", batch)
        self.epoch_loss += float(values.sum())
        pending.clear()

    def _check_weights(self, batch: int) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise self._diverged("the weights became NaN or infinite", batch)

    def _diverged(self, what: str, batch: int) -> TrainingDiverged:
        """The error for a run that stopped being finite at (0-based) ``batch`` of this epoch."""
        kept = (
            f"the last good checkpoint in {self.run_dir} is kept"
            if self.run_dir is not None and (self.run_dir / CHECKPOINT_FILE).exists()
            else "no checkpoint was written"
        )
        return TrainingDiverged(
            f"{what} at epoch {self.epoch + 1}, batch {batch + 1}; {kept}. Lower --lr, keep "
            "--clip-norm on, or check the data for extreme values"
        )

    def _interrupt(self) -> None:
        self.save()
        at = (
            f"after epoch {self.epoch}"
            if self.batch == 0
            else f"in epoch {self.epoch + 1}, after batch {self.batch}"
        )
        how = f"; resume with --resume (checkpoint in {self.run_dir})" if self.run_dir else ""
        by = self._stop_signal
        name = f" ({signal.Signals(by).name})" if by not in (None, signal.SIGINT) else ""
        raise TrainingInterrupted(f"training interrupted {at}{name}{how}", by)


def fit(
    model: GMVAE,
    x: np.ndarray | torch.Tensor | ScaledRows,
    config: TrainConfig | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Fit ``model`` to ``x`` in memory and return the per-epoch records; a notebook's one-liner.

    ``kwargs`` go to :class:`Trainer` (``recipe``, ``labels``, ``known``, ``elbo``,
    ``progress``, ``on_epoch``...); ``labels=y, known=mask`` trains with the labels of the rows
    ``mask`` marks (semi-supervised: cluster k is class k, ``predict`` returns classes). Training seeds every generator with ``config.seed`` as it begins, as
    ``gmvae train`` does. Ctrl-C stops after the current batch and leaves the model as trained so
    far.
    """
    trainer = Trainer(model, x, config or TrainConfig(), **kwargs)
    try:
        trainer.run()
    except TrainingInterrupted:
        pass
    return trainer.history


__all__ = [
    "STARTS",
    "Anchor",
    "Batch",
    "MixtureStart",
    "Phase",
    "Pretrain",
    "Recipe",
    "SVI",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "TrainingProcessLost",
    "augment_images",
    "default_recipe",
    "epochs_within",
    "fit",
    "resolve_device",
]

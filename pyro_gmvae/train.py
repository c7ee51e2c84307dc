"""Fitting a GMVAE: autoencoder pretraining, a Gaussian mixture fitted to the codes (VaDE), a few
epochs with each example's cluster held at its start, then stochastic variational inference on the
exact ELBO, with y summed out by ``TraceEnum_ELBO``.

The whole loop is :meth:`Trainer.run`; a run directory, if given, receives per-epoch metrics and
checkpoints that let an interrupted run continue on the same trajectory.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.poutine.messenger import Messenger
from sklearn.cluster import SpectralClustering
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture
from torch.nn import functional as F
from tqdm.auto import tqdm

from .config import ConfigError, RunConfig, TrainConfig
from .dataset import check_min_rows
from .errors import DataError
from .metrics import clustering_scores
from .model import GMVAE
from .networks import Encoder
from .runs import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    SCALER_FILE,
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
    write_metrics,
)

_TORCH_VERSION = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])


class TrainingInterrupted(RuntimeError):
    """Training stopped on request (Ctrl-C); the checkpoint, if any, lets it resume exactly."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing after the last good checkpoint was saved."""


def resolve_device(device: str | None) -> torch.device:
    """``device`` as a torch device; ``None`` means CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but no CUDA device is available; use --device cpu"
        )
    return torch.device(device)


def augment_images(
    x: torch.Tensor, image_shape: tuple[int, int], rotation: float, shift: float
) -> torch.Tensor:
    """Random small rotations (up to ``rotation`` degrees) and shifts (up to ``shift`` of the
    width) of flattened images ``x (N, H*W)``; the same shape comes back."""
    n = x.shape[0]
    h, w = image_shape
    angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(rotation)
    offset = (torch.rand(n, 2, device=x.device) * 2 - 1) * (2 * shift)  # grid spans [-1, 1]
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [torch.stack([cos, -sin, offset[:, 0]], -1), torch.stack([sin, cos, offset[:, 1]], -1)], 1
    )
    grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
    out = F.grid_sample(x.view(n, 1, h, w), grid, align_corners=False, padding_mode="zeros")
    return out.view(n, h * w).clamp(0.0, 1.0)


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 (Pyro and sklearn draw from it)
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _mixture_moments(
    codes: np.ndarray, responsibilities: np.ndarray, reg: float = 1e-4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights ``(K,)``, means ``(K, Z)`` and diagonal variances ``(K, Z)`` of the mixture whose
    soft assignments of ``codes (N, Z)`` are ``responsibilities (N, K)``; an empty cluster gets
    the overall mean and variance."""
    counts = responsibilities.sum(0)
    total = counts[:, None]
    means = np.where(
        total > 0, responsibilities.T @ codes / np.maximum(total, 1e-12), codes.mean(0)
    )
    second = responsibilities.T @ codes**2 / np.maximum(total, 1e-12)
    variances = np.where(total > 0, second - means**2, codes.var(0)) + reg
    weights = np.maximum(counts, 1.0) / np.maximum(counts, 1.0).sum()
    return weights, means, np.maximum(variances, reg)


class _UniformMixture(GaussianMixture):
    """A Gaussian mixture whose weights stay ``1/K`` through EM: the family of the GMVAE's prior
    with fixed uniform weights, so that its restarts are compared by the likelihood of that family.

    scikit-learn always learns the weights; this resets them after each of its M-steps (a private
    hook, whose use ``tests/test_train.py`` checks).
    """

    def _m_step(self, *args: Any, **kwargs: Any) -> None:
        super()._m_step(*args, **kwargs)
        self.weights_ = np.full(self.n_components, 1.0 / self.n_components)


def _tsne_map(x: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """A 2-d t-SNE map ``(N, 2)`` of ``x (N, D)``; PCA initialisation, so it depends on ``seed``
    only through ties. The perplexity is capped at a third of the rows, as t-SNE needs."""
    perplexity = min(perplexity, max(1.0, (len(x) - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def _map_clusters(
    embedding: np.ndarray, n_clusters: int, restarts: int, seed: int, uniform: bool
) -> np.ndarray:
    """Cluster of each point of a map ``(N, 2)``: a full-covariance Gaussian mixture, with
    weights held at ``1/K`` when ``uniform`` (as the prior's are by default), ``restarts``
    initialisations, the best by likelihood.

    Free weights let EM settle on one component for two touching classes and two for one long
    class; with uniform weights that costs likelihood, and that start is no longer picked.
    """
    kind = _UniformMixture if uniform else GaussianMixture
    gmm = kind(
        n_clusters, covariance_type="full", n_init=restarts, random_state=seed, reg_covar=1e-4
    )
    return gmm.fit(embedding).predict(embedding)


def _principal_components(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The first ``n`` principal components of ``x (N, D)``, or ``x`` itself when ``D <= n``."""
    return x if x.shape[1] <= n else PCA(n, random_state=seed).fit_transform(x)


def _separation(embedding: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Silhouette of the clusters ``labels (N,)`` on a map ``(N, 2)``, in [-1, 1], higher for
    tighter, better separated clusters; from at most 10,000 points, as it costs O(N^2)."""
    if len(np.unique(labels)) < 2:
        return -1.0
    size = min(len(labels), 10_000)
    return float(silhouette_score(embedding, labels, sample_size=size, random_state=seed))


class _ScaleSite(Messenger):
    """Scale the log-density of one sample site by a constant (a scalar, as enumeration needs)."""

    def __init__(self, name: str, scale: float):
        super().__init__()
        self.name, self.scale = name, scale

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["name"] == self.name:
            msg["scale"] = self.scale * msg["scale"]


class Trainer:
    """Fits ``model`` to ``x``: ``pretrain_epochs`` of autoencoder training, a mixture fitted to the
    codes, ``anchor_epochs`` with each example's cluster held at the mixture's choice, then
    ``epochs`` of SVI on the ELBO.

    Args:
        model: the GMVAE to fit (changed in place).
        x: training data ``(N, D)``, already preprocessed (images in [0, 1]).
        config: the training options.
        labels: ``(N,)`` reference labels, for scoring each epoch only.
        run_dir: where metrics and checkpoints go; ``None`` keeps everything in memory.
        run_config: the run's full configuration, saved inside each checkpoint.
        elbo: the loss; default ``TraceEnum_ELBO(max_plate_nesting=1)``.
        progress: show a tqdm bar.
        on_epoch: called with each epoch's record (e.g. to plot live in a notebook).
    """

    def __init__(
        self,
        model: GMVAE,
        x: np.ndarray | torch.Tensor,
        config: TrainConfig,
        *,
        labels: np.ndarray | None = None,
        run_dir: str | Path | None = None,
        run_config: RunConfig | None = None,
        elbo: pyro.infer.ELBO | None = None,
        progress: bool = True,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ):
        config.validate()
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.x = model.as_tensor(x)
        model.likelihood.check_support(self.x)
        check_min_rows(self.x, model.n_clusters)  # the mixture fit needs a row per cluster
        if labels is not None and len(labels) != len(self.x):
            raise DataError(
                f"{len(labels)} labels for {len(self.x)} rows of data; pass one label per row "
                "(or no labels)"
            )
        self.labels = None if labels is None else np.asarray(labels)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.run_config = run_config
        self.elbo = elbo or TraceEnum_ELBO(max_plate_nesting=1)
        # Bound once: JitTraceEnum_ELBO caches its compiled loss by id(model) and id(guide), and
        # every access to a method makes a new bound-method object.
        self._guide_fn = model.guide
        self._model_fn = (
            model.model if config.beta == 1.0 else _ScaleSite("x", 1.0 / config.beta)(model.model)
        )
        # The anchor epochs hold y at the clusters of the mixture start, which pretraining makes.
        self.anchor_epochs = config.anchor_epochs if config.pretrain_epochs > 0 else 0
        self.assignments: torch.Tensor | None = None  # (N,) cluster of each row at the start
        self.start_source: str | None = None  # the t-SNE map the start came from (init tsne)
        self.start_scores: dict[str, float] = {}  # each map's silhouette
        self._anchor_elbo = TraceEnum_ELBO(max_plate_nesting=1)  # a new model per batch: no JIT
        self._anchor_model = _ScaleSite("x", 1.0 / config.anchor_beta)(model.model)
        self.progress = progress
        self.on_epoch = on_epoch
        self.image_shape = model.config.image_shape
        self.history: list[dict[str, Any]] = []
        # Position in training: completed epochs, and the next batch within the current epoch.
        self.epoch = 0
        self.batch = 0
        self.perm: torch.Tensor | None = None
        self.epoch_loss = 0.0
        self.mixture_ready = config.pretrain_epochs == 0
        self.optimizer, self.scheduler = self._make_optimizer()
        self._stop_requested = False
        # Reading a loss back syncs a GPU with the host: there, check for NaN every 50 batches.
        self.check_every = 1 if self.device.type == "cpu" else 50

    # ------------------------------------------------------------------------------- set-up
    @property
    def total_epochs(self) -> int:
        return self.config.pretrain_epochs + self.anchor_epochs + self.config.epochs

    def _phase(self, epoch: int) -> str:
        if epoch < self.config.pretrain_epochs:
            return "pretrain"
        return "anchor" if epoch < self.config.pretrain_epochs + self.anchor_epochs else "svi"

    def _make_optimizer(self):
        # Fused Adam updates all parameters in one kernel; torch's default loops over them,
        # which cost 7-13 ms a step on the CPU box at the default size (benchmarks/SPEED.md).
        # The CPU kernel arrived in torch 2.4; older versions keep the default.
        fused = self.device.type == "cuda" or _TORCH_VERSION >= (2, 4)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr, fused=fused)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10, gamma=self.config.lr_decay)
        return optimizer, scheduler

    # ------------------------------------------------------------------------------- steps
    def _minibatch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The examples ``idx`` and, for images with augmentation on, a randomly moved view.

        In ``view`` mode the networks see the view and the likelihood scores the original;
        in ``data`` mode the view replaces the original altogether.
        """
        xb = self.x[idx]
        c = self.config
        if self.image_shape is None or (c.augment_rotation == 0 and c.augment_shift == 0):
            return xb, None
        view = augment_images(xb, self.image_shape, c.augment_rotation, c.augment_shift)
        return (xb, view) if c.augment_mode == "view" else (view, None)

    def pretrain_loss(self, xb: torch.Tensor, view: torch.Tensor | None = None) -> torch.Tensor:
        """Autoencoder loss: -log p(x | z = mean of q(z|view)), per example."""
        loc, _ = self.model.encoder(xb if view is None else view)
        return -self.model.likelihood(self.model.decoder(loc)).log_prob(xb).mean()

    def svi_loss(self, xb: torch.Tensor, view: torch.Tensor | None = None) -> torch.Tensor:
        """The negative ELBO per example, y summed out exactly (KL terms weighted by beta)."""
        args = (xb,) if view is None else (xb, view)  # a traced (JIT) loss cannot take None
        return self.elbo.differentiable_loss(self._model_fn, self._guide_fn, *args) / len(xb)

    def anchor_loss(
        self, xb: torch.Tensor, view: torch.Tensor | None, y: torch.Tensor
    ) -> torch.Tensor:
        """The negative ELBO per example given the clusters ``y (N,)``, KL terms weighted by
        ``anchor_beta``: it moves each code towards its own cluster of the mixture start."""
        model = poutine.condition(self._anchor_model, data={"y": y})
        guide = self._guide_fn
        if self.model.cluster_encoder is not None:
            # q(z|x,y) at the given y; hidden, so that q(y|x) adds no term to this loss.
            guide = poutine.block(poutine.condition(guide, data={"y": y}), hide=["y"])
        args = (xb,) if view is None else (xb, view)
        return self._anchor_elbo.differentiable_loss(model, guide, *args) / len(xb)

    def _loss(self, phase: str, idx: torch.Tensor) -> torch.Tensor:
        xb, view = self._minibatch(idx)
        if phase == "pretrain":
            return self.pretrain_loss(xb, view)
        if phase == "anchor":
            if self.assignments is None:
                raise RuntimeError(
                    "the anchor epochs need a mixture start: call init_mixture() or "
                    "start_mixture() before run(), or set anchor_epochs=0"
                )
            return self.anchor_loss(xb, view, self.assignments[idx])
        return self.svi_loss(xb, view)

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        self.optimizer.step()

    @torch.no_grad()
    def init_mixture(self) -> None:
        """Make the prior p(y) p(z|y) a mixture fitted to the codes of the pretrained encoder.

        ``init="tsne"``: a full-covariance Gaussian mixture on a 2-d t-SNE map (of the codes, of
        the data, or of both, keeping the map whose clusters are better separated; see
        :meth:`_tsne_start`), then each cluster's mean and variance in the code space.
        ``init="gmm"`` (VaDE): a diagonal Gaussian mixture fitted to the codes by EM,
        ``restarts`` initialisations, the best by likelihood.
        ``init="spectral"``: spectral clustering of the codes' k-nearest-neighbour graph. t-SNE
        and the graph follow the curved, elongated shapes that classes take in a code space,
        which a mixture on the codes cuts across. None uses labels.

        Each row's most probable cluster is kept in ``assignments`` for the anchor epochs.
        """
        codes_np = self._codes()
        K = self.model.n_clusters
        if self.config.init == "gmm":
            gmm = GaussianMixture(
                K,
                covariance_type="diag",
                n_init=self.config.restarts,
                random_state=self.config.seed,
                reg_covar=1e-4,
            ).fit(codes_np)
            responsibilities = gmm.predict_proba(codes_np)
        elif self.config.init == "tsne":
            responsibilities = np.eye(K)[self._tsne_start(codes_np)]
        else:
            assignments = SpectralClustering(
                K,
                affinity="nearest_neighbors",
                n_neighbors=self.config.init_neighbors,
                assign_labels="cluster_qr",
                random_state=self.config.seed,
            ).fit_predict(codes_np)
            responsibilities = np.eye(K)[assignments]
        self.start_mixture(responsibilities, codes_np)

    def _tsne_start(self, codes: np.ndarray) -> np.ndarray:
        """Cluster ``(N,)`` of each training row from t-SNE maps of ``codes (N, Z)`` and/or of
        the data's first 50 principal components (``tsne_input``): a Gaussian mixture on each
        map (weights held uniform unless the prior learns them, ``restarts`` initialisations,
        best by likelihood), and of two maps the one whose clusters have the higher silhouette.

        Silhouettes compare maps, not likelihoods: two maps are two different data sets. Which
        map wins depends on the data: a network pretrained on a few thousand small images can
        code them worse than their pixels. The choice is kept in ``start_source`` and its
        scores in ``start_scores``.
        """
        c = self.config
        sources = {"codes": codes} if c.tsne_input in ("auto", "codes") else {}
        if c.tsne_input in ("auto", "data"):
            data = self.x.cpu().double().numpy()
            sources["data"] = _principal_components(data, 50, c.seed)
        uniform = not self.model.config.learn_weights
        found = {}
        for name, source in sources.items():
            embedding = _tsne_map(source, c.tsne_perplexity, c.seed)
            labels = _map_clusters(embedding, self.model.n_clusters, c.restarts, c.seed, uniform)
            found[name] = (_separation(embedding, labels, c.seed), labels)
        self.start_source = max(found, key=lambda name: found[name][0])
        self.start_scores = {name: score for name, (score, _) in found.items()}
        return found[self.start_source][1]

    def _codes(self) -> np.ndarray:
        """The means of q(z|x) of the training rows, ``(N, Z)`` float64 on the host."""
        encoder = self.model.encoder
        return self.model._batched(lambda b: encoder(b)[0], self.x).cpu().double().numpy()

    @torch.no_grad()
    def start_mixture(self, responsibilities: np.ndarray, codes: np.ndarray | None = None) -> None:
        """Start the prior from soft or hard cluster assignments ``responsibilities (N, K)`` of
        the training rows: each cluster's weight, mean and variance of the codes (the means of
        q(z|x), ``codes`` if already computed), q(z|x) narrow, and q(y|x) fitted to them for the
        enumerated guide. Each row's most probable cluster is held during the anchor epochs.

        :meth:`init_mixture` calls this with the clusters it finds; call it directly to start
        from clusters of your own (then set ``mixture_ready = True`` before :meth:`run`).
        """
        model = self.model
        responsibilities = np.asarray(responsibilities, dtype=np.float64)
        if responsibilities.shape != (len(self.x), model.n_clusters):
            raise ValueError(
                f"responsibilities have shape {responsibilities.shape}; pass one row of "
                f"{model.n_clusters} cluster probabilities per training row, "
                f"({len(self.x)}, {model.n_clusters})"
            )
        if codes is None:
            codes = self._codes()
        self.assignments = torch.as_tensor(responsibilities.argmax(1), device=self.device)
        weights, means, variances = _mixture_moments(codes, responsibilities)
        as_param = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        model.cluster_means.copy_(as_param(means))
        scales = as_param(np.sqrt(variances)) - 1e-4
        model.cluster_raw_scales.copy_(scales + torch.log(-torch.expm1(-scales)))  # softplus^-1
        if model.config.learn_weights:
            model.cluster_logits.copy_(as_param(np.log(weights)))
        if isinstance(model.encoder, Encoder):
            # The pretrained encoder never trained its scale: start q(z|x) narrow relative to
            # the clusters, or the first ELBO steps see a huge KL and wreck the codes.
            target = 0.1 * float(np.sqrt(variances).min())
            model.encoder.raw_scale.weight.zero_()
            model.encoder.raw_scale.bias.fill_(math.log(math.expm1(target)))
        if model.cluster_encoder is not None:
            with torch.enable_grad():
                self._fit_cluster_encoder(as_param(responsibilities))

    def _fit_cluster_encoder(self, responsibilities: torch.Tensor, epochs: int = 5) -> None:
        """Start q(y|x) from the mixture's responsibilities, so the enumerated guide begins where
        the marginal one would (cross-entropy to soft targets), on what it will see in SVI: the
        moved views when augmentation is on."""
        encoder = self.model.cluster_encoder
        optimizer = torch.optim.Adam(encoder.parameters(), lr=self.config.lr)
        n, bs = len(self.x), self.config.batch_size
        for _ in range(epochs):
            for idx in torch.randperm(n, device=self.device).split(bs):
                xb, view = self._minibatch(idx)
                logits = encoder(xb if view is None else view)
                loss = -(responsibilities[idx] * F.log_softmax(logits, -1)).sum(-1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    # ------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": json.dumps(self.run_config.to_dict()) if self.run_config else None,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "batch": self.batch,
            "perm": self.perm,
            "epoch_loss": self.epoch_loss,
            "mixture_ready": self.mixture_ready,
            "assignments": self.assignments,
            "start": {"source": self.start_source, "scores": self.start_scores},
            "rng": _rng_state(self.device),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.batch = state["epoch"], state["batch"]
        self.perm = None if state["perm"] is None else state["perm"].to(self.device)
        self.epoch_loss = state["epoch_loss"]
        self.mixture_ready = state["mixture_ready"]
        assignments = state["assignments"]
        self.assignments = None if assignments is None else assignments.to(self.device)
        start = state.get("start") or {}  # absent from checkpoints written before it was kept
        self.start_source, self.start_scores = start.get("source"), start.get("scores", {})
        _set_rng_state(state["rng"], self.device)

    def save(self) -> None:
        if self.run_dir is not None:
            # Metrics first: killed in between, the metrics are ahead of the checkpoint and
            # resume drops the extra records; the other way round an epoch's record would be lost.
            write_metrics(self.run_dir / METRICS_FILE, self.history)
            save_checkpoint(self.run_dir / CHECKPOINT_FILE, self.state_dict())

    def resume(self, history: list[dict[str, Any]] | None = None) -> None:
        """Continue from the run directory's checkpoint; metrics after it are dropped.

        Raises :class:`CheckpointError` when the checkpoint holds no training state or was
        written for a model of another configuration.
        """
        path = self.run_dir / CHECKPOINT_FILE
        state = load_checkpoint(path, map_location=self.device)
        if state.get("config"):
            try:
                saved = RunConfig.from_dict(json.loads(state["config"])).model
            except (ValueError, TypeError) as e:  # ConfigError is a ValueError
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
        try:
            self.load_state_dict(state)
        except KeyError as e:
            raise CheckpointError(
                f"{path} holds no training state ({e} is missing): it is a model saved by "
                "GMVAE.save, which GMVAE.load reads but training cannot continue from"
            ) from None
        except (RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(
                f"{path} does not fit this model ({str(e).splitlines()[0]}); resume with the "
                "options and data it was trained with, or start a new run"
            ) from None
        self.history = [r for r in (history or []) if r["epoch"] <= self.epoch]

    # ------------------------------------------------------------------------------- loop
    def _request_stop(self, signum, frame) -> None:
        if self._stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self._stop_requested = True

    def run(self) -> list[dict[str, Any]]:
        """Train until ``pretrain_epochs + epochs`` epochs are done; returns the per-epoch records.

        Raises :class:`TrainingInterrupted` after Ctrl-C (having saved a checkpoint mid-epoch) and
        :class:`TrainingDiverged` when the loss stops being finite.
        """
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._request_stop) if in_main else None
        bar = tqdm(
            total=self.total_epochs, initial=self.epoch, disable=not self.progress, unit="epoch"
        )
        try:
            while self.epoch < self.total_epochs:
                record = self._run_epoch()
                bar.update(1)
                bar.set_postfix(
                    {k: f"{v:.4g}" for k, v in record.items() if k in ("loss", "accuracy")}
                    | {"phase": record["phase"]}
                )
        finally:
            bar.close()
            if in_main:
                signal.signal(signal.SIGINT, previous)
        return self.history

    def _run_epoch(self) -> dict[str, Any]:
        phase = self._phase(self.epoch)
        if phase != "pretrain" and not self.mixture_ready:
            self.init_mixture()
            self.mixture_ready = True
            self.optimizer, self.scheduler = self._make_optimizer()
        n, bs = len(self.x), self.config.batch_size
        if self.perm is None:
            self.perm = torch.randperm(n, device=self.device)
            self.batch, self.epoch_loss = 0, 0.0
        n_batches = math.ceil(n / bs)
        pending: list[torch.Tensor] = []
        start = time.perf_counter()
        self.model.train()
        while self.batch < n_batches:
            idx = self.perm[self.batch * bs : (self.batch + 1) * bs]
            try:
                loss = self._loss(phase, idx)
            except ValueError:
                # Pyro refuses distributions with NaN parameters: a step since the last check
                # (deferred on a GPU) made the weights non-finite. Name the batch, not Pyro.
                self._add_losses(pending, phase, last=self.batch - 1)
                self._check_weights(self.batch - 1)
                raise
            pending.append(loss.detach() * len(idx))
            if len(pending) >= self.check_every or self.batch == n_batches - 1:
                self._add_losses(pending, phase, last=self.batch)
            self._step(loss)
            if self._stop_requested:  # the checkpoint must hold no unchecked step
                self._add_losses(pending, phase, last=self.batch)
                self._check_weights(self.batch)
            self.batch += 1
            if self._stop_requested and self.batch < n_batches:
                self._interrupt()
        self._check_weights(n_batches - 1)  # a finite loss can still end in an inf gradient
        if phase == "svi":
            self.scheduler.step()
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "phase": phase,
            "loss": self.epoch_loss / n,
            "seconds": time.perf_counter() - start,
        }
        first_after_pretraining = self.epoch == self.config.pretrain_epochs > 0
        if first_after_pretraining and self.start_source is not None:
            record |= {"start": self.start_source, "start_silhouette": self.start_scores}
        if phase != "pretrain" and self.labels is not None:
            record |= clustering_scores(self.labels, self.model.predict(self.x))
        self.epoch += 1
        self.perm, self.batch = None, 0
        self.history.append(record)
        last = self.epoch == self.total_epochs
        every = self.config.checkpoint_every
        if last or (every and self.epoch % every == 0) or self._stop_requested:
            self.save()
        if self.on_epoch is not None:
            self.on_epoch(record)
        if self._stop_requested and not last:
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
        raise TrainingInterrupted(f"training interrupted {at}{how}")


def fit(
    model: GMVAE,
    x: np.ndarray | torch.Tensor,
    config: TrainConfig | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Fit ``model`` to ``x`` in memory and return the per-epoch records; a notebook's one-liner.

    ``kwargs`` go to :class:`Trainer` (``labels``, ``elbo``, ``progress``, ``on_epoch``...). Ctrl-C
    stops after the current batch and leaves the model as trained so far.
    """
    config = config or TrainConfig()
    pyro.set_rng_seed(config.seed)
    trainer = Trainer(model, x, config, **kwargs)
    try:
        trainer.run()
    except TrainingInterrupted:
        pass
    return trainer.history


def train_run(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """``gmvae train``: load the data, fit a model into run directory ``out``, score it.

    A new run saves ``config.json`` before training; ``resume`` continues from ``checkpoint.pt``.
    Returns the final scores (clustering metrics when the data has labels).
    """
    from .data import load_data
    from .runs import CONFIG_FILE, prepare_run_directory, read_metrics

    config.validate()
    out = Path(out)
    dataset = load_data(
        config.data.data, label_column=config.data.label_column, kind=config.data.kind
    )
    train_data, heldout = (
        dataset.split(config.data.heldout_fraction, seed=config.train.seed)
        if config.data.heldout_fraction > 0
        else (dataset, None)
    )
    check_min_rows(train_data, config.model.clusters)
    if config.model.n_features and config.model.n_features != dataset.n_features:
        raise CheckpointError(
            f"{out} was trained on data with {config.model.n_features} features, "
            f"{config.data.data} has {dataset.n_features}; resume with the same data"
        )
    config.model.n_features = dataset.n_features
    config.model.image_shape = dataset.image_shape
    if dataset.kind == "table" and config.model.likelihood != "gaussian":
        raise DataError(
            f"{config.data.data} is a standardized table; the {config.model.likelihood} likelihood "
            "needs values in [0, 1]: pass --likelihood gaussian (or --kind image for images)"
        )
    # Only now, with the data and options known good, is anything on disk created or replaced.
    out = prepare_run_directory(out, resume=resume, force=force)
    config.save(out / CONFIG_FILE)  # on resume: records a changed --epochs or --device
    if not resume:
        if dataset.scaler is not None:
            atomic_write_text(out / SCALER_FILE, json.dumps(dataset.scaler.to_dict()))

    pyro.set_rng_seed(config.train.seed)
    model = GMVAE(config.model)
    trainer = Trainer(
        model,
        train_data.x,
        config.train,
        labels=train_data.labels,
        run_dir=out,
        run_config=config,
        progress=progress,
    )
    if resume:
        trainer.resume(read_metrics(out))
    trainer.run()

    result: dict[str, Any] = {"run_dir": str(out), "epochs": trainer.epoch}
    if trainer.history:
        result["loss"] = trainer.history[-1]["loss"]
    for part, data in (("train", train_data), ("heldout", heldout)):
        if data is not None and data.labels is not None:
            result[part] = clustering_scores(data.labels, model.predict(data.x))
    if plots:
        from .plots import training_figures

        result["figures"] = [
            str(p) for p in training_figures(model, train_data, trainer.history, out)
        ]
    return result

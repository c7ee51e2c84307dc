"""Configuration: one dataclass per concern, saved as JSON beside every run, one CLI flag per field.

A field's ``metadata["help"]`` is its command-line help; :func:`add_arguments` turns a dataclass into
argparse flags (``latent_dim`` -> ``--latent-dim``) and :func:`from_arguments` reads them back, so the
flags and the saved ``config.json`` can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError
from .files import atomic_write_text

GUIDES = ("enumerated", "marginal")
#: ``ModelConfig.guide`` when the guide follows whether labels are known (:func:`guide_for`).
AUTO_GUIDE = "auto"
#: The gradient steps of a t-SNE map with early exaggeration (scikit-learn's), the fewest it takes.
TSNE_EXAGGERATION_STEPS = 250

#: Features from which data get the image-sized network of DEC and VaDE (d-500-500-2000-10).
WIDE_DATA = 64
#: The hidden layers and latent size a model gets when none are given, for data of this many features.
IMAGE_NETWORK = ((500, 500, 2000), 10)
#: The fully connected layers after the convolutions of ``--network conv`` when none are given.
CONV_HIDDEN = (256,)
#: ``--network``: chosen from the data (:func:`network_for`), fully connected layers for any
#: data, or convolutions for images.
NETWORKS = ("auto", "mlp", "conv")
#: ``--precision``: what the convolutional networks compute in (networks.PRECISIONS).
PRECISIONS = ("float32", "bfloat16")
#: ``--init auto``: the start is chosen from the data's width by :func:`start_for`.
AUTO_START = "auto"


def sized_network(n_features: int, network: str = "mlp") -> tuple[tuple[int, ...], int]:
    """``(hidden, latent_dim)`` for data of ``n_features`` features when the user sets neither.

    64 features or more (images, wide tables): DEC's and VaDE's d-500-500-2000-10, the network
    the image benchmarks use. Fewer: two hidden layers of 8 units per feature (32 to 256), and a
    latent of half the features (2 to 10): a code as wide as the data compresses nothing, and
    4 features do not need a million weights (iris with the image network: 0.81-0.83 accuracy
    where a Gaussian mixture gets 0.97). ``network="conv"``: one layer of 256 units after the
    convolutions (:data:`CONV_HIDDEN`), the latent as for ``mlp``.
    """
    if network == "conv":
        return CONV_HIDDEN, sized_network(n_features)[1]
    if n_features >= WIDE_DATA:
        return IMAGE_NETWORK
    width = min(256, max(32, 8 * n_features))
    return (width, width), max(2, min(10, n_features // 2))


def network_for(image_shape: tuple[int, int] | None) -> str:
    """The network ``--network auto`` gives data whose rows are ``image_shape`` images (None: a
    table): ``conv`` for images with a side of more than 4 pixels (room for one convolution of
    stride 2), ``mlp`` for tables and smaller images.

    A convolution applies the same small filters at every place of an image, so a stroke a pixel
    to the right gives the same features a pixel to the right, where a fully connected layer
    learns each position apart; the codes of images then keep their classes apart better. On
    mnist8k (benchmarks/RESULTS.md) the conv codes' t-SNE map clusters at 0.925-0.940 where the
    MLP's scored 0.897-0.925, and it out-separated the data's own map by 0.02-0.06 of
    silhouette wherever recorded, where the MLP's was within 0.02 of it and lost to it on four
    seeds of five.
    """
    if image_shape is not None and max(image_shape) > 4:
        return "conv"
    return "mlp"


def start_for(n_features: int) -> str:
    """The start ``--init auto`` takes for data of ``n_features`` features: ``data-gmm`` (a
    Gaussian mixture on the columns) below :data:`WIDE_DATA` features, ``umap``
    from there on, the same width at which :func:`sized_network` gives the image network.

    A narrow table's columns are measured quantities whose classes a Gaussian mixture models
    directly, as model-based clustering of tables has done for decades; a map of a few hundred
    such rows (a 2-d t-SNE map at perplexity 50 sees a third of the data as each point's
    neighbours) distorts the densities the mixture then cuts. Pixels are another matter: a class
    of images lies on a curved piece of pixel space that a mixture cuts across (mnist8k: 0.63 for
    a full mixture on 50 principal components), whose neighbourhoods a UMAP map keeps, in ten
    dimensions, at several scales, the most even clusters kept (see
    :func:`~pyro_gmvae.start.umap_start`); its cost grows as about N log N, where the exact
    t-SNE's made 60,000 rows impractical. Measured (benchmarks/RESULTS.md): iris 0.827 with the
    t-SNE start, 0.967 with ``data-gmm``; mnist8k 0.961 and `digits` 0.944 from the ``umap``
    start with the enumerated guide, where the ``tsne`` start with the marginal guide (the
    defaults before) gave 0.939 and 0.938.
    """
    return "data-gmm" if n_features < WIDE_DATA else "umap"


def guide_for(semi_supervised: bool) -> str:
    """The guide ``--guide auto`` takes: ``enumerated`` (q(y|x) q(z|x,y)) when no labels are
    known, ``marginal`` (q(z|x), y summed out in the model) when some are.

    Without labels, q(y|x) is a classifier of the image that the anchor trains on the start's
    clusters, and it can overrule a row the start got wrong, where p(y|z) at the row's code can
    only draw the partition a Gaussian mixture of the codes can: from the same `umap` starts the
    enumerated guide ended 0.7-1.4 points above the marginal one on every mnist8k seed. With
    labels, their classification term acts, with the marginal guide, on p(y|z) at the code, so
    it shapes the codes and the mixture themselves; with the enumerated guide it trains the
    separate classifier and reaches the codes only through the ELBO. Measured on `digits` with
    50 labels (benchmarks/RESULTS.md), held-out: the `umap` start with the marginal guide 0.964,
    0.964, 0.969 on seeds 0-2, with the enumerated one 0.961, 0.955, 0.950 (0.943 ± 0.017 over
    ten seeds, worst 0.903).
    """
    return "marginal" if semi_supervised else "enumerated"


TSNE_INPUTS = ("auto", "codes", "data", "joint")
UMAP_INPUTS = ("codes", "data", "joint")
#: What a map of each input shows, as the records and figures name it (t-SNE's and UMAP's alike).
MAP_VIEWS = {"codes": "the codes", "data": "the data", "joint": "codes and data"}

#: TrainConfig fields that mean something only when some labels are known: the estimator, which
#: never has labels, refuses them, and ``gmvae select``, which clusters without, has no flags.
SUPERVISED_OPTIONS = frozenset(
    {"labels_known", "aux_weight", "consistency_weight", "consistency_pretrain_factor"}
)


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class DataConfig:
    """Where the data come from and how much of it is held out."""

    data: str = _help(
        "digits (scikit-learn's 8x8 digits), a directory of MNIST IDX files, or a .npz/.npy/.csv file",
        default="digits",
    )
    label_column: str | None = _help(
        "CSV column holding labels (used for evaluation, and for training with --labels-known)",
        default=None,
    )
    kind: str | None = _help("force 'image' or 'table' instead of guessing", default=None)
    heldout_fraction: float = _help(
        "fraction of rows kept out of training to measure generalisation", default=0.0
    )

    def validate(self) -> None:
        _check_finite(self)
        if self.kind not in (None, "image", "table"):
            raise ConfigError(f"--kind must be 'image' or 'table', not {self.kind!r}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ConfigError(f"--heldout-fraction must be in [0, 1), not {self.heldout_fraction}")


@dataclass
class ModelConfig:
    """The generative model p(y) p(z|y) p(x|z) and its guide."""

    clusters: int = _help("number of mixture components K", default=10)
    latent_dim: int = _help(
        "size of the latent z (0: from the data: 10 for 64 features or more, else half the "
        "features, 2 to 10)",
        default=0,
    )
    hidden: tuple[int, ...] = _help(
        "hidden layer sizes of the encoder, the decoder mirrors them (none given: from the "
        "data: 500 500 2000 for 64 features or more, else two layers of 8 units per feature, "
        "32 to 256)",
        default=(),
    )
    network: str = _help(
        "auto (conv for images, mlp for tables), mlp (fully connected layers --hidden) or conv "
        "(images only: 3x3 convolutions of stride 2 with 16, 32, 64 channels, then the fully "
        "connected layers --hidden, 256 when not given)",
        default="auto",
    )
    likelihood: str = _help(
        "p(x|z): bernoulli (images in [0,1]), continuous_bernoulli (grey levels), "
        "gaussian (real-valued tables)",
        default="bernoulli",
    )
    guide: str = _help(
        "auto (enumerated without labels, marginal with --labels-known), enumerated: "
        "q(y|x) q(z|x,y) with y summed out in the guide, or marginal: q(z|x) with y summed out "
        "in the model",
        default=AUTO_GUIDE,
    )
    precision: str = _help(
        "float32, or bfloat16: the convolutional networks (--network conv) multiply in bfloat16 "
        "(torch.autocast) and return float32; faster on CPUs with bfloat16 instructions "
        "(AVX-512 BF16, AMX) and on GPUs that have them; it may be slower on CPUs without",
        default="float32",
    )
    learn_weights: bool = _help(
        "learn the mixture weights pi (default: fixed uniform, which keeps clusters from "
        "starving early in training; learn them when clusters differ much in size)",
        default=False,
    )
    n_features: int = _help("size of one observation (set from the data)", default=0)
    image_shape: tuple[int, int] | None = _help(
        "(height, width) of image data (set from the data)", default=None
    )

    def validate(self) -> None:
        if self.clusters < 1:
            raise ConfigError(f"--clusters must be at least 1, not {self.clusters}")
        if self.latent_dim < 0:
            raise ConfigError(
                f"--latent-dim must be at least 1 (0: from the data), not {self.latent_dim}"
            )
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"--hidden sizes must be positive, not {list(self.hidden)}")
        # --likelihood names one of likelihoods.LIKELIHOODS, checked where the model is built
        # (before anything is written): the registry imports torch, which --help need not wait for.
        if self.guide not in (AUTO_GUIDE, *GUIDES):
            choices = ", ".join((AUTO_GUIDE, *GUIDES))
            raise ConfigError(f"--guide must be one of {choices}, not {self.guide!r}")
        if self.network not in NETWORKS:
            raise ConfigError(
                f"--network must be one of {', '.join(NETWORKS)}, not {self.network!r}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"
            )
        if self.n_features < 0:
            raise ConfigError(f"n_features must be positive, not {self.n_features}")

    def size_from_data(self) -> dict[str, Any]:
        """Fill ``network`` when ``auto`` (by :func:`network_for` of ``image_shape``), then
        ``hidden`` and ``latent_dim`` when not set (``()`` and 0) by :func:`sized_network` of
        ``n_features`` and ``network``; returns what was filled (empty when nothing)."""
        if self.n_features < 1:
            raise ValueError("n_features must be set from the data before the network is sized")
        chosen: dict[str, Any] = {}
        if self.network == "auto":
            self.network = chosen["network"] = network_for(self.image_shape)
        hidden, latent_dim = sized_network(self.n_features, self.network)
        if not self.hidden:
            self.hidden = chosen["hidden"] = hidden
        if self.latent_dim == 0:
            self.latent_dim = chosen["latent_dim"] = latent_dim
        return chosen

    def guide_from_labels(self, semi_supervised: bool) -> dict[str, Any]:
        """Replace ``guide`` ``auto`` by :func:`guide_for` of ``semi_supervised``; returns what
        was chosen (empty when ``guide`` names one)."""
        if self.guide != AUTO_GUIDE:
            return {}
        self.guide = guide_for(semi_supervised)
        return {"guide": self.guide}


@dataclass
class TrainConfig:
    """How the model is fitted: VaDE-style pretraining, then SVI with TraceEnum_ELBO."""

    epochs: int = _help("epochs of SVI on the ELBO", default=20)
    steps: int = _help(
        "at most this many optimizer steps of SVI, rounded to whole epochs (at least one): "
        "a larger data set gets fewer epochs, not more steps (0: no limit, --epochs alone)",
        default=640,
    )
    batch_size: int = _help("minibatch size", default=256)
    lr: float = _help("Adam learning rate", default=1e-3)
    lr_decay: float = _help("multiply the learning rate by this every 10 epochs", default=0.9)
    svi_lr: float = _help(
        "Adam learning rate of the SVI epochs after the mixture start (0: --lr): they fine-tune "
        "what the start and the anchor epochs reached, at a tenth of --lr by default",
        default=1e-4,
    )
    pretrain_epochs: int = _help(
        "epochs of autoencoder pretraining before the mixture is fitted to the codes (0: none)",
        default=300,
    )
    pretrain_steps: int = _help(
        "at most this many optimizer steps of pretraining, rounded to whole epochs (at least "
        "one; 0: no limit, --pretrain-epochs alone)",
        default=9600,
    )
    init: str = _help(
        "how the mixture prior starts from the pretrained codes: auto (data-gmm for data of "
        "fewer than 64 features, tables; umap otherwise), umap (a Gaussian mixture on a 10-d "
        "UMAP embedding of the codes and the data side by side, at each of --umap-neighbors; of "
        "the codes alone, as N2D, with --umap-input codes), tsne (a Gaussian mixture on 2-d "
        "t-SNE maps of the codes and of the data), data-gmm (a Gaussian mixture on the data's "
        "columns, or their first 50 principal components, with full or diagonal covariances by "
        "BIC), spectral "
        "(clusters of the codes' nearest-neighbour graph) or gmm (a Gaussian mixture on the "
        "codes themselves, as in VaDE)",
        default=AUTO_START,
    )
    start_rows: int = _help(
        "the start clusters at most this many training rows, drawn at random with --seed, and "
        "gives each other row the clusters of its 15 nearest codes among them (0: all rows)",
        default=10_000,
    )
    init_neighbors: int = _help("neighbours per code in the graph of --init spectral", default=10)
    tsne_perplexity: float = _help(
        "perplexity of the t-SNE map of --init tsne (capped at a third of the rows)", default=50.0
    )
    tsne_iterations: int = _help(
        "gradient steps of each t-SNE map of --init tsne, the first 250 with early exaggeration "
        "(at least 250): 500 halve the start's time, but they changed which map the start "
        "kept on one mnist8k seed of three (by silhouette, the rule of that time)",
        default=1000,
    )
    tsne_input: str = _help(
        "what the t-SNE map of --init tsne is made of: codes (of the pretrained encoder), data "
        "(its first 50 principal components), auto (a map of each, keeping the one whose "
        "clusters are the more stable between random halves of the map) or joint (one map of both side by "
        "side, each scaled to unit total variance: no choice to get wrong, one map's cost)",
        default="auto",
    )
    umap_input: str = _help(
        "what the UMAP embedding of --init umap is made of: codes (of the pretrained encoder, as "
        "N2D), data (its first 50 principal components) or joint (both side by side, each "
        "scaled to unit total variance: neighbours near in the codes and in the pixels)",
        default="joint",
    )
    umap_components: int = _help(
        "dimensions of the UMAP embedding that --init umap clusters", default=10
    )
    umap_neighbors: tuple[int, ...] = _help(
        "neighbours per point in the UMAP graph of --init umap (more: a more global map), one "
        "map per value; of several, the start keeps the clusters whose sizes are the most even, "
        "as the prior's equal weights expect (with --learn-weights, the middle value's map alone)",
        default=(10, 20, 30, 50, 100),
    )
    cluster_encoder_epochs: int = _help(
        "epochs in which q(y|x) is fitted to the mixture start's clusters when it is made "
        "(enumerated guide only)",
        default=5,
    )
    cluster_encoder_steps: int = _help(
        "at most this many optimizer steps of that fit, rounded to whole epochs (at least one; "
        "0: no limit, --cluster-encoder-epochs alone): the anchor epochs go on teaching q(y|x) "
        "the start's clusters, so a larger data set needs no more steps here",
        default=160,
    )
    restarts: int = _help(
        "mixture initialisations tried on the pretrained codes (or their UMAP or t-SNE map), "
        "best by likelihood",
        default=10,
    )
    anchor_epochs: int = _help(
        "epochs after the mixture start in which each example's cluster is held at its start "
        "value (the ELBO given y), so the codes gather around their cluster before SVI sums "
        "over y (0: none; needs pretraining)",
        default=60,
    )
    anchor_steps: int = _help(
        "at most this many optimizer steps of anchor epochs, rounded to whole epochs (at least "
        "one; 0: no limit, --anchor-epochs alone)",
        default=1920,
    )
    anchor_min_steps: int = _help(
        "at least this many optimizer steps of anchor epochs, rounded up to whole epochs (0: "
        "--anchor-epochs alone): a small data set gets more passes, as its codes and q(y|x) "
        "need as many steps as a large one's to learn their start clusters",
        default=1920,
    )
    anchor_beta: float = _help(
        "weight of the KL terms against the likelihood during the anchor epochs", default=3.0
    )
    anchor_classify: float = _help(
        "weight alpha of a classification term alpha * log q(y|x) at each row's start cluster "
        "during the anchor epochs, which brings the model's clusters to the start's faster than "
        "the ELBO given y alone (0: none)",
        default=10.0,
    )
    clip_norm: float = _help("clip gradients to this norm (0: no clipping)", default=10.0)
    beta: float = _help(
        "weight of the KL terms against the likelihood during SVI, as in a beta-VAE "
        "(1: the exact ELBO; > 1 favours well-separated clusters)",
        default=1.0,
    )
    augment_mode: str = _help(
        "view: the encoders see a randomly moved copy and the model scores the original "
        "(a valid ELBO); data: the moved copies are treated as the data",
        default="view",
    )
    augment_rotation: float = _help(
        "images only: rotate training minibatches at random by up to this many degrees (0: off)",
        default=10.0,
    )
    augment_shift: float = _help(
        "images only: shift training minibatches at random by up to this fraction of the width",
        default=0.1,
    )
    labels_known: int | str = _help(
        "train with this many rows' labels known (drawn at random with --seed, balanced per "
        "class, among the rows that have a label), or all: every training row that has one (a "
        "label may then be missing on some rows): y is observed on them and summed out on the "
        "others, cluster k is class k, and accuracy is plain, with no matching (0: clustering, "
        "labels only score)",
        default=0,
    )
    aux_weight: float = _help(
        "with --labels-known: weight alpha of the classification term alpha * log q(y|x) on the "
        "labelled rows, in pretraining and SVI (Kingma et al. 2014, who use 0.1 N; 0: none)",
        default=100.0,
    )
    consistency_weight: float = _help(
        "with --labels-known, images only: weight of a consistency term in pretraining "
        "(FixMatch, Sohn et al. 2020): each unlabelled row whose q(y|x) on its moved copy "
        "exceeds 0.95 is classified at that class from a strongly moved copy (0: none)",
        default=30.0,
    )
    consistency_pretrain_factor: float = _help(
        "with --labels-known and the consistency term (images, --consistency-weight above 0): "
        "pretraining runs this many times --pretrain-epochs and --pretrain-steps, since the "
        "term keeps learning from the rows it grows confident on (1: as long as without labels)",
        default=1.0,
    )
    seed: int = _help("random seed", default=0)
    device: str | None = _help("cpu or cuda (default: cuda when available)", default=None)
    checkpoint_every: int = _help("save a checkpoint every this many epochs", default=5)
    checkpoint_minutes: float = _help(
        "also save one when this many minutes of training have passed since the last, in the "
        "middle of an epoch if need be, so that a crash on a large data set (an epoch of a "
        "million rows takes minutes) loses at most this much (0: only --checkpoint-every)",
        default=10.0,
    )

    def validate(self) -> None:
        _check_finite(self)
        for name in (
            "epochs",
            "steps",
            "pretrain_epochs",
            "pretrain_steps",
            "anchor_epochs",
            "anchor_steps",
            "anchor_min_steps",
            "checkpoint_every",
            "checkpoint_minutes",
            "cluster_encoder_epochs",
            "cluster_encoder_steps",
            "start_rows",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
        if self.anchor_steps and self.anchor_min_steps > self.anchor_steps:
            raise ConfigError(
                f"--anchor-min-steps {self.anchor_min_steps} is more than --anchor-steps "
                f"{self.anchor_steps}; pass at most {self.anchor_steps} (or --anchor-steps 0)"
            )
        known = self.labels_known
        if isinstance(known, bool) or not (
            known == "all" or (isinstance(known, int) and known >= 0)
        ):
            raise ConfigError(
                f"--labels-known must be a number of rows (0: none) or all, not {known!r}"
            )
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed must be in 0..{2**32 - 1}, not {self.seed}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, not {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, not {self.lr}")
        if self.svi_lr < 0:
            raise ConfigError(f"--svi-lr must be >= 0 (0: --lr), not {self.svi_lr}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"--lr-decay must be in (0, 1], not {self.lr_decay}")
        # --init names a start of start.STARTS, checked by the trainer (start.check_start)
        # before any training: the registry imports scikit-learn, which --help need not wait for.
        if not self.tsne_perplexity > 0:
            raise ConfigError(f"--tsne-perplexity must be positive, not {self.tsne_perplexity}")
        if self.tsne_iterations < TSNE_EXAGGERATION_STEPS:
            raise ConfigError(
                f"--tsne-iterations must be at least {TSNE_EXAGGERATION_STEPS} (t-SNE's early "
                f"exaggeration), not {self.tsne_iterations}"
            )
        if self.tsne_input not in TSNE_INPUTS:
            raise ConfigError(
                f"--tsne-input must be one of {', '.join(TSNE_INPUTS)}, not {self.tsne_input!r}"
            )
        if self.umap_input not in UMAP_INPUTS:
            raise ConfigError(
                f"--umap-input must be one of {', '.join(UMAP_INPUTS)}, not {self.umap_input!r}"
            )
        if self.umap_components < 1:
            raise ConfigError(f"--umap-components must be at least 1, not {self.umap_components}")
        if not self.umap_neighbors or min(self.umap_neighbors) < 2:
            shown = " ".join(map(str, self.umap_neighbors)) or "nothing"
            raise ConfigError(
                f"--umap-neighbors must be one or more values of at least 2, not {shown}"
            )
        if self.init_neighbors < 1:
            raise ConfigError(f"--init-neighbors must be at least 1, not {self.init_neighbors}")
        if self.restarts < 1:
            raise ConfigError(f"--restarts must be at least 1, not {self.restarts}")
        if not 0 <= self.augment_rotation <= 180:
            raise ConfigError(
                f"--augment-rotation must be in [0, 180], not {self.augment_rotation}"
            )
        if not 0 <= self.augment_shift < 0.5:
            raise ConfigError(f"--augment-shift must be in [0, 0.5), not {self.augment_shift}")
        if not self.beta > 0:
            raise ConfigError(f"--beta must be positive, not {self.beta}")
        if not self.anchor_beta > 0:
            raise ConfigError(f"--anchor-beta must be positive, not {self.anchor_beta}")
        if self.augment_mode not in ("view", "data"):
            raise ConfigError(f"--augment-mode must be view or data, not {self.augment_mode!r}")
        if self.aux_weight < 0:
            raise ConfigError(f"--aux-weight must be >= 0, not {self.aux_weight}")
        if self.consistency_weight < 0:
            raise ConfigError(f"--consistency-weight must be >= 0, not {self.consistency_weight}")
        if not self.consistency_pretrain_factor > 0:
            raise ConfigError(
                "--consistency-pretrain-factor must be positive (1: no longer), not "
                f"{self.consistency_pretrain_factor}"
            )
        if self.anchor_classify < 0:
            raise ConfigError(f"--anchor-classify must be >= 0, not {self.anchor_classify}")
        if self.clip_norm < 0:
            raise ConfigError(f"--clip-norm must be >= 0, not {self.clip_norm}")
        if self.device is not None and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ConfigError(f"--device must be cpu or cuda, not {self.device!r}")

    @property
    def semi_supervised(self) -> bool:
        """Whether training sees labels: ``labels_known`` is all or a number above 0."""
        return self.labels_known != 0

    def start_from_data(self, n_features: int) -> dict[str, Any]:
        """Replace ``init`` ``auto`` by :func:`start_for` of ``n_features``; returns what was
        chosen (empty when ``init`` names a start)."""
        if self.init != AUTO_START:
            return {}
        self.init = start_for(n_features)
        return {"init": self.init}


@dataclass
class DistributedConfig:
    """How many processes train, and where (PyTorch Lightning's own flags and meanings). Not
    part of a run's ``config.json``: a run may be resumed on more or fewer processes."""

    devices: int = _help(
        "processes per node, one per device (GPU or, with --accelerator cpu, a CPU process); "
        "more than 1 trains data-parallel on PyTorch Lightning (pip install "
        "'pyro_gmvae[distributed]'); 1, with the other three at their defaults, keeps the "
        "single-process trainer",
        default=1,
    )
    accelerator: str = _help("Lightning's accelerator: cpu, gpu or auto", default="auto")
    strategy: str = _help(
        "Lightning's strategy: auto (ddp when there is more than one process), ddp, "
        "ddp_spawn, ddp_notebook... (DDP always with find_unused_parameters, since a phase "
        "leaves parameters unused)",
        default="auto",
    )
    num_nodes: int = _help("machines taking part, each running --devices processes", default=1)

    def validate(self) -> None:
        if self.devices < 1:
            raise ConfigError(f"--devices must be at least 1, not {self.devices}")
        if self.num_nodes < 1:
            raise ConfigError(f"--num-nodes must be at least 1, not {self.num_nodes}")
        if self.accelerator not in ("cpu", "gpu", "cuda", "auto"):
            raise ConfigError(f"--accelerator must be cpu, gpu or auto, not {self.accelerator!r}")

    @property
    def uses_lightning(self) -> bool:
        """Whether these options ask for anything the single-process trainer does not do."""
        return self != DistributedConfig()

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


def _check_finite(config: Any) -> None:
    """Refuse NaN and infinite values of a config's float options (``--beta inf``)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, not {value}")


@dataclass
class RunConfig:
    """Everything that defines a run; saved as ``config.json`` in its directory."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.data.validate()
        self.model.validate()
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; every value's type is checked against its field's.

        Raises:
            ConfigError: not an object of the three sections, an unknown option, or a value of
                the wrong type.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"a run config is a JSON object, not {type(d).__name__}")
        unknown = set(d) - {"data", "model", "train"}
        if unknown:
            raise ConfigError(f"unknown run config sections: {sorted(unknown)}")
        model = d.get("model", {})
        if isinstance(model, dict) and "hidden" in model and "network" not in model:
            # Saved (every field written) before --network existed, when every model was fully
            # connected: its weights are an MLP's, where auto would now build conv for images.
            model = {**model, "network": "mlp"}
        train = d.get("train", {})
        if isinstance(train, dict) and "aux_weight" in train:
            # Saved since labels were supported: a field it lacks came later (the consistency
            # term, then longer pretraining with it), so resumed, the run trains as it began.
            train = {"consistency_weight": 0.0, "consistency_pretrain_factor": 1.0, **train}
        if isinstance(train, dict) and isinstance(train.get("umap_neighbors"), int):
            # Saved when the umap start made one map: the same map, one value of the tuple.
            train = {**train, "umap_neighbors": (train["umap_neighbors"],)}
        return cls(
            data=_from_dict(DataConfig, d.get("data", {})),
            model=_from_dict(ModelConfig, model),
            train=_from_dict(TrainConfig, train),
        )

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except ConfigError as e:
            raise ConfigError(f"{path} is not a valid run config: {e}") from None
        except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            raise ConfigError(
                f"cannot read run config {path} ({type(e).__name__}: {str(e)[:80]}); restore it "
                "from a copy, or start a new run"
            ) from None


C = TypeVar("C")


def _from_dict(cls: type[C], d: Any) -> C:
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__} must be a JSON object, not {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} options: {sorted(unknown)}")
    values = {}
    for name, value in d.items():
        if isinstance(value, list):  # JSON has no tuples
            value = tuple(value)
        if not _has_type(value, str(names[name].type)):
            raise ConfigError(
                f"{cls.__name__}.{name} must be {names[name].type}, not {value!r:.60}"
            )
        values[name] = value
    return cls(**values)


def _has_type(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a field annotated ``annotation`` (the few types configs use)."""
    for option in annotation.split(" | "):
        if option == "None" and value is None:
            return True
        if option == "bool" and isinstance(value, bool):
            return True
        if option == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option == "float" and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if option == "str" and isinstance(value, str):
            return True
        if option.startswith("tuple[int") and isinstance(value, tuple):
            ints = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            if ints and (option.endswith("...]") or len(value) == option.count("int")):
                return True
    return False


# Fields filled from the data, not from the command line.
_NOT_FLAGS = {"n_features", "image_shape"}


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    suppress_defaults: bool,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> dict[str, argparse.Action]:
    """Add one ``--flag`` per field of dataclass ``cls`` but those named in ``exclude``; returns
    the actions by field name, for a caller whose command treats a flag differently (e.g.
    rewords its help).

    With ``suppress_defaults`` an absent flag leaves no attribute, so a resumed run can tell
    "not given" from "given the default".
    """
    actions = {}
    group = parser.add_argument_group(cls.__name__.removesuffix("Config").lower() + " options")
    for f in dataclasses.fields(cls):
        if f.name in _NOT_FLAGS or f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = argparse.SUPPRESS if suppress_defaults else f.default
        help_text = f.metadata.get("help", "")
        kind = str(f.type)
        if "tuple" in kind:
            help_text += " (space separated)"
        if suppress_defaults and f.default is not None and "default" not in help_text:
            # argparse cannot show a suppressed default: name the dataclass's in the help.
            if isinstance(f.default, bool):
                shown = flag if f.default else "--no-" + flag[2:]
            elif isinstance(f.default, tuple):
                shown = " ".join(map(str, f.default))
            else:
                shown = f.default
            help_text += f" (default: {shown})"
        if kind == "bool":
            action = group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif "tuple" in kind:
            action = group.add_argument(flag, type=int, nargs="+", default=default, help=help_text)
        elif kind == "int | str":  # a number, or a word such as all, that validate() checks
            action = group.add_argument(flag, type=_int_or_word, default=default, help=help_text)
        else:
            base = {"int": int, "float": float}.get(kind.split(" ")[0], str)
            action = group.add_argument(flag, type=base, default=default, help=help_text)
        actions[f.name] = action
    return actions


def _int_or_word(text: str) -> int | str:
    """A flag's value for an ``int | str`` field: an int where it reads as one, else the word."""
    try:
        return int(text)
    except ValueError:
        return text


def from_arguments(cls: type[C], args: argparse.Namespace, base: C | None = None) -> C:
    """Build ``cls`` from parsed flags, on top of ``base`` (or the defaults)."""
    values = dataclasses.asdict(base) if base is not None else {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name) and f.name not in _NOT_FLAGS:
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)

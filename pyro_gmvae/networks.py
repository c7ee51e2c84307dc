"""Neural networks of the model and the guides. The model and guides only wire these together.

Any ``nn.Module`` with the same call signature can replace one of them (see :class:`~pyro_gmvae.GMVAE`):

- decoder: ``z (..., Z) -> output (..., D * params_per_feature)``
- encoder: ``(x (N, D), y (K, 1) or None) -> (loc, scale)``, each ``(N, Z)``, or ``(K, N, Z)`` given y
- cluster encoder: ``x (N, D) -> logits (N, K)``

Two families: fully connected (:class:`Encoder`, :class:`Decoder`, :class:`ClusterEncoder`), for
any data, and convolutional (:class:`ConvEncoder`, :class:`ConvDecoder`, :class:`ConvClusterEncoder`)
for images, which read each row as an ``(H, W)`` grey image (``--network conv``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def mlp(sizes: Sequence[int], activate_last: bool = False) -> nn.Sequential:
    """Fully connected layers ``sizes[0] -> ... -> sizes[-1]`` with ReLU between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or activate_last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """``z -> `` the likelihood's parameters, through an MLP mirroring the encoder."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], n_outputs: int):
        super().__init__()
        self.net = mlp([latent_dim, *reversed(hidden), n_outputs])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Encoder(nn.Module):
    """q(z|x) or q(z|x,y): a diagonal Gaussian whose location may shift with the cluster y.

    The trunk runs once per example; conditioning on y adds a learned per-cluster offset to the
    location, so the enumerated guide costs one encoder pass however many clusters are summed.
    """

    def __init__(
        self, n_features: int, hidden: Sequence[int], latent_dim: int, n_clusters: int = 0
    ):
        super().__init__()
        width = hidden[-1] if hidden else n_features
        self._heads(mlp([n_features, *hidden], activate_last=True), width, latent_dim, n_clusters)

    def _heads(self, trunk: nn.Module, width: int, latent_dim: int, n_clusters: int) -> None:
        """``trunk`` (``x (N, D) -> (N, width)``) and the heads on it: the location, the scale
        and, given ``n_clusters``, the per-cluster offsets of the location."""
        self.trunk = trunk
        self.loc = nn.Linear(width, latent_dim)
        self.raw_scale = nn.Linear(width, latent_dim)
        # Zero offsets at the start: q(z|x,y) begins equal to q(z|x) for every y.
        self.cluster_offset = nn.Embedding(n_clusters, latent_dim) if n_clusters else None
        if self.cluster_offset is not None:
            nn.init.zeros_(self.cluster_offset.weight)

    @torch.no_grad()
    def reset_scale(self, scale: float) -> None:
        """Make q(z|x) have the same standard deviation ``scale`` in every dimension for every x
        (the location is untouched): autoencoder pretraining never trains the scale."""
        if not scale > 1e-4:
            raise ValueError(f"scale must be larger than 1e-4, the floor of the scale, not {scale}")
        self.raw_scale.weight.zero_()
        self.raw_scale.bias.fill_(math.log(math.expm1(scale - 1e-4)))  # softplus^-1

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        loc = self.loc(h)
        scale = F.softplus(self.raw_scale(h)) + 1e-4
        if y is not None and self.cluster_offset is not None:
            # y: (K, 1) under enumeration -> offset (K, 1, Z) broadcasts to (K, N, Z)
            loc = loc + self.cluster_offset(y)
            scale = scale.expand_as(loc)
        return loc, scale


class ClusterEncoder(nn.Module):
    """q(y|x): logits over the K clusters."""

    def __init__(self, n_features: int, hidden: Sequence[int], n_clusters: int):
        super().__init__()
        self.net = mlp([n_features, *hidden, n_clusters])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------- convolutional
#: Channels of the stride-2 convolutions of :class:`ConvTrunk`, one entry a stage (the last one
#: repeats where an image needs more stages): with :class:`ConvDecoder`'s transposed
#: convolutions a step on 256 MNIST images costs 62 ms against 152 ms for 32-64-128 (one thread
#: of the shared 2-core box), and mnist8k's pretraining (172 s on two threads) about what the
#: d-500-500-2000 MLP's took (about 165 s; benchmarks/SCALE.md).
CONV_CHANNELS = (16, 32, 64)

#: The memory layout of the convolutions' weights (their feature maps follow it). Channels last
#: (each pixel's channels side by side) sends :class:`ConvTrunk`'s and :class:`ConvDecoder`'s
#: convolutions to oneDNN's kernels for that layout, where the default layout's transposed
#: convolutions take a slower path: a step on 256 MNIST images took 4-8% less time in
#: pretraining and 12-18% less in SVI with the enumerated guide, the same weights in one
#: process, two threads of the 2-core box (benchmarks/SPEED.md, ``speed.py --layouts``). The
#: arithmetic is the same; only the order of float additions differs. A model's ``.to(device)``
#: keeps the layout; ``load_state_dict`` copies into it, so checkpoints of either layout load.
CONV_LAYOUT = torch.channels_last

#: What the convolutional networks compute in (``--precision``), by name: None is float32 (no
#: autocast). ``bfloat16`` runs :class:`ConvTrunk` and :class:`ConvDecoder` under
#: ``torch.autocast``: their convolutions and fully connected layers compute in bfloat16 (each
#: product summed in float32, then rounded); what they return is in their input's dtype, so
#: the heads, the prior, the likelihoods and every sum over pixels stay float32. On the 2-core
#: box (AVX-512 BF16) a step took 8-10% less time in pretraining and 0-8% less in SVI
#: (``speed.py --precisions``), and eight mnist8k seeds clustered within noise of float32's
#: (benchmarks/RESULTS.md). A CPU without bfloat16 instructions may be slower (not measured).
PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}


def compute_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` name of :data:`PRECISIONS` (None: float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return PRECISIONS[precision]


def autocast(dtype: torch.dtype | None, device: torch.device) -> torch.autocast:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a disabled one for None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def conv_sizes(image_shape: tuple[int, int]) -> list[tuple[int, int]]:
    """The ``(height, width)`` of the feature maps, from the image through each stride-2
    convolution until neither side exceeds 4: ``(28, 28) -> 14 -> 7 -> 4``, ``(8, 8) -> 4``."""
    sizes = [tuple(image_shape)]
    while max(sizes[-1]) > 4:
        sizes.append(tuple((side + 1) // 2 for side in sizes[-1]))  # a 3x3, stride 2, pad 1 conv
    return sizes  # type: ignore[return-value]


def _stage_channels(channels: Sequence[int], stages: int) -> list[int]:
    if not channels or any(c < 1 for c in channels):
        raise ValueError(f"channels must be positive numbers, not {list(channels)}")
    return [channels[min(i, len(channels) - 1)] for i in range(stages)]


class ConvTrunk(nn.Module):
    """Images ``x (..., H*W)`` -> features ``(..., width)``: 3x3 convolutions of stride 2 with
    ReLU (``channels[i]`` at stage i) until the maps are at most 4x4, then fully connected
    layers ``hidden`` with ReLU. ``width`` is ``hidden[-1]``, or the flattened maps' size.
    ``precision`` names what the layers compute in (:data:`PRECISIONS`); the features come in
    ``x``'s dtype."""

    def __init__(
        self,
        image_shape: tuple[int, int],
        hidden: Sequence[int],
        channels: Sequence[int] = CONV_CHANNELS,
        precision: str = "float32",
    ):
        super().__init__()
        self.autocast_dtype = compute_dtype(precision)
        self.image_shape = tuple(image_shape)
        sizes = conv_sizes(self.image_shape)
        stages = [1, *_stage_channels(channels, len(sizes) - 1)]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=2, padding=1)
            for a, b in zip(stages[:-1], stages[1:], strict=True)
        ).to(memory_format=CONV_LAYOUT)
        flat = stages[-1] * sizes[-1][0] * sizes[-1][1]
        self.dense = mlp([flat, *hidden], activate_last=True)
        self.width = hidden[-1] if hidden else flat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        with autocast(self.autocast_dtype, x.device):
            h = x.reshape(-1, 1, *self.image_shape)
            for conv in self.convs:
                h = F.relu(conv(h))
            h = self.dense(h.flatten(1))
        return h.to(x.dtype).reshape(*lead, self.width)


class ConvEncoder(Encoder):
    """:class:`Encoder` on a :class:`ConvTrunk`: q(z|x) or q(z|x,y) for ``(H, W)`` images."""

    def __init__(
        self,
        image_shape: tuple[int, int],
        hidden: Sequence[int],
        latent_dim: int,
        n_clusters: int = 0,
        channels: Sequence[int] = CONV_CHANNELS,
        precision: str = "float32",
    ):
        nn.Module.__init__(self)
        trunk = ConvTrunk(image_shape, hidden, channels, precision)
        self._heads(trunk, trunk.width, latent_dim, n_clusters)


class ConvClusterEncoder(nn.Module):
    """q(y|x) for ``(H, W)`` images: a :class:`ConvTrunk` and a linear layer to K logits."""

    def __init__(
        self,
        image_shape: tuple[int, int],
        hidden: Sequence[int],
        n_clusters: int,
        channels: Sequence[int] = CONV_CHANNELS,
        precision: str = "float32",
    ):
        super().__init__()
        trunk = ConvTrunk(image_shape, hidden, channels, precision)
        self.net = nn.Sequential(trunk, nn.Linear(trunk.width, n_clusters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """``z (..., Z) -> `` the likelihood's parameters ``(..., P*H*W)`` for ``(H, W)`` images,
    mirroring :class:`ConvTrunk`: fully connected layers ``reversed(hidden)`` to the smallest
    feature maps, then at each stage a 3x3 transposed convolution of stride 2 to the next larger
    size (ReLU but at the last), the transpose of the trunk's convolution at that stage. The
    ``P = outputs_per_pixel`` parameters come parameter by parameter: output ``p * H * W + i``
    is parameter p of pixel i.

    Transposed convolutions, not a nearest-neighbour upsampling followed by a convolution: on a
    CPU the upsampling's copies and the convolutions at the larger size made the decoder's
    forward and backward pass about 5 times slower (126 against 24 ms for 256 MNIST images, one
    thread; benchmarks/RESULTS.md). ``precision`` as :class:`ConvTrunk`'s."""

    def __init__(
        self,
        latent_dim: int,
        hidden: Sequence[int],
        image_shape: tuple[int, int],
        outputs_per_pixel: int = 1,
        channels: Sequence[int] = CONV_CHANNELS,
        precision: str = "float32",
    ):
        super().__init__()
        self.autocast_dtype = compute_dtype(precision)
        self.sizes = conv_sizes(tuple(image_shape))
        stages = [outputs_per_pixel, *_stage_channels(channels, len(self.sizes) - 1)]
        self.smallest = (stages[-1], *self.sizes[-1])
        self.dense = mlp(
            [latent_dim, *reversed(hidden), math.prod(self.smallest)], activate_last=True
        )
        self.convs = nn.ModuleList(
            nn.ConvTranspose2d(a, b, 3, stride=2, padding=1)
            for a, b in zip(stages[:0:-1], stages[-2::-1], strict=True)
        ).to(memory_format=CONV_LAYOUT)
        self.n_outputs = outputs_per_pixel * math.prod(self.sizes[0])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        with autocast(self.autocast_dtype, z.device):
            h = self.dense(z.reshape(-1, z.shape[-1])).view(-1, *self.smallest)
            for i, conv in enumerate(self.convs):
                h = conv(h, output_size=self.sizes[-2 - i])
                if i < len(self.convs) - 1:
                    h = F.relu(h)
        return h.to(z.dtype).reshape(*lead, self.n_outputs)

"""The convolutional networks read rows as images: their sizes, the pixel layout, the outputs'."""

from __future__ import annotations

import copy

import pytest
import torch

from pyro_gmvae.config import PRECISIONS as PRECISION_NAMES
from pyro_gmvae.networks import (
    CONV_LAYOUT,
    PRECISIONS,
    ConvClusterEncoder,
    ConvDecoder,
    ConvEncoder,
    ConvTrunk,
    conv_sizes,
)


@pytest.mark.parametrize(
    "shape, sizes",
    [
        ((28, 28), [(28, 28), (14, 14), (7, 7), (4, 4)]),
        ((8, 8), [(8, 8), (4, 4)]),
        ((5, 7), [(5, 7), (3, 4)]),
        ((4, 4), [(4, 4)]),
    ],
)
def test_the_maps_halve_until_no_side_exceeds_four(shape, sizes):
    assert conv_sizes(shape) == sizes
    trunk = ConvTrunk(shape, hidden=(6,))
    seen = [tuple(shape)]
    for conv in trunk.convs:
        conv.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[-2:])))
    assert trunk(torch.rand(3, shape[0] * shape[1])).shape == (3, 6)
    assert seen == sizes  # the convolutions make the sizes the decoder mirrors


def test_a_row_is_read_as_a_row_major_image():
    """One lit pixel at (row 2, column 4) of a 5x7 image reaches the first convolution at
    (1, 2) through a kernel that copies its centre: with height and width swapped, that pixel
    (index 18) would sit at (3, 3), which a stride of 2 skips."""
    trunk = ConvTrunk((5, 7), hidden=())
    first = trunk.convs[0]
    with torch.no_grad():
        first.weight.zero_()
        first.bias.zero_()
        first.weight[0, 0, 1, 1] = 1.0
    maps = []
    first.register_forward_hook(lambda _m, _i, out: maps.append(out))
    x = torch.zeros(1, 35)
    x[0, 2 * 7 + 4] = 1.0
    trunk(x)
    lit = (maps[0][0, 0] != 0).nonzero().tolist()
    assert lit == [[1, 2]]


def test_the_decoder_gives_its_parameters_one_block_after_another():
    """Output ``p * H * W + i`` is parameter p of pixel i, as a likelihood of several outputs
    per feature reads them."""
    decoder = ConvDecoder(latent_dim=3, hidden=(5,), image_shape=(8, 8), outputs_per_pixel=2)
    last = decoder.convs[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-1.0, 2.0]))
    out = decoder(torch.randn(4, 3))
    assert out.shape == (4, 128)
    assert torch.equal(out[:, :64], torch.full((4, 64), -1.0))
    assert torch.equal(out[:, 64:], torch.full((4, 64), 2.0))


def test_leading_dimensions_pass_through_and_each_row_is_its_own():
    """Under enumeration z is ``(K, N, Z)``: each row decodes as it would alone."""
    torch.manual_seed(0)
    decoder = ConvDecoder(latent_dim=3, hidden=(5,), image_shape=(8, 8))
    encoder = ConvEncoder((8, 8), hidden=(5,), latent_dim=3, n_clusters=2)
    z = torch.randn(2, 4, 3)
    out = decoder(z)
    assert out.shape == (2, 4, 64)
    torch.testing.assert_close(out[1, 2], decoder(z[1, 2:3])[0])
    x = torch.rand(4, 64)
    loc, scale = encoder(x, torch.arange(2).view(2, 1))
    assert loc.shape == scale.shape == (2, 4, 3)
    torch.testing.assert_close(encoder(x[2:3])[0][0], encoder(x)[0][2])


@pytest.mark.parametrize("shape", [(28, 28), (5, 7), (8, 8), (9, 6)])
def test_the_decoder_retraces_the_trunks_sizes_in_reverse(shape):
    """Each transposed convolution lands on the size the trunk had there, odd sides included
    (7 from 4, 5 from 3), and the last on the image."""
    decoder = ConvDecoder(latent_dim=2, hidden=(4,), image_shape=shape)
    seen = []
    for conv in decoder.convs:
        conv.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[-2:])))
    assert decoder(torch.randn(3, 2)).shape == (3, shape[0] * shape[1])
    assert seen == conv_sizes(shape)[-2::-1]


def test_each_decoder_stage_is_the_transpose_of_the_trunks():
    """With the trunk's weights and no bias, a decoder stage is the adjoint of the trunk's
    convolution at that size: <conv(x), y> = <x, conv_T(y)> for every x and y."""
    torch.manual_seed(0)
    trunk = ConvTrunk((7, 7), hidden=())
    decoder = ConvDecoder(latent_dim=2, hidden=(), image_shape=(7, 7))
    conv, transposed = trunk.convs[0], decoder.convs[-1]  # the 7x7 <-> 4x4 stage
    with torch.no_grad():
        # The weight (out, in, 3, 3) of the one is (in, out, 3, 3) of the other.
        transposed.weight.copy_(conv.weight)
        conv.bias.zero_()
        transposed.bias.zero_()
    x = torch.randn(2, 1, 7, 7)
    y = torch.randn(2, conv.out_channels, 4, 4)
    left = (conv(x) * y).sum()
    right = (x * transposed(y, output_size=(7, 7))).sum()
    torch.testing.assert_close(left, right)


def _contiguous_twin(module: torch.nn.Module) -> torch.nn.Module:
    """The same weights in PyTorch's default layout, as a model of an earlier version had them."""
    twin = copy.deepcopy(module).to(memory_format=torch.contiguous_format)
    assert all(p.is_contiguous() for p in twin.parameters())
    return twin


def test_the_layout_of_the_convolutions_changes_no_output_or_gradient():
    """The convolutions keep their weights channels last for speed (``CONV_LAYOUT``); what the
    networks compute, forward and backward, is what the default layout computes, up to the
    order of float additions."""
    torch.manual_seed(0)
    encoder = ConvEncoder((28, 28), hidden=(16,), latent_dim=3, n_clusters=2)
    decoder = ConvDecoder(latent_dim=3, hidden=(16,), image_shape=(28, 28))
    convs = [*encoder.modules(), *decoder.modules()]
    weights = [m.weight for m in convs if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert len(weights) == 6
    assert all(w.is_contiguous(memory_format=CONV_LAYOUT) for w in weights)
    # One channel in or out is both layouts at once; the others are not the default's.
    assert sum(not w.is_contiguous() for w in weights) == 4
    x = torch.rand(5, 784)
    outputs, grads = [], []
    for enc, dec in [(encoder, decoder), (_contiguous_twin(encoder), _contiguous_twin(decoder))]:
        loc, scale = enc(x, torch.arange(2).view(2, 1))
        out = dec(loc + scale)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append([p.grad for p in [*enc.parameters(), *dec.parameters()]])
    torch.testing.assert_close(outputs[0], outputs[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_weights_of_either_layout_load_and_a_move_keeps_the_layout():
    """A checkpoint written before the layout (contiguous weights) loads into today's network,
    which keeps its layout; one written today loads into a contiguous network; ``.to`` (a
    device, a dtype) does not undo it."""
    torch.manual_seed(0)
    old = _contiguous_twin(ConvTrunk((16, 16), hidden=(4,)))
    new = ConvTrunk((16, 16), hidden=(4,))
    new.load_state_dict(old.state_dict())
    assert not new.convs[1].weight.is_contiguous()
    x = torch.rand(3, 256)
    torch.testing.assert_close(new(x), old(x))
    back = _contiguous_twin(ConvTrunk((16, 16), hidden=(4,)))
    back.load_state_dict(new.state_dict())
    torch.testing.assert_close(back(x), new(x))
    moved = new.to("cpu", torch.float64)
    assert not moved.convs[1].weight.is_contiguous()
    assert moved.convs[1].weight.is_contiguous(memory_format=CONV_LAYOUT)


def _conv_networks(precision: str) -> list[torch.nn.Module]:
    torch.manual_seed(0)  # the same weights whatever the precision: it only changes forward
    return [
        ConvEncoder((28, 28), hidden=(16,), latent_dim=3, n_clusters=2, precision=precision),
        ConvDecoder(latent_dim=3, hidden=(16,), image_shape=(28, 28), precision=precision),
        ConvClusterEncoder((28, 28), hidden=(16,), n_clusters=2, precision=precision),
    ]


def test_bfloat16_networks_compute_in_bfloat16_and_return_float32():
    """``--precision bfloat16``: the same weights give outputs and gradients within bfloat16's
    round-off of float32's (8 bits of mantissa: a tenth of each tensor's norm; 5% measured at
    most), not equal to them (the products did run in bfloat16), and in float32, so what the
    model and the likelihood add up stays float32."""
    x = torch.rand(5, 784)
    results = {}
    for precision in ("float32", "bfloat16"):
        encoder, decoder, cluster_encoder = _conv_networks(precision)
        loc, scale = encoder(x, torch.arange(2).view(2, 1))
        out = decoder(loc + scale)
        logits = cluster_encoder(x)
        assert {out.dtype, loc.dtype, scale.dtype, logits.dtype} == {torch.float32}
        (out.square().mean() + logits.square().mean()).backward()
        params = [*encoder.parameters(), *decoder.parameters(), *cluster_encoder.parameters()]
        assert all(p.dtype == p.grad.dtype == torch.float32 for p in params)
        results[precision] = [out.detach(), logits.detach(), *(p.grad for p in params)]
    for a, b in zip(results["bfloat16"], results["float32"], strict=True):
        assert (a - b).norm() <= 0.1 * b.norm()  # each tensor as a whole: single entries vary
    assert not torch.equal(results["bfloat16"][0], results["float32"][0])


def test_a_float64_network_stays_float64_under_bfloat16():
    """Autocast leaves float64 alone; the output keeps its input's dtype, not float32."""
    decoder = ConvDecoder(3, hidden=(4,), image_shape=(8, 8), precision="bfloat16").double()
    z = torch.randn(2, 3, dtype=torch.float64)
    reference = ConvDecoder(3, hidden=(4,), image_shape=(8, 8)).double()
    reference.load_state_dict(decoder.state_dict())
    assert decoder(z).dtype == torch.float64
    torch.testing.assert_close(decoder(z), reference(z))


def test_the_precisions_the_config_accepts_are_the_networks():
    assert tuple(PRECISIONS) == PRECISION_NAMES
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16"):
        ConvTrunk((8, 8), hidden=(4,), precision="float16")

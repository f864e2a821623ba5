"""The implicit networks against plain references: the folded first layer against
FeatUp's formula, the block-view attention pooling against Unfold."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_featup.ops import gaussian_blur5
from napari_featup.upsamplers.implicit.model import AttentionDownsampler, ImplicitNet


def test_attention_downsampler_matches_unfold_reference():
    torch.manual_seed(0)
    s, h, w = 4, 3, 5
    d = AttentionDownsampler(6, s)
    x = torch.randn(2, 6, h * s, w * s)
    out = d(x, (h, w))
    blurred = d.pad(gaussian_blur5(x))
    k = 2 * s
    patches = F.unfold(blurred, k, stride=s).reshape(2, 6, k * k, h, w).permute(0, 3, 4, 2, 1)
    attn = torch.softmax(d.attn(patches).squeeze(-1) * d.w.reshape(-1) + d.b.reshape(-1), -1)
    ref = torch.einsum("bhwpc,bhwp->bchw", patches, attn)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # constant maps pool to themselves (weights sum to one)
    const = torch.full((1, 6, h * s, w * s), 2.5)
    torch.testing.assert_close(d(const, (h, w)), torch.full((1, 6, h, w), 2.5), atol=1e-5, rtol=0)


def _featup_mlp(net, coords, colour, gen=None, p=0.0):
    """FeatUp's stack written out: Fourier features with learned phases (frequency-
    major channels), LayerNorm, Dropout2d, 1x1 convs (as Linear on pixels)."""
    inp = torch.cat([coords, colour], 1).double()
    freqs = torch.exp(torch.linspace(-2.0, 10.0, net.n_freqs, dtype=torch.float64))
    arg = inp[:, None, :] * freqs[None, :, None]  # (N, F, 5): index f * 5 + d
    p0 = net.phases[0].T.double()  # (F, 5)
    p1 = net.phases[1].T.double()
    n = len(inp)
    x = torch.cat(
        [torch.sin(arg + p0).reshape(n, -1), torch.cos(arg + p1).reshape(n, -1), colour.double()], 1
    ).float()
    x = F.layer_norm(x, x.shape[1:], net.norm_in.weight, net.norm_in.bias, net.norm_in.eps)
    if p > 0:
        x = x * ((torch.rand(x.shape[1:], generator=gen) >= p).float() / (1 - p))
    x = F.relu(net.fc1(x))
    if p > 0:
        x = x * ((torch.rand((1, x.shape[1]), generator=gen) >= p).float() / (1 - p))
    return net.fc3(F.relu(net.fc2(net.norm_mid(x))))


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_implicit_net_matches_featup_formula(p):
    """The folded first layer (one product on the phase-free input) is FeatUp's
    phases + LayerNorm + dropout + fc1, in value and in gradient."""
    torch.manual_seed(0)
    net = ImplicitNet(30, 16)
    with torch.no_grad():  # trained-looking norms, not the identity init
        net.norm_in.weight.uniform_(0.5, 1.5)
        net.norm_in.bias.normal_(0, 0.2)
    n = 500
    coords = torch.rand(n, 2, dtype=torch.float64) * 2 - 1
    colour = torch.rand(n, 3) - 0.5
    e = ImplicitNet.encode(coords, colour, 30)
    out = net(e, torch.Generator().manual_seed(5), p)
    ref = _featup_mlp(net, coords, colour, torch.Generator().manual_seed(5), p)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), list(net.parameters()))
    ref_grads = torch.autograd.grad((ref * g).sum(), list(net.parameters()))
    for (name, _), a, b in zip(net.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=name)

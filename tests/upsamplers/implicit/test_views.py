"""View geometry: jitter taps against pad/zoom/crop/flip, ViewOps against pooling the
formed views (value and gradient), window origins covering the border."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_featup.ops import gaussian_blur5
from napari_featup.upsamplers.implicit.model import AttentionDownsampler
from napari_featup.upsamplers.implicit.views import Jitter, JitterTaps, ViewOps, window_origins


@pytest.mark.parametrize(
    "zoom,dy,dx,flip", [(1.0, 3, 7, False), (1.37, 10, 2, True), (1.8, 34, 37, True)]
)
def test_jitter_matches_pad_zoom_crop_flip(zoom, dy, dx, flip):
    x = torch.randn(1, 4, 20, 24)
    pad = 5
    ref = F.pad(x, [pad] * 4, mode="reflect")
    if zoom > 1:
        ref = F.interpolate(ref, scale_factor=zoom, mode="bilinear")
    ref = ref[:, :, dy : dy + 20, dx : dx + 24]
    if flip:
        ref = ref.flip(3)
    j = Jitter(zoom, dy, dx, flip)
    torch.testing.assert_close(JitterTaps(j, (20, 24), pad, "cpu")(x), ref, atol=2e-5, rtol=0)
    # the blurred, downsampler-padded view as two matrix products, whole grid and windows
    s = 4
    down = AttentionDownsampler(4, s)
    full_ref = down.pad(gaussian_blur5(ref))
    full = ViewOps([j], (20, 24), pad, "cpu", s, (5, 6))(x)
    torch.testing.assert_close(full, full_ref, atol=2e-5, rtol=0)
    win = ViewOps([j], (20, 24), pad, "cpu", s, (2, 3), [(2, 1)])(x)
    torch.testing.assert_close(win[0], full_ref[0, :, 2 * s : 5 * s, s : 5 * s], atol=2e-5, rtol=0)


@pytest.mark.parametrize("cells,origins", [((5, 6), None), ((2, 3), [(2, 1), (0, 3), (3, 0)])])
def test_view_pooling_matches_pooling_the_views(cells, origins):
    """ViewOps.pool (rows on each view's source band, window weights pulled back through
    the column operator) equals pooling the jittered, blurred views, value and gradient."""
    torch.manual_seed(0)
    s, size, pad = 4, (20, 24), 5
    js = [Jitter(1.0, 3, 7, False), Jitter(1.37, 10, 2, True), Jitter(1.8, 34, 37, True)]
    ops = ViewOps(js, size, pad, "cpu", s, cells, origins)
    x = torch.randn(1, 6, *size, requires_grad=True)
    kh, kw = cells
    attn = torch.softmax(torch.randn(3, kh, kw, 4 * s * s), -1).reshape(3, kh, kw, 2, s, 2, s)
    ref = AttentionDownsampler(6, s).pool(ops(x), attn)
    out = ops.pool(x[0].permute(1, 2, 0), attn)
    assert out.shape == (3, 6, kh, kw)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    g = torch.randn_like(ref)
    torch.testing.assert_close(
        torch.autograd.grad((out * g).sum(), x)[0],
        torch.autograd.grad((ref * g).sum(), x)[0],
        atol=1e-5,
        rtol=0,
    )


def test_window_origins_cover_border_cells():
    """Fast settings score each view on a random window of cells; corner cells must be
    covered nearly as often as central ones (uniform window starts left a fit's
    borders untrained)."""
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(16, 20)
    for i, j in window_origins(4000, (16, 20), (8, 8), gen):
        assert 0 <= i <= 8 and 0 <= j <= 12
        counts[i : i + 8, j : j + 8] += 1
    assert counts[0, 0] > 0.2 * counts.max(), counts

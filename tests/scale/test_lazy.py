"""Per-block evaluation (LazyField) equals the whole-image FeatureField."""

import numpy as np
import pytest
import torch

import napari_featup as nf
from napari_featup.field import FeatureField
from napari_featup.lazy import LazyField, blockwise, halo_cells
from napari_featup.pipeline import full_guidance
from napari_featup.source import as_source, preprocessing_of
from napari_featup.upsamplers import channel_norm, upsampler_info


def _upsampler(name, dim):
    if name == "featup-jbu":
        from napari_featup.upsamplers.featup_jbu import FeatUpJBU

        torch.manual_seed(1)
        return FeatUpJBU(dim).eval()
    return nf.load_upsampler(name, device="cpu")


def _setup(name, s, rng, size=(150, 170), dim=24):
    img = rng.integers(0, 4000, size).astype(np.uint16)
    prepared = preprocessing_of(as_source(img))
    grid = (-(-size[0] // s), -(-size[1] // s))
    torch.manual_seed(0)
    low = torch.randn(1, dim, *grid)
    up = _upsampler(name, dim)
    if up.use_norm:
        low = channel_norm(low)
    field = FeatureField(low, full_guidance(prepared, grid, s, "cpu"), up, size)
    return img, prepared, up, low, field


# every registered upsampler that can be evaluated per block
LINEAR = [n for n in nf.list_upsamplers() if blockwise(upsampler_info(n).cls)]


@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("s", [14, 28])
def test_blocks_equal_whole_image(name, s, rng):
    img, prepared, up, low, field = _setup(name, s, rng)
    lazy = LazyField(low[0].numpy(), prepared, up, s)
    w = rng.standard_normal((3, 24)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    whole = field.project(w, b)
    for r0, r1, c0, c1 in [(0, 40, 0, 50), (37, 101, 60, 170), (120, 150, 3, 9)]:
        got = lazy.project(w, b, r0, r1, c0, c1)
        ref = whole[:, r0:r1, c0:c1]
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), (name, s)
    f = lazy.features(30, 60, 40, 90)
    assert np.allclose(f, field.highres_rows(slice(30, 60))[:, :, 40:90].numpy(), atol=1e-4)
    assert halo_cells(up) >= 1


def test_dask_arrays_and_overview(rng):
    img, prepared, up, low, field = _setup("bilinear", 14, rng)
    lazy = LazyField(low[0].numpy(), prepared, up, 14)
    pca = nf.fit_pca(low[0].numpy())
    arr = lazy.to_dask("pca", pca=pca, chunk=64)
    assert arr.shape == (150, 170, 3) and arr.dtype == np.uint8
    ref = np.clip(np.rint(field.pca_rgb(pca) * 255), 0, 255).astype(np.uint8)
    assert np.abs(arr.compute().astype(int) - ref).max() <= 1
    q = low[0, :, 3, 4].numpy()
    sim = lazy.to_dask("similarity", query=q, chunk=50)
    assert np.allclose(sim.compute(), field.query_similarity(q), atol=1e-4)
    levels = lazy.pyramid("similarity", levels=3, query=q, chunk=64)
    assert [lv.shape for lv in levels] == [(150, 170), (75, 85), (38, 43)]
    # the overview is the grid interpolated: close to the full-res map where smooth
    coarse = levels[1].compute()
    assert np.corrcoef(coarse.ravel(), field.query_similarity(q)[::2, ::2].ravel())[0, 1] > 0.9


def test_from_field_wraps_an_in_memory_result(grey16):
    res = nf.extract_features(grey16, "dino16", "bilinear", weights="random", highres=False)
    lazy = LazyField.from_field(res.field, res.metadata["stride"])
    pca = res.fit_pca()
    arr = lazy.to_dask("pca", pca=pca, chunk=64).compute()
    ref = np.clip(np.rint(res.field.pca_rgb(pca) * 255), 0, 255).astype(np.uint8)
    assert np.abs(arr.astype(int) - ref).max() <= 1


def test_chunks_shown_again_are_not_recomputed(rng, monkeypatch):
    """napari asks for every visible chunk again at each pan: a chunk computed for the
    same query is reused, one for another query is not."""
    img, prepared, up, low, field = _setup("bilinear", 14, rng)
    lazy = LazyField(low[0].numpy(), prepared, up, 14)
    calls = []
    real = lazy.similarity
    monkeypatch.setattr(lazy, "similarity", lambda *a: calls.append(a[1:]) or real(*a))
    q = low[0, :, 3, 4].numpy()
    sim = lazy.to_dask("similarity", query=q, chunk=64)
    first = sim[:64, :100].compute()
    assert len(calls) == 2  # two chunks
    again = lazy.to_dask("similarity", query=q, chunk=64)[:64, 50:150].compute()
    assert len(calls) == 3 and np.array_equal(again[:, :50], first[:, 50:])
    other = lazy.to_dask("similarity", query=-q, chunk=64)[:64, :64].compute()
    assert len(calls) == 4 and np.allclose(other, -first[:, :64], atol=1e-6)


@pytest.mark.parametrize("grid,size", [((5, 7), (70, 98)), ((1, 3), (14, 40)), ((4, 4), (9, 61))])
def test_bilinear_cosine_equals_the_upsampled_features(grid, size):
    """The Gram-map shortcut for bilinear similarity chunks equals upsampling every
    channel and taking the cosine (edges, one-row grids and odd sizes included)."""
    from napari_featup.lazy import bilinear_cosine

    g = torch.Generator().manual_seed(2)
    low = torch.randn(16, *grid, generator=g) + 0.5
    q = torch.randn(16, generator=g)
    q = q / q.norm()
    up = torch.nn.functional.interpolate(low[None], size, mode="bilinear", align_corners=False)
    ref = torch.einsum("c,chw->hw", q, up[0]) / up[0].norm(dim=0)
    rows, cols = slice(1, size[0] - 2), slice(3, size[1])
    got = bilinear_cosine(low, q, size, rows, cols)
    assert got.shape == ref[rows, cols].shape
    assert np.abs(got - ref[rows, cols].numpy()).max() < 1e-5

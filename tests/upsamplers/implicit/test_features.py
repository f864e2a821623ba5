"""The fitted result: rendering at any size and in bands, and the saved file."""

from __future__ import annotations

import pytest
import torch

from napari_featup.upsamplers import resize_bilinear
from napari_featup.upsamplers.implicit import ImplicitFeatures


def test_render_sizes_and_rows(fitted, bb):
    assert fitted.original_size == (30, 44)
    assert fitted.fit_size == (42, 56)  # padded to the 14 px stride
    full = fitted.render()
    assert full.shape == (1, bb.dim, 30, 44) and full.dtype == torch.float32
    assert torch.isfinite(full).all()
    for size in [(7, 9), (61, 90), (120, 33)]:
        assert fitted.render(size).shape == (1, bb.dim) + size
    band = fitted.render((61, 90), rows=slice(20, 37))
    torch.testing.assert_close(band, fitted.render((61, 90))[:, :, 20:37], atol=1e-5, rtol=0)
    # tiny tile budget: many one-row tiles, same result
    torch.testing.assert_close(fitted.render(budget_bytes=1), full, atol=1e-5, rtol=0)
    # an image at the render size supplies the colours (FeatUp's colour frequencies reach
    # e^10, so only the very same colours give the very same features)
    img = resize_bilinear(fitted.image, (61, 90))
    torch.testing.assert_close(
        fitted.render((61, 90), image=img), fitted.render((61, 90)), atol=1e-5, rtol=0
    )
    assert (
        fitted.render((61, 90), image=img.flip(-1)) - fitted.render((61, 90))
    ).abs().max() > 1e-3


def test_features_are_not_constant_and_follow_the_image(fitted):
    f = fitted.render()[0]
    assert f.std(dim=(1, 2)).mean() > 1e-4


def test_save_load_round_trip(fitted, tmp_path):
    path = fitted.save(tmp_path / "fit.pt")
    loaded = ImplicitFeatures.load(path)
    assert loaded.info["seed"] == 3 and loaded.info["backbone"] == "dinov2"
    assert loaded.original_size == fitted.original_size
    torch.testing.assert_close(loaded.render((40, 50)), fitted.render((40, 50)), atol=1e-5, rtol=0)
    # a plain dict of tensors: loads with weights_only=True
    st = torch.load(path, weights_only=True)
    assert st["format"] == "napari-featup-implicit"
    with pytest.raises(FileExistsError, match="overwrite"):
        fitted.save(path)
    fitted.save(path, overwrite=True)


def test_load_rejects_other_files(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="napari-featup-implicit"):
        ImplicitFeatures.load(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable"):
        ImplicitFeatures.load(junk)
    with pytest.raises(FileNotFoundError):
        ImplicitFeatures.load(tmp_path / "missing.pt")


def test_render_bad_arguments(fitted):
    with pytest.raises(ValueError, match="render size"):
        fitted.render((0, 5))
    with pytest.raises(ValueError, match="contiguous"):
        fitted.render((10, 10), rows=slice(0, 10, 2))
    with pytest.raises(ValueError, match="render image"):
        fitted.render((10, 10), image=torch.zeros(1, 3, 9, 10))

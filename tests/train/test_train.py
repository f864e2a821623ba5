"""The JBU trainer: learning, cancel, resume, checkpoint format, inputs and errors.

A tiny user-supplied backbone (a strided conv, 8 px patches, 8-d) on 32 px crops keeps
each step well under a second."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import napari_featup as nf
from napari_featup.errors import BackboneError, ImageError, UpsamplerError, WeightsFileError
from napari_featup.progress import Cancelled, drive
from napari_featup.upsamplers.featup_jbu.train import iter_train_jbu, train_jbu

FAST = dict(size=32, batch_size=2, n_jitters=2, crf_samples=50, max_pad=4)


class TinyBackbone:
    """What a user brings: dim, patch_size and __call__ on normalised images."""

    dim = 8
    patch_size = 8

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(8, 3, 8, 8, generator=g) * 0.1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.conv2d(x, self.w, stride=8))


def _images(n=4):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:56]
    out = []
    for i in range(n):  # blocky scenes: something for a guided upsampler to learn
        lab = ((yy // (6 + i)) + (xx // (7 + i))) % 3
        img = rng.uniform(0, 255, (3, 3))[lab] + rng.normal(0, 4, (48, 56, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8)[: 40 + 4 * i])  # mixed sizes
    return out


def _weights(up) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in up.state_dict().items()}


def test_loss_decreases_and_result_is_an_upsampler(tmp_path):
    events = []
    up = train_jbu(_images(), TinyBackbone(), steps=16, lr=3e-3, dropout=False,
                   on_event=events.append, **FAST)  # fmt: skip
    curve = up.info["loss_curve"]
    assert len(curve) == 16 and all(math.isfinite(v) for v in curve)
    assert np.mean(curve[-4:]) < np.mean(curve[:4])
    train_ev = [e for e in events if e.stage == "train" and e.done == int(e.done)]
    assert [int(e.done) for e in train_ev] == list(range(1, 17))
    assert all(e.loss is not None and math.isfinite(e.loss) for e in train_ev)
    assert not up.training
    lr = torch.randn(1, 8, 4, 4)
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = up(lr, img)
    assert out.shape == (1, 8, 64, 64)


def test_cancel_then_resume_equals_uninterrupted(tmp_path):
    kw = dict(FAST, steps=6, checkpoint_every=2)
    full = train_jbu(_images(), TinyBackbone(), out=tmp_path / "full.ckpt", **kw)
    part = tmp_path / "run.ckpt.partial"
    gen = iter_train_jbu(_images(), TinyBackbone(), checkpoint=part, **kw)
    seen = []
    with pytest.raises(Cancelled):
        # stop in the middle of step 4 (after its backbone pass, before its update)
        drive(gen, on_event=seen.append, should_cancel=lambda: seen[-1].done >= 3.5)
    saved = torch.load(part, weights_only=True)
    assert saved["global_step"] == 3
    resumed = train_jbu(_images(), TinyBackbone(), resume=part, **kw)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise on CPU
    assert resumed.info["loss_curve"] == full.info["loss_curve"]
    # resuming from a periodic checkpoint too (steps 2 and 4 were written)
    assert torch.load(tmp_path / "full.ckpt.partial", weights_only=True)["global_step"] == 6


def test_checkpoint_is_featup_format_and_loads(tmp_path):
    path = tmp_path / "mine.ckpt"
    up = train_jbu(_images(2), TinyBackbone(), steps=2, out=path, **FAST)
    obj = torch.load(path, weights_only=True)
    for key in ("epoch", "global_step", "pytorch-lightning_version", "state_dict",
                "optimizer_states"):  # fmt: skip
        assert key in obj
    sd = obj["state_dict"]
    assert {k.split(".")[0] for k in sd} == {"upsampler", "downsampler", "scale_net"}
    assert sd["downsampler.w"].shape == (8, 8)
    assert sd["downsampler.attention_net.1.weight"].shape == (1, 8)
    assert sd["scale_net.net.weight"].shape == (1, 8, 1, 1)
    meta = obj["napari_featup"]
    assert meta["backbone"] == "TinyBackbone" and meta["image_count"] == 2
    assert meta["steps"] == 2 and len(meta["loss_curve"]) == 2 and meta["version"]
    loaded = nf.load_featup_checkpoint(path)
    lr, img = torch.randn(1, 8, 4, 4), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(lr, img), up(lr, img), atol=1e-6)
    up.save(tmp_path / "again.ckpt")
    assert torch.load(tmp_path / "again.ckpt", weights_only=True)["global_step"] == 2
    via_registry = nf.load_upsampler("featup-jbu", weights=str(path), device="cpu")
    assert via_registry.dim == 8


def test_fine_tune_from_checkpoint_starts_from_its_weights(tmp_path):
    first = tmp_path / "a.ckpt"
    train_jbu(_images(2), TinyBackbone(), steps=2, out=first, **FAST)
    tuned = train_jbu(_images(2), TinyBackbone(), steps=0, init=first, seed=5, **FAST)
    ref = nf.load_featup_checkpoint(first)
    for k, v in ref.state_dict().items():
        assert torch.equal(tuned.state_dict()[k], v)
    assert "fine-tuned" in tuned.info["init"]


def test_inputs_folder_glob_and_stack(tmp_path):
    import imageio.v3 as iio

    for i, im in enumerate(_images(3)):
        iio.imwrite(tmp_path / f"im{i}.png", im)
    (tmp_path / "notes.txt").write_text("not an image")
    for src in (tmp_path, str(tmp_path / "*.png"), [str(tmp_path / "im0.png")]):
        up = train_jbu(src, TinyBackbone(), steps=1, **FAST)
        assert up.info["image_count"] == (1 if isinstance(src, list) else 3)
    stack = np.stack([im[:40] for im in _images(3)])  # (3, 40, 56, 3)
    assert train_jbu(stack, TinyBackbone(), steps=1, **FAST).info["image_count"] == 3
    da = pytest.importorskip("dask.array")
    grey = da.from_array(stack[..., 0], chunks=(1, 40, 56))
    assert train_jbu(grey, TinyBackbone(), steps=1, **FAST).info["image_count"] == 3


def test_bad_inputs(tmp_path):
    with pytest.raises(ImageError, match="no training images"):
        train_jbu([], TinyBackbone(), steps=1, **FAST)
    with pytest.raises(ImageError, match="holds no images"):
        train_jbu(tmp_path, TinyBackbone(), steps=1, **FAST)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError, match="broken.png"):
        train_jbu([str(bad)], TinyBackbone(), steps=1, **FAST)

    class NoStride:
        dim = 8

        def __call__(self, x):
            return x

    with pytest.raises(BackboneError, match="patch_size"):
        train_jbu(_images(1), NoStride(), steps=1, **FAST)

    class WrongGrid(TinyBackbone):
        patch_size = 4  # claims 4 px but gives an 8 px grid

    with pytest.raises(BackboneError, match="expected"):
        train_jbu(_images(1), WrongGrid(), steps=1, **FAST)
    with pytest.raises(UpsamplerError, match="unknown training options"):
        train_jbu(_images(1), TinyBackbone(), steps=1, n_jiters=3)
    other = tmp_path / "other.ckpt"
    train_jbu(_images(2), TinyBackbone(), steps=1, out=other, **FAST)
    with pytest.raises(UpsamplerError, match="differs"):
        train_jbu(_images(2), TinyBackbone(), steps=2, resume=other, **dict(FAST, seed=9))
    with pytest.raises(WeightsFileError):
        train_jbu(_images(2), TinyBackbone(), steps=1, init=bad, **FAST)

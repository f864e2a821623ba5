import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_featup import io
from napari_featup.cli import main


@pytest.fixture
def images(tmp_path, rng):
    png = tmp_path / "photo.png"
    iio.imwrite(png, rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    tif = tmp_path / "cells.tif"
    tifffile.imwrite(tif, rng.integers(0, 4000, (36, 30), dtype=np.uint16))
    return png, tif


def test_extract_png_to_npz(tmp_path, images, capsys):
    out = tmp_path / "f.npz"
    code = main(
        [
            "extract",
            str(images[0]),
            "-b",
            "dino16",
            "--weights",
            "random",
            "-o",
            str(out),
            "-q",
            "--pca",
        ]
    )
    assert code == 0
    res = io.load_features(out)
    assert res.lowres.shape == (384, 3, 4) and res.highres.shape == (384, 40, 50)
    assert res.pca is not None
    assert "RANDOM" in capsys.readouterr().err


def test_extract_several_images_to_folder(tmp_path, images):
    out = tmp_path / "feats"
    code = main(
        [
            "extract",
            *map(str, images),
            "-b",
            "dino16",
            "--weights",
            "random",
            "-o",
            str(out),
            "--format",
            "zarr",
            "-q",
            "--highres-dtype",
            "float16",
        ]
    )
    assert code == 0
    res = io.load_features(out / "cells.featup.zarr")  # FeatUp's suffix (issue 17)
    assert res.highres.shape == (384, 36, 30) and res.highres.dtype == np.float16
    assert res.metadata["preprocessing"]["input_dtype"] == "uint16"
    assert (out / "photo.featup.zarr").is_dir()


def test_exit_codes(tmp_path, images, capsys):
    base = ["-b", "dino16", "--weights", "random", "-q"]
    assert (
        main(["extract", str(tmp_path / "missing.png"), *base, "-o", str(tmp_path / "a.npz")]) == 3
    )
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["extract", str(bad), *base, "-o", str(tmp_path / "a.npz")]) == 3
    assert "cannot read" in capsys.readouterr().err
    out = tmp_path / "x.npz"
    assert main(["extract", str(images[0]), *base, "-o", str(out)]) == 0
    assert main(["extract", str(images[0]), *base, "-o", str(out)]) == 5
    assert "--overwrite" in capsys.readouterr().err
    assert main(["extract", str(images[0]), *base, "-o", str(out), "--overwrite"]) == 0
    # argparse's usage error is returned as 2, not raised as SystemExit
    assert main(["extract", str(images[0]), "-b", "nope", "-o", str(out)]) == 2
    assert main(["download", "nope"]) == 2
    tiny = tmp_path / "tiny.npy"
    np.save(tiny, np.zeros((1, 1)))
    assert main(["extract", str(tiny), *base, "-o", str(tmp_path / "t.npz")]) == 2
    assert "at least 16 x 16" in capsys.readouterr().err


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "maskclip" in out and "bilinear" in out
    lines = out.splitlines()
    featup, modern = lines.index(" FeatUp's six:"), lines.index(" modern:")
    from napari_featup import list_backbones

    assert featup < modern and lines[modern + 1].split()[0] == list_backbones("modern")[0]
    row = {ln.split()[0]: ln for ln in lines if ln.startswith("  ")}
    assert "jbu norm+no_norm" in row["dinov2"] and "jbu no_norm " in row["maskclip"]
    assert "jbu - " in row["dinov3-s"] and "(text queries)" in row["clip"]
    assert "text" not in row["siglip2-b"].split("stride")[1].split("SigLIP")[0]
    assert any(ln.startswith(" custom: timm:<model name>") for ln in lines)


def test_offline_pretrained_exit_code(tmp_path, images):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_featup.cli",
            "extract",
            str(images[0]),
            "-q",
            "-o",
            str(tmp_path / "o.npz"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 4, proc.stderr
    assert "napari-featup download dinov2" in proc.stderr
    assert not (tmp_path / "o.npz").exists()


def test_download_offline_exit_code(tmp_path):
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        NAPARI_FEATUP_CACHE=str(tmp_path / "cache"),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "napari_featup.cli", "download", "dino16"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 4, proc.stderr
    assert "vit_small_patch16_224.dino" in proc.stderr


def test_extract_with_featup_jbu_checkpoint(tmp_path, images, fixtures_dir):
    out = tmp_path / "jbu.npz"
    code = main(
        [
            "extract",
            str(images[0]),
            "-b",
            "dino16",
            "--weights",
            "random",
            "-q",
            "-u",
            "featup-jbu",
            "--upsampler-weights",
            str(fixtures_dir / "featup-jbu" / "dino16.ckpt"),
            "-o",
            str(out),
        ]
    )
    assert code == 0
    res = io.load_features(out)
    assert res.highres.shape == (384, 40, 50) and res.metadata["upsampler"] == "featup-jbu"
    assert res.metadata["use_norm"] is True


def test_upsampler_options(tmp_path, images, capsys):
    out = tmp_path / "o.npz"
    base = [
        "extract",
        str(images[0]),
        "-b",
        "dino16",
        "--weights",
        "random",
        "-q",
        "-u",
        "jbu-classic",
        "-o",
        str(out),
    ]
    assert (
        main(
            base + ["--upsampler-option", "consistency=0", "--upsampler-option", "sigma_range=0.1"]
        )
        == 0
    )
    info = io.load_features(out).metadata["upsampler_info"]
    assert info["consistency_steps"] == 0 and info["sigma_range_rgb01"] == 0.1
    assert main(base + ["--overwrite", "--upsampler-option", "bogus=1"]) == 2
    assert "unknown option" in capsys.readouterr().err
    assert main(base + ["--overwrite", "--upsampler-option", "noequals"]) == 2


def test_out_with_an_image_extension_is_refused(tmp_path, images, capsys):
    """`--out x.png` used to make a folder named x.png/ and write into it."""
    base = ["extract", str(images[0]), "-b", "dino16", "--weights", "random", "-q"]
    assert main(base + ["-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert ".png is not a feature-file format" in err and "x.featup.npz" in err
    assert not (tmp_path / "x.png").exists()
    (tmp_path / "results.v2").mkdir()  # an existing folder with a dot is a folder
    assert main(base + ["-o", str(tmp_path / "results.v2")]) == 0
    assert (tmp_path / "results.v2" / "photo.featup.npz").is_file()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty Hugging Face cache and no hub to reach (a closed local port), without
    HF_HUB_OFFLINE: the case where the hub used to be retried for about 48 s."""
    import huggingface_hub.constants as hf

    import napari_featup.upsamplers.featup_jbu.checkpoints as jbu

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("NAPARI_FEATUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(jbu, "_BASE_URL", "http://127.0.0.1:9/")


def test_offline_pretrained_fails_fast_naming_the_flag(tmp_path, images, capsys, offline):
    import time

    t0 = time.perf_counter()
    code = main(["extract", str(images[0]), "-q", "-b", "vit", "-o", str(tmp_path / "o.npz")])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 4, err
    assert elapsed < 15, elapsed  # no retries of an unreachable hub
    assert "napari-featup download vit" in err and "--weights PATH" in err
    assert "--weights random" in err and "weights=PATH" not in err


def test_offline_jbu_checkpoint_names_upsampler_weights(tmp_path, images, capsys, offline):
    out = tmp_path / "o.npz"
    args = ["extract", str(images[0]), "-q", "-b", "dino16", "--weights", "random"]
    assert main(args + ["-u", "featup-jbu", "-o", str(out)]) == 4
    err = capsys.readouterr().err
    assert "--upsampler-weights PATH" in err and "--upsampler-weights random" in err, err
    assert "pass weights=PATH" not in err and "--weights random" not in err.replace(
        "--upsampler-weights random", ""
    )
    assert main(args + ["-u", "featup-jbu", "--upsampler-weights", "random", "-o", str(out)]) == 0


def test_fit_estimate_and_suffix_notes(tmp_path, images, capsys):
    out = tmp_path / "o.npz"
    base = ["extract", str(images[0]), "-b", "dino16", "--weights", "random"]
    assert main(base + ["-o", str(out)]) == 0
    assert "name it o.featup.npz" in capsys.readouterr().err  # so napari opens it with FeatUp
    # a per-image fit: how long it takes here, and the preview offered on a CPU
    assert main(base + ["-u", "featup-implicit", "--estimate", "-o", str(tmp_path / "i.npz")]) == 0
    err = capsys.readouterr().err
    assert "featup-implicit fits to each image: about" in err and " on cpu" in err
    assert "--upsampler-option settings=preview takes about" in err

"""``napari-featup train-jbu``: trains, writes a loadable checkpoint, resumes, exit codes."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import torch

import napari_featup as nf
from napari_featup.cli import main

TINY = ["--weights", "random", "--size", "32", "--batch-size", "1", "--jitters", "1"]


def test_train_jbu_command(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(2):
        iio.imwrite(tmp_path / f"im{i}.png", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    out = tmp_path / "jbu.ckpt"
    args = ["train-jbu", str(tmp_path / "*.png"), "-b", "dino16", *TINY, "-o", str(out)]
    assert main([*args, "--steps", "2", "--checkpoint-every", "1"]) == 0
    err = capsys.readouterr()
    assert "RANDOM" in err.err and "2 steps" in err.out
    up = nf.load_featup_checkpoint(out)
    assert up.dim == 384
    meta = torch.load(out, weights_only=True)["napari_featup"]
    assert meta["backbone"] == "dino16" and meta["timm_name"] and meta["image_count"] == 2
    assert main([*args, "--steps", "2"]) == 5  # exists
    # continue the same run to 3 steps
    assert main([*args, "--steps", "3", "--resume", str(out), "--overwrite"]) == 0
    assert torch.load(out, weights_only=True)["global_step"] == 3
    assert main(["train-jbu", str(tmp_path / "none*.png"), *TINY, "-o", str(tmp_path / "x")]) == 3

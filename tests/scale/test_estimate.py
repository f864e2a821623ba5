"""The pre-run estimate: its parts, its accuracy against a measured run, and the command
line's use of it (printed; refusal past the available memory unless --yes)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from napari_featup import cli, estimate
from napari_featup.estimate import estimate_run


def test_parts_follow_the_sizes():
    small = estimate_run((1024, 1024), "dinov2", calibrate=False)
    big = estimate_run((8192, 8192), "dinov2", calibrate=False)
    assert small.n_tiles == 9 and big.n_tiles == 441 and big.grid == (586, 586)
    assert big.parts["low-res grid"] == 384 * 586 * 586 * 4 * 1
    hr = estimate_run((8192, 8192), "dinov2", highres=True, calibrate=False)
    assert hr.parts["full-res features"] == 384 * 8192 * 8192 * 4
    # streaming into a store holds neither the grid nor the guidance image
    st = estimate_run((8192, 8192), "dinov2", to_store=True, calibrate=False)
    assert "low-res grid" not in st.parts and "guidance image" not in st.parts
    assert st.peak_bytes < 3 * 2**30 and st.peak_bytes < big.peak_bytes
    coarse = estimate_run((8192, 8192), "dinov2", downsample=4, calibrate=False)
    assert coarse.grid == (147, 147) and coarse.n_tiles < 30
    assert "peak memory" in big.summary() and "441 backbone tiles" in big.summary()


def test_calibration_times_tiles(monkeypatch):
    e = estimate_run((600, 600), "dino16", calibrate=True)
    assert e.seconds and e.seconds > 0 and e.timing["backbone"] > 0
    assert "timed on this machine" in e.notes[-1]
    monkeypatch.setattr(estimate, "available_memory", lambda: 2**20)
    assert estimate_run((600, 600), "dino16", calibrate=False).exceeds_memory


def test_estimate_matches_a_measured_run(tmp_path):
    """Peak resident memory of a real run (a fresh process) is within the estimate's
    -30% .. +50%."""
    script = textwrap.dedent("""
        import json, numpy as np, torch
        torch.set_num_threads(1)
        import napari_featup as nf
        from napari_featup.estimate import estimate_run
        img = (np.random.default_rng(0).random((1200, 1100)) * 60000).astype(np.uint16)
        est = estimate_run(img.shape, "dinov2", "bilinear", calibrate=False)
        r = nf.extract_features(img, "dinov2", weights="random", highres=False)
        r.field.pca_rgb(r.fit_pca())
        peak = [int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                if l.startswith("VmHWM")][0]
        print(json.dumps({"estimate": est.peak_bytes, "peak": peak}))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.7 * got["estimate"] <= got["peak"] <= 1.5 * got["estimate"], got


def test_cli_prints_the_estimate_and_refuses(tmp_path, monkeypatch, capsys):
    img = tmp_path / "big.npy"
    np.save(img, np.zeros((900, 900), np.uint16))
    out = tmp_path / "big.npz"
    args = ["extract", str(img), "--out", str(out), "-b", "dino16", "--weights", "random", "-q"]
    monkeypatch.setattr(estimate, "available_memory", lambda: 200 * 2**20)
    assert cli.main(args) == cli.EXIT_MEMORY
    err = capsys.readouterr().err
    assert "estimate for 900 x 900 px" in err and "--yes" in err and not out.exists()
    assert cli.main(args + ["--estimate"]) == cli.EXIT_OK
    assert "backbone tile" in capsys.readouterr().err and not out.exists()
    assert cli.main(args + ["--yes", "--no-highres"]) == cli.EXIT_OK
    assert out.exists()


def test_cli_store_with_workers_and_scale(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        np.save(folder / f"im{i}.npy", rng.integers(0, 255, (60, 70)).astype(np.uint8))
    store = tmp_path / "s.zarr"
    base = [
        "extract",
        str(folder),
        "--store",
        str(store),
        "-b",
        "dino16",
        "--weights",
        "random",
        "-q",
        "--downsample",
        "2",
        "--pca-colours",
        "lowres",
    ]
    assert cli.main(base) == cli.EXIT_OK
    assert "2 computed" in capsys.readouterr().out
    assert cli.main(base) == cli.EXIT_OK
    assert "2 up to date" in capsys.readouterr().out
    from napari_featup.store import open_store

    assert open_store(store)["im0"].metadata["stride"] == 32
    # argparse's usage error comes back as exit code 2 (main never raises for bad input)
    bad = ["extract", str(folder), "--store", str(store), "--tile-overlap", "x"]
    assert cli.main(bad) == cli.EXIT_USAGE

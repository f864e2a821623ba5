"""Fuzz the command line: ``napari_featup.cli.main(argv)`` with generated argv.

Property: ``main`` returns one of the documented exit codes (argparse's usage errors
included: they are 2, ``--help`` is 0) within a time limit; it never raises, and it
never leaves a partial output file (whatever sits under an output name loads).

The run is hermetic and cheap: pretrained weights and downloads fail as they do
offline, ``demo`` does not open a window, the featup-implicit fit (minutes) is left out
and the images are tiny. Real argv cannot hold NUL bytes, so none are generated.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from napari_featup import cli, io
from napari_featup.errors import WeightsUnavailableError

EXIT_CODES = {0, 1, 2, 3, 4, 5, 130}
TIME_LIMIT_S = 120  # per call; a hang fails the example instead of the whole run

values = {
    "--backbone": ["dino16", "vit", "resnet50", "nope", ""],
    "-b": ["dino16", "dinov2", "NOPE"],
    "--upsampler": ["bilinear", "jbu-classic", "guided-fit", "featup-jbu", "nope"],
    "-u": ["bilinear", "featup-jbu"],
    "--weights": ["random", "random", "pretrained", "missing.pth", "bad.pth", "adir"],
    "--upsampler-weights": ["random", "missing.ckpt", "bad.pth", "tiny.npy"],
    "--upsampler-option": [
        "steps=2",
        "radius=1",
        "sigma_range=0.1",
        "cache_mb=1",
        "bogus=1",
        "=3",
        "noequals",
        "steps=-1",
        "radius=abc",
        "steps=1e9999",
        "radius=[1, 2]",
    ],
    "--device": ["cpu", "auto", "CPU", "cuda", "cuda:7", "mps", "foo", ""],
    "--precision": ["float32", "bfloat16", "float16", "fp8"],
    "--scaling": ["auto", "range", "percentile", "minmax", "contrast_limits", "bogus"],
    "--channel-axis": ["0", "-1", "2", "5", "x"],
    "--highres-dtype": ["float32", "float16", "int8"],
    "--out": [
        "out.npz",
        "out.zarr",
        "out.tif",
        "out.npy",
        "outdir",
        "out.png",
        "afile",
        "",
        "nodir/x.npz",
        "afile/x.npz",
        "adir",
    ],
    "--format": ["npz", "zarr", "tif", ".npy", "png", ""],
    "--sample": ["astronaut", "cell", "nope"],
}
values["-o"] = values["--out"]
numbers = ["0", "1", "2", "255", "-1", "9", "nan", "inf", "-inf", "1e400", "abc", ""]
switches = ["--use-norm", "--no-norm", "--no-highres", "--pca", "--overwrite", "-q", "--no-jbu"]
images = ["tiny.npy", "rgb.png", "stack.tif", "bad.png", "missing.tif", "adir", "afile", "-"]
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)


#: settings that extract accepts, so that "mostly valid" argv get to real extraction
valid = {
    "--backbone": ["dino16", "vit"],  # others in `values`: each first load costs seconds
    "--scaling": ["auto", "range", "percentile", "minmax"],
    "--highres-dtype": ["float32", "float16"],
    "--format": ["npz", "zarr", "tif", "npy"],
}
#: upsampler -> the arguments it takes
upsampler_args = {
    "bilinear": [],
    "featup-jbu": ["--upsampler-weights", "random", "--upsampler-option", "cache_mb=1"],
    "jbu-classic": ["--upsampler-option", "radius=1", "--upsampler-option", "sigma_range=0.1"],
    "guided-fit": ["--upsampler-option", "steps=2", "--upsampler-option", "radius=1"],
}
good_images = ["tiny.npy", "rgb.png", "stack.tif"]
good_outputs = ["out.npz", "out.zarr", "out.tif", "out.npy", "outdir"]


@st.composite
def mostly_valid(draw) -> list[str]:
    """extract with good images and settings, and now and then one bad value."""
    chosen = draw(st.lists(st.sampled_from(good_images), min_size=1, max_size=2))
    argv = ["extract", *chosen, "-q", "--weights", "random", "--device", "cpu"]
    argv += ["-o", draw(st.sampled_from(good_outputs)) if len(chosen) == 1 else "outdir"]
    up = draw(st.sampled_from(sorted(upsampler_args)))
    argv += ["--upsampler", up, *upsampler_args[up]]
    if "stack.tif" in argv and draw(st.booleans()):
        argv += ["--channel-axis", "0"]
    for flag in draw(st.lists(st.sampled_from(sorted(valid)), unique=True, max_size=3)):
        pool = values[flag] if draw(st.integers(0, 7)) == 0 else valid[flag]
        argv += [flag, draw(st.sampled_from(pool))]
    argv += draw(st.lists(st.sampled_from(switches[:5]), unique=True, max_size=2))
    if draw(st.integers(0, 5)) == 0:
        limits = draw(st.lists(st.sampled_from(numbers), min_size=2, max_size=2))
        argv += ["--contrast-limits", *limits]
    if draw(st.integers(0, 5)) == 0:
        argv += [
            "--channels",
            *draw(st.lists(st.sampled_from(numbers[:6]), min_size=1, max_size=3)),
        ]
    return argv


@st.composite
def wild(draw) -> list[str]:
    """Any subcommand, flags in any order, missing values, junk tokens."""
    argv: list[str] = []
    commands = ["extract"] * 6 + ["download", "list", "demo", "bogus", "--help", "-h"]
    first = draw(text if draw(st.integers(0, 3)) == 0 else st.sampled_from(commands))
    argv.append(first)
    if first == "extract":
        argv += draw(st.lists(st.sampled_from(images), min_size=0, max_size=3))
        if draw(st.integers(0, 9)):  # usually cheap settings
            argv += ["-q", "--weights", "random", "--device", "cpu"]
    elif first == "download":
        argv += draw(st.lists(st.sampled_from(["dino16", "vit", "nope", "--no-jbu"]), max_size=2))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["value", "value", "value", "switch", "numbers", "junk"]))
        if kind == "value":
            flag = draw(st.sampled_from(sorted(values)))
            argv += [flag] + (
                [draw(st.sampled_from(values[flag]))] if draw(st.integers(0, 9)) else []
            )
        elif kind == "switch":
            argv.append(draw(st.sampled_from(switches)))
        elif kind == "numbers":
            flag = draw(st.sampled_from(["--contrast-limits", "--channels"]))
            argv += [flag] + draw(st.lists(st.sampled_from(numbers), max_size=4))
        else:
            argv.append(draw(text | st.sampled_from(["--", "-", "--out=", "-o=x.npz", "-qq"])))
    return argv


argvs = st.one_of(mostly_valid(), wild())


def _make_files(folder: Path) -> None:
    import imageio.v3 as iio
    import tifffile

    rng = np.random.default_rng(0)
    np.save(folder / "tiny.npy", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    iio.imwrite(folder / "rgb.png", rng.integers(0, 255, (24, 20, 3), dtype=np.uint8))
    tifffile.imwrite(folder / "stack.tif", rng.integers(0, 4000, (2, 24, 24), dtype=np.uint16))
    (folder / "bad.png").write_bytes(b"not an image")
    (folder / "bad.pth").write_bytes(b"PK\x03\x04 not a checkpoint")
    (folder / "afile").write_text("a plain file")
    (folder / "adir").mkdir()


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"cli.main ran longer than {TIME_LIMIT_S} s")


@pytest.fixture(scope="module")
def offline():
    """Offline, windowless and cheap, the way CI runs: pretrained weights and downloads
    fail as they do without a network, and ``demo`` records its call instead of
    opening napari."""
    mp = pytest.MonkeyPatch()
    from napari_featup import _demo
    from napari_featup.backbones import _core

    def no_network(spec):
        raise WeightsUnavailableError(f"pretrained weights for {spec.name!r}: offline (test)")

    def no_urlopen(*args, **kwargs):
        raise OSError("network disabled in tests")

    mp.setattr(_core, "_load_pretrained", no_network)
    mp.setattr("urllib.request.urlopen", no_urlopen)
    mp.setattr(_demo, "run_demo", lambda **kwargs: None)
    mp.setenv("NAPARI_FEATUP_CACHE", tempfile.mkdtemp(prefix="featup-cache-"))
    yield
    mp.undo()


def check_argv(outcome, argv: list[str]) -> None:
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _make_files(folder)
        inputs = set(folder.rglob("*"))
        before = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(TIME_LIMIT_S)
        try:
            os.chdir(folder)
            code, err = outcome(cli.main, argv)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, before)
            os.chdir(cwd)
        assert err is None, f"main raised {err!r}"
        assert isinstance(code, int) and code in EXIT_CODES, code
        if currently_in_test_context():
            event(f"exit code {code}")
        _check_outputs(folder, inputs)


def _check_outputs(folder: Path, inputs: set[Path]) -> None:
    """Every new file under an output name loads; no temporary file is left behind."""
    new = sorted(set(folder.rglob("*")) - inputs)
    assert [p.name for p in new if p.name.startswith(".")] == [], "temporary files left"
    for p in new:
        inside_store = any(a.suffix.lower() == ".zarr" for a in p.parents)
        if p.suffix.lower() in io.FORMATS and not inside_store:
            io.load_features(p)


# a third of the profile's examples: a real extraction costs a fraction of a second,
# and the first of each backbone and upsampler seconds
@settings(max_examples=max(1, settings().max_examples // 3))
@given(argv=argvs)
@example(argv=["extract", "tiny.npy", "-o", "out.npz", "--device", "foo"])  # was a ValueError
@example(argv=["extract", "tiny.npy", "-b", "nope", "-o", "out.npz"])  # argparse: SystemExit(2)
@example(argv=["--help"])  # argparse: SystemExit(0)
@example(argv=["extract", "tiny.npy", "-q", "--weights", "random", "-o", "afile"])
def test_cli_argv(outcome, offline, argv):
    check_argv(outcome, argv)


def test_out_that_is_a_file(tmp_path, capsys):  # was FileExistsError's "[Errno 17]", code 5
    (tmp_path / "afile").write_text("x")
    img = tmp_path / "tiny.npy"
    np.save(img, np.zeros((32, 32), np.uint8))
    assert cli.main(["extract", str(img), "-o", str(tmp_path / "afile")]) == cli.EXIT_USAGE
    assert "names a folder" in capsys.readouterr().err


def test_usage_errors_return_2(capsys):
    assert cli.main(["extract", "x.png", "-o", "x.npz", "--bogus"]) == cli.EXIT_USAGE
    assert "unrecognized arguments" in capsys.readouterr().err
    assert cli.main([]) == cli.EXIT_USAGE
    assert cli.main(["--help"]) == cli.EXIT_OK

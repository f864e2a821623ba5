"""Fuzz the checkpoint loaders: random bytes, damaged files, pickles with objects,
wrong keys, types and shapes.

Targets: :func:`napari_featup.weights.torch_load`, :func:`~napari_featup.weights.
load_state_dict_file` and :func:`napari_featup.load_featup_checkpoint`. Property: the
loaded tensors (a JBU stack in eval mode that runs) or a :class:`WeightsFileError` with a
message; nothing in a file is ever executed.
"""

from __future__ import annotations

import io as _io
import pickle
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from napari_featup import load_featup_checkpoint
from napari_featup.errors import WeightsFileError
from napari_featup.upsamplers.featup_jbu import FeatUpJBU
from napari_featup.weights import load_state_dict_file, torch_load

DIM = 8
RAN: list[str] = []  # set by Payload.__reduce__ if a file's code ever ran


class Payload:
    """A pickled object whose loading would run code: weights_only must refuse it."""

    def __reduce__(self):
        return (RAN.append, ("code from a weights file ran",))


def _jbu_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in FeatUpJBU(DIM).state_dict().items()}


def _lightning(state: dict) -> dict:
    """A checkpoint laid out like FeatUp's Lightning files."""
    sd = {f"upsampler.{k}": v for k, v in state.items()}
    sd["downsampler.kernel"] = torch.ones(3)
    sd["scale_net.0.weight"] = torch.ones(2, 2)
    return {"epoch": 3, "global_step": 10, "state_dict": sd, "optimizer_states": [{"lr": 1e-3}]}


class Blob(bytes):
    """Bytes that Hypothesis reports by size, not content."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes of a good checkpoint>"


@pytest.fixture(scope="module")
def good_bytes() -> bytes:
    buf = _io.BytesIO()
    torch.save(_lightning(_jbu_state()), buf)
    return Blob(buf.getvalue())


tensors = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 3), max_size=4).map(tuple),
    st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool, torch.complex64]),
)
leaves = st.one_of(
    st.none(), st.integers(), st.floats(), st.text(max_size=5), st.binary(max_size=5), tensors
)
containers = st.recursive(
    leaves,
    lambda c: (
        st.lists(c, max_size=3)
        | st.tuples(c, c)
        | st.dictionaries(st.text(max_size=12) | st.integers(), c, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def checkpoint_objects(draw):
    """Objects torch.save may write: JBU states with keys, types or shapes changed."""
    state = _jbu_state()
    keys = sorted(state)
    for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=3)):
        change = draw(st.sampled_from(["delete", "shape", "value", "dtype"]))
        if change == "delete":
            del state[key]
        elif change == "shape":
            state[key] = torch.zeros(draw(st.lists(st.integers(0, 9), max_size=4)))
        elif change == "dtype":
            state[key] = state[key].to(draw(st.sampled_from([torch.int32, torch.bool])))
        else:
            state[key] = draw(containers)
    if draw(st.booleans()):
        state[draw(st.text(max_size=12))] = draw(containers)
    shape = draw(st.sampled_from(["lightning", "bare", "nested", "other"]))
    if shape == "lightning":
        return _lightning(state)
    if shape == "bare":
        return state
    if shape == "nested":
        return {draw(st.sampled_from(["state_dict", "model", "module"])): draw(containers)}
    return draw(containers)


def _damage(draw, data: bytes) -> bytes:
    op = draw(st.sampled_from(["truncate", "flip", "junk"]))
    n = len(data)
    if op == "truncate":
        return data[: draw(st.integers(0, n - 1))]
    if op == "flip":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            buf[draw(st.integers(0, n - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf)
    start = draw(st.integers(0, n - 1))
    junk = draw(st.binary(min_size=1, max_size=64))
    return data[:start] + junk + data[start + len(junk) :]


@st.composite
def weight_files(draw, good: bytes) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["random", "damaged", "object", "pickle", "payload"]))
    suffix = draw(st.sampled_from([".ckpt", ".pth", ".pt", ".bin", ".safetensors"]))
    if kind == "random":
        head = draw(st.sampled_from([b"", b"PK", b"PK\x03\x04", b"\x80", b"\x80\x02"]))
        return head + draw(st.binary(max_size=300)), suffix
    if kind == "damaged":
        return _damage(draw, good), suffix
    if kind == "payload":
        obj = {"state_dict": {"upsampler.up1.range_temp": Payload()}}
    else:
        obj = draw(checkpoint_objects())
    if kind == "pickle":  # a legacy bare pickle, not torch's zip
        return pickle.dumps(obj, protocol=draw(st.integers(2, 5))), suffix
    buf = _io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue(), suffix


def _write(folder: str, data: bytes, suffix: str) -> Path:
    path = Path(folder) / f"w{suffix}"
    path.write_bytes(data)
    return path


def check_weights(outcome, path: Path) -> None:
    _, err = outcome(torch_load, path)
    assert err is None or isinstance(err, WeightsFileError)
    sd, err = outcome(load_state_dict_file, path)
    if err is None:
        assert isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())
    else:
        assert isinstance(err, WeightsFileError)
    up, err = outcome(load_featup_checkpoint, path)
    if err is None:
        assert isinstance(up, FeatUpJBU) and not up.training and up.dim == DIM
        with torch.no_grad():
            out = up(torch.zeros(1, DIM, 2, 2), torch.zeros(1, 3, 32, 32))
        assert out.shape == (1, DIM, 32, 32)
    else:
        assert isinstance(err, WeightsFileError)
    assert RAN == [], "code in a weights file ran"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@given(data=st.data())
def test_weight_files(outcome, good_bytes, data):
    blob, suffix = data.draw(weight_files(good_bytes), label="file")
    with tempfile.TemporaryDirectory() as tmp:
        check_weights(outcome, _write(tmp, blob, suffix))


def test_good_checkpoint_loads(good_bytes, tmp_path):
    up = load_featup_checkpoint(_write(str(tmp_path), good_bytes, ".ckpt"))
    assert up.dim == DIM and not up.training


def test_damaged_safetensors_is_a_weights_error(tmp_path):
    # torch.load hands .safetensors paths to safetensors (torch >= 2.10), whose
    # SafetensorError escaped torch_load and load_featup_checkpoint
    path = _write(str(tmp_path), b"PK not safetensors", ".safetensors")
    for load in (torch_load, load_state_dict_file, load_featup_checkpoint):
        with pytest.raises(WeightsFileError, match="safetensors"):
            load(path)


def test_safetensors_state_dict_loads(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({f"upsampler.{k}": v for k, v in _jbu_state().items()}, str(path))
    assert load_featup_checkpoint(path).dim == DIM


# Bit flips (offset, bit) of the fixture's checkpoint and a one-byte pickle that made
# torch.load raise IndexError, KeyError, AttributeError, TypeError and AssertionError, which escaped
# torch_load (it caught only zip, EOF, runtime, value and OS errors). The offsets fit
# torch 2.14's layout; on another layout they still check the property.
@pytest.mark.parametrize("flip", [(980, 2), (518, 5), (1714, 2), (2762, 0), (247, 0), None])
def test_found_torch_load_errors(outcome, good_bytes, tmp_path, flip):
    if flip is None:
        blob = b"\x80"
    else:
        buf = bytearray(good_bytes)
        buf[flip[0]] ^= 1 << flip[1]
        blob = bytes(buf)
    check_weights(outcome, _write(str(tmp_path), blob, ".ckpt"))

"""Weight files: safe loading, a cache folder, atomic downloads and offline errors."""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import WeightsFileError, WeightsUnavailableError

#: environment variable that moves the cache of FeatUp checkpoints and other weights
CACHE_ENV = "NAPARI_FEATUP_CACHE"

__all__ = [
    "CACHE_ENV",
    "WeightsFileError",
    "WeightsUnavailableError",
    "cache_dir",
    "download",
    "is_torchscript_archive",
    "load_state_dict_file",
    "read_state_dict",
    "torch_load",
]


def cache_dir() -> Path:
    """Folder for downloaded weights: ``$NAPARI_FEATUP_CACHE``, else the user cache."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "napari-featup"


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors' errors are not OSError/ValueError
        raise WeightsFileError(f"{str(path)!r} is not a readable safetensors file: {exc}") from exc


def torch_load(path: str | os.PathLike) -> Any:
    """``torch.load`` without unpickling arbitrary objects, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {str(path)!r} does not exist")
    if path.suffix.lower() == ".safetensors":
        # torch.load hands such paths to safetensors itself (torch >= 2.10), whose
        # errors are neither OSError nor ValueError: read and wrap them here.
        return _load_safetensors(path)
    with open(path, "rb") as f:
        head = f.read(4)
    # Torch files are zip archives (torch >= 1.6) or bare pickles (legacy, protocol 2+).
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise WeightsFileError(
            f"{str(path)!r} is not a PyTorch weights file (neither a zip archive nor a pickle)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise WeightsFileError(
            f"{str(path)!r} holds objects other than tensors and plain containers, or is "
            f"corrupt; it is refused because weights are loaded with weights_only=True so "
            f"that no code in the file runs ({first})"
        ) from exc
    except (Exception, MemoryError) as exc:  # noqa: BLE001
        # A damaged file fails anywhere in torch's zip, storage and unpickler code,
        # in many types (BadZipFile, EOFError, RuntimeError, KeyError, struct.error, ...).
        raise WeightsFileError(
            f"{str(path)!r} is not a readable PyTorch weights file (truncated or corrupt): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat state dict from .safetensors or a torch file (unwrapping state_dict/model)."""
    obj = torch_load(path)  # .safetensors too
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFileError(f"{str(path)!r} does not hold a state dict of tensors")
    return obj


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True when ``path`` is a TorchScript archive (a zip with ``constants.pkl``).

    OpenAI distributes CLIP this way (``ViT-B-16.pt``); ``torch.load(weights_only=True)``
    refuses such files, so they are read with :func:`read_state_dict`.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            # torch writes every record under one root folder: ROOT/constants.pkl, ROOT/code/
            return any(n.split("/", 1)[-1] == "constants.pkl" for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat state dict from any weights file a backbone accepts.

    Parameters
    ----------
    path
        ``.safetensors``, a torch file (read with ``weights_only=True``, see
        :func:`load_state_dict_file`) or a TorchScript archive. A TorchScript archive is
        opened with ``torch.jit.load(map_location="cpu")`` and only its ``state_dict()``
        is kept: TorchScript's loader restores tensors and TorchScript modules with its
        own deserialiser and does not unpickle Python objects, and the module is never run.

    Returns
    -------
    dict
        Key -> tensor, on the CPU.
    """
    path = Path(path)
    if path.is_file() and path.suffix != ".safetensors" and is_torchscript_archive(path):
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - TorchScript raises RuntimeError and more
            raise WeightsFileError(
                f"{str(path)!r} looks like a TorchScript archive but cannot be read: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
        return {k: v.detach().clone() for k, v in module.state_dict().items()}
    return load_state_dict_file(path)


def download(url: str, dest: str | os.PathLike, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically (temporary name, then rename).

    Reuses ``dest`` when it exists. Raises :class:`WeightsUnavailableError` offline,
    naming the URL and where to put the file by hand.
    """
    import urllib.request

    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part-{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            from tqdm.auto import tqdm

            with tqdm(
                total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
            ) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, dest)
    except OSError as exc:
        raise WeightsUnavailableError(
            f"could not download {url}: {exc}\nDownload it on a machine with internet "
            f"(`napari-featup download`) and put it at {dest} (the cache folder moves with "
            f"${CACHE_ENV}), or pass weights=PATH."
        ) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


# ---------------------------------------------------------------------------------------
# Reading only the tensors of a torch file that holds other objects too (e.g. a training
# save dict with an OmegaConf config): torch.load(weights_only=True) refuses such files,
# and a plain torch.load would run whatever the pickle names. This reader resolves no
# name from the file except tensor rebuilding, storage types, dtypes and OrderedDict; any
# other class becomes an inert stand-in that records nothing and runs nothing.


class _Inert:
    """Stand-in for a class a weights file names (not importable, never imported)."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _LazyStorage:
    def __init__(self, key: str, dtype: torch.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, int(numel)


class _LazyTensor:
    def __init__(self, storage: Any, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


_STORAGES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


def _rebuild_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _LazyTensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    if isinstance(storage, _LazyStorage) and isinstance(dtype, torch.dtype):
        storage = _LazyStorage(storage.key, dtype, storage.numel // dtype.itemsize)
    return _LazyTensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): tuple,
}


class _TensorsOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("torch", "torch.storage") and name in _STORAGES:
            return _StorageType(_STORAGES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return type(name, (_Inert,), {"__module__": f"inert.{module}"})

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.60}")
        stype, key, numel = pid[1], str(pid[2]), pid[4]
        dtype = stype.dtype if isinstance(stype, _StorageType) else torch.uint8
        return _LazyStorage(key, dtype, numel)


def read_tensors(path: str | os.PathLike, select: Any = None) -> Any:
    """The tensors of a torch zip file, without running anything the file names.

    Parameters
    ----------
    path
        A file written by ``torch.save`` (zip format, torch >= 1.6).
    select
        Optional function applied to the unpickled object before any tensor data is
        read (e.g. ``lambda d: d["model"]``): only the tensors it returns are loaded.

    Returns
    -------
    The (selected) object with tensors materialised on the CPU; objects of other
    classes are inert stand-ins.

    Raises
    ------
    WeightsUnavailableError, WeightsFileError
        No such file; not a torch zip file, truncated, or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {str(path)!r} does not exist")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
            if not pkl:
                raise WeightsFileError(f"{str(path)!r} is not a PyTorch zip file (no data.pkl)")
            root = pkl[0][: -len("data.pkl")]
            order = f"{root}byteorder"
            if order in names and zf.read(order).strip() not in (b"little", b""):
                raise WeightsFileError(f"{str(path)!r} holds big-endian tensors (unsupported)")
            obj = _TensorsOnlyUnpickler(io.BytesIO(zf.read(pkl[0]))).load()
            if select is not None:
                obj = select(obj)
            return _materialise(obj, zf, root, {}, str(path))
    except (zipfile.BadZipFile, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise WeightsFileError(
            f"{str(path)!r} is not a readable PyTorch weights file (truncated or corrupt): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


def _materialise(obj: Any, zf: zipfile.ZipFile, root: str, flat: dict, src: str) -> Any:
    if isinstance(obj, _LazyTensor):
        st = obj.storage
        if not isinstance(st, _LazyStorage):
            raise WeightsFileError(f"{src!r}: a tensor without storage")
        if st.key not in flat:
            data = zf.read(f"{root}data/{st.key}")
            if len(data) != st.numel * st.dtype.itemsize:
                raise WeightsFileError(f"{src!r}: storage {st.key} is truncated")
            flat[st.key] = (
                torch.frombuffer(bytearray(data), dtype=st.dtype)
                if data
                else (torch.empty(0, dtype=st.dtype))
            )
        base = flat[st.key]
        extent = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride)) + 1
        if any(n == 0 for n in obj.size):
            return torch.empty(obj.size, dtype=st.dtype)
        if obj.offset < 0 or extent > base.numel():
            raise WeightsFileError(f"{src!r}: a tensor reaches past its storage (corrupt)")
        return base.as_strided(obj.size, obj.stride, obj.offset).clone()
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) in (dict, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialise(v, zf, root, flat, src)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, zf, root, flat, src) for v in obj)
    return obj

"""The :class:`Backbone` module and :func:`load_backbone`: weights in, feature grids out.

Each backbone maps an ImageNet-normalised (B, 3, H, W) tensor to a (B, C, h, w)
feature grid with ``h = ceil(H / stride)``: inputs that are not a whole number of
patches are reflect-padded on the bottom and right (:func:`pad_to_stride`), so grid
cell ``(i, j)`` covers pixels ``[i*s, (i+1)*s) x [j*s, (j+1)*s)`` of the input and its
centre sits at pixel ``(i*s + (s-1)/2, j*s + (s-1)/2)``. (ResNet-50 runs unpadded, as in
FeatUp; its zero-padded strided convolutions give the same grid.)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import resolve_device, resolve_dtype
from ..errors import BackboneError, WeightsUnavailableError
from ..weights import read_state_dict
from ._registry import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, get_spec

#: the seed random weights are drawn with, so "random" backbones are reproducible
RANDOM_SEED = 0


def pad_to_stride(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Pad (B, C, H, W) on the bottom and right to multiples of ``stride``.

    Reflection keeps image statistics at the border; it needs the pad to be smaller
    than the side, which holds for any image at least one stride wide.

    Parameters
    ----------
    x : torch.Tensor
        (B, C, H, W).
    stride : int
        The backbone's patch size in pixels.

    Returns
    -------
    torch.Tensor
        (B, C, ceil(H/stride)*stride, ceil(W/stride)*stride).
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class Backbone(nn.Module):
    """A feature extractor: ``bb(x)`` maps (B, 3, H, W) to (B, dim, ceil(H/s), ceil(W/s)).

    Made by :func:`~napari_featup.backbones.load_backbone`; inputs are
    ImageNet-normalised for every backbone (one trained with another normalisation,
    ``spec.mean``, converts inside).

    Parameters
    ----------
    spec : BackboneSpec
        The registered description (name, timm name, dim, stride, licence, ...).
    model : torch.nn.Module
        The network, in eval mode.
    weights : str
        Where the weights came from: ``"pretrained"``, ``"random"`` or a file path.

    Attributes
    ----------
    name : str
        The registered name.
    dim : int
        Feature channels C.
    patch_size : int
        Stride s in input pixels per feature cell.
    device, dtype
        Those of the parameters.
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module, weights: str):
        super().__init__()
        self.spec = spec
        self.model = model
        self.weights = weights
        self.name = spec.name
        self.dim = spec.dim
        self.patch_size = spec.stride

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def min_size(self) -> int:
        """Smallest image side (px) the backbone accepts: one patch."""
        return self.patch_size

    def check_size(self, height: int, width: int) -> None:
        """Raise a clear error for images smaller than one patch."""
        if height < self.min_size or width < self.min_size:
            raise BackboneError(
                f"image is {height} x {width} px; backbone {self.name!r} needs at least "
                f"{self.min_size} x {self.min_size} px (one {self.patch_size} px patch)"
            )

    def _renormalise(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised -> the normalisation the weights expect (one affine map)."""
        spec = self.spec
        if spec.mean is None or spec.std is None:
            return x

        def col(v: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(v, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)

        return (x * col(IMAGENET_STD) + col(IMAGENET_MEAN) - col(spec.mean)) / col(spec.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise BackboneError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        self.check_size(*x.shape[-2:])
        family = self.spec.family
        if family is None:
            raise BackboneError(f"backbone {self.name!r} has no registered family to run it")
        x = self._renormalise(x)
        if family.pads:
            x = pad_to_stride(x, self.patch_size)
        feats = family.features(self.spec, self.model, x.to(self.dtype))
        return feats.float()


class _seeded:
    """Fork the global RNG and seed it, so random weights are reproducible."""

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(RANDOM_SEED)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001
        return os.path.expanduser("~/.cache/huggingface/hub")


def _build(spec: BackboneSpec, pretrained: bool) -> nn.Module:
    if spec.family is None:
        raise BackboneError(f"backbone {spec.name!r} has no registered family to build it")
    return spec.family.build(spec, pretrained)


def _load_pretrained(spec: BackboneSpec) -> nn.Module:
    try:
        return _build(spec, pretrained=True)
    except WeightsUnavailableError:  # a family's own message, naming its files
        raise
    except Exception as exc:  # noqa: BLE001 - hub, network and cache errors differ by version
        raise WeightsUnavailableError(
            f"pretrained weights for backbone {spec.name!r} (timm model "
            f"{spec.timm_name!r}) could not be loaded: {type(exc).__name__}: {exc}\n"
            f"They are downloaded by timm into the Hugging Face cache ({_hf_cache_dir()}; "
            "moved by HF_HOME or HF_HUB_CACHE). On a machine with internet run "
            f"`napari-featup download {spec.name}` and copy that cache folder here, or pass "
            "weights=PATH to a local weights file."
        ) from exc


_HEADS = ("head.", "fc.")


def _load_file(spec: BackboneSpec, path: Path) -> nn.Module:
    """The model with the weights of ``path``: timm format or the model's original one."""
    state = read_state_dict(path)
    with _seeded():
        model = _build(spec, pretrained=False)
    own = model.state_dict()
    try:
        state = spec.family.convert(spec, state, model)  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - converters index keys they expect
        raise BackboneError(
            f"{path} does not hold weights for {spec.name!r} ({spec.timm_name}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    state = {k: v for k, v in state.items() if k in own or not k.startswith(_HEADS)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit
        first = str(exc).strip().splitlines()
        raise BackboneError(
            f"{path} does not fit backbone {spec.name!r} ({spec.timm_name}): "
            f"{' '.join(line.strip() for line in first[:3])}"
        ) from exc
    missing = [k for k in missing if not k.startswith(_HEADS)]
    if missing or unexpected:
        raise BackboneError(
            f"{path} does not fit backbone {spec.name!r} ({spec.timm_name}): "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    return model


_CACHE: dict[tuple, Backbone] = {}


def load_backbone(
    name: str,
    weights: str | os.PathLike = "pretrained",
    device: str | torch.device = "auto",
    precision: str = "float32",
    cache: bool = True,
) -> Backbone:
    """Build backbone ``name`` in eval mode.

    Parameters
    ----------
    name
        A name from :func:`list_backbones`, or ``timm:<model name>``.
    weights
        ``"pretrained"`` (timm's download and Hugging Face cache), ``"random"`` (seeded
        untrained weights, for tests and demos) or the path of a weights file
        (.safetensors, .pth, .bin, TorchScript .pt; timm or the original format),
        read without unpickling objects (``weights_only=True``).
    device
        ``"auto"`` picks CUDA, then Apple MPS, then CPU.
    precision
        ``"float32"``, or ``"float16"``/``"bfloat16"`` on a GPU.
    cache
        Reuse a backbone loaded before with the same (name, weights, device, precision).

    Returns
    -------
    Backbone
        With gradients off.
    """
    spec = get_spec(name)
    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    if isinstance(weights, (str, os.PathLike)) and str(weights) in ("pretrained", "random"):
        source = str(weights)
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailableError(
                f"weights file {str(path)!r} for backbone {spec.name!r} does not exist; "
                "pass 'pretrained', 'random' or the path of a weights file"
            )
        source = str(path.resolve())
    key = (spec.name, source, str(dev), str(dtype))
    if cache and key in _CACHE:
        return _CACHE[key]
    if source == "pretrained":
        model = _load_pretrained(spec)
    elif source == "random":
        with _seeded():
            model = _build(spec, pretrained=False)
    else:
        model = _load_file(spec, Path(source))
    bb = Backbone(spec, model, weights=source).eval().to(device=dev, dtype=dtype)
    bb.requires_grad_(False)
    if cache:
        _CACHE[key] = bb
    return bb


def pretrained_cached(name: str) -> bool:
    """Whether timm's pretrained weights for ``name`` are already in the local cache.

    Parameters
    ----------
    name : str
        A backbone name.

    Returns
    -------
    bool
    """
    try:
        repo = get_spec(name).hub_repo
        if not repo:
            return False
        from huggingface_hub import try_to_load_from_cache

        files = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")
        for filename in files + ("open_clip_pytorch_model.bin",):
            if isinstance(try_to_load_from_cache(repo, filename), str):
                return True
    except Exception:  # noqa: BLE001 - a cache look-up must never break the caller
        return False
    return False


def download_backbone(name: str) -> str:
    """Fetch pretrained weights for backbone ``name`` into timm's cache.

    Parameters
    ----------
    name : str
        A registered backbone or ``timm:<name>``.

    Returns
    -------
    str
        The timm model name fetched.

    Raises
    ------
    WeightsUnavailableError
        Offline or not published; the message names the model and the cache.
    """
    spec = get_spec(name)
    _load_pretrained(spec)
    return spec.timm_name


__all__ = [
    "RANDOM_SEED",
    "Backbone",
    "BackboneError",
    "download_backbone",
    "load_backbone",
    "pad_to_stride",
    "pretrained_cached",
]

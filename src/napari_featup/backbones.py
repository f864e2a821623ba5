"""Registry of vision backbones (FeatUp's six and a few more) built on timm.

Each backbone maps an ImageNet-normalised (B, 3, H, W) tensor to a (B, C, h, w)
feature grid with ``h = ceil(H / stride)``: inputs that are not a whole number of
patches are reflect-padded on the bottom and right (:func:`pad_to_stride`), so grid
cell ``(i, j)`` covers pixels ``[i*s, (i+1)*s) x [j*s, (j+1)*s)`` of the input and its
centre sits at pixel ``(i*s + (s-1)/2, j*s + (s-1)/2)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .devices import resolve_device, resolve_dtype
from .errors import BackboneError  # noqa: F401  (part of this module's interface)
from .weights import WeightsUnavailableError, load_state_dict_file


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone is: its timm model, output width and stride."""

    name: str
    timm_name: str
    dim: int
    stride: int
    description: str
    featup_checkpoint: bool  # FeatUp published a JBU stack for it
    kind: str = "vit"  # "vit", "clip", "maskclip" or "resnet"


_SPECS: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        BackboneSpec(
            "dino16",
            "vit_small_patch16_224.dino",
            384,
            16,
            "DINO ViT-S/16, last block after the final norm",
            True,
        ),
        BackboneSpec(
            "dinov2",
            "vit_small_patch14_dinov2.lvd142m",
            384,
            14,
            "DINOv2 ViT-S/14 (no registers), normed patch tokens",
            True,
        ),
        BackboneSpec(
            "clip",
            "vit_base_patch16_clip_224.openai",
            512,
            16,
            "CLIP ViT-B/16 (OpenAI), ln_post and projection on every token",
            True,
            kind="clip",
        ),
        BackboneSpec(
            "maskclip",
            "vit_base_patch16_clip_224.openai",
            512,
            16,
            "MaskCLIP: CLIP ViT-B/16 whose last block keeps only the value path",
            True,
            kind="maskclip",
        ),
        BackboneSpec(
            "vit",
            "vit_small_patch16_224.augreg_in21k_ft_in1k",
            384,
            16,
            "ViT-S/16 (AugReg, ImageNet-21k then 1k), after the final norm",
            True,
        ),
        BackboneSpec(
            "resnet50",
            "resnet50.tv_in1k",
            2048,
            32,
            "ResNet-50, torchvision v1 weights, layer4",
            True,
            kind="resnet",
        ),
        BackboneSpec(
            "dinov2-reg",
            "vit_small_patch14_reg4_dinov2.lvd142m",
            384,
            14,
            "DINOv2 ViT-S/14 with 4 registers (no FeatUp checkpoint)",
            False,
        ),
        BackboneSpec(
            "dinov2-b",
            "vit_base_patch14_dinov2.lvd142m",
            768,
            14,
            "DINOv2 ViT-B/14 (no FeatUp checkpoint)",
            False,
        ),
    ]
}

#: the seed random weights are drawn with, so "random" backbones are reproducible
RANDOM_SEED = 0


def list_backbones() -> list[str]:
    """Names accepted by :func:`load_backbone`."""
    return list(_SPECS)


def get_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` for ``name`` (case-insensitive)."""
    key = str(name).lower()
    if key not in _SPECS:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(_SPECS)}")
    return _SPECS[key]


def pad_to_stride(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Pad (B, C, H, W) on the bottom and right to multiples of ``stride``.

    Reflection keeps image statistics at the border; it needs the pad to be smaller
    than the side, which holds for any image at least one stride wide.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class Backbone(nn.Module):
    """A feature extractor: ``bb(x)`` maps (B, 3, H, W) to (B, dim, ceil(H/s), ceil(W/s)).

    Attributes: ``name``, ``dim`` (channels), ``patch_size`` (stride in pixels),
    ``weights`` (where the weights came from; ``"random"`` for untrained ones),
    ``spec`` and ``device``/``dtype`` of the parameters.
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise BackboneError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        self.check_size(*x.shape[-2:])
        x = pad_to_stride(x, self.patch_size).to(self.dtype)
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        kind = self.spec.kind
        if kind == "resnet":
            feats = self.model.forward_features(x)
        else:
            tokens = _vit_tokens(self.model, x, value_path_last=(kind == "maskclip"))
            if kind in ("clip", "maskclip"):
                tokens = self.model.head(tokens)  # the 768 -> 512 projection
            tokens = tokens[:, self.model.num_prefix_tokens :]
            feats = tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return feats.float()


def _vit_tokens(model: nn.Module, x: torch.Tensor, value_path_last: bool) -> torch.Tensor:
    """All tokens of a timm ViT after its final norm (CLIP's ln_post).

    ``value_path_last`` is MaskCLIP: the last block contributes only
    ``proj(v(norm1(x)))``, without attention mixing, residual or MLP.
    """
    if not value_path_last:
        return model.forward_features(x)
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    for blk in model.blocks[:-1]:
        x = blk(x)
    last = model.blocks[-1]
    attn = last.attn
    b, n, _ = x.shape
    v = attn.qkv(last.norm1(x)).reshape(b, n, 3, -1)[:, :, 2]
    x = attn.proj(attn.norm(v))
    return model.norm(x)


def _build(spec: BackboneSpec, pretrained: bool) -> nn.Module:
    from ._triton_guard import guard_triton

    guard_triton()  # timm loads torch._dynamo -> triton, which crashes next to Mesa's LLVM
    import timm

    kwargs: dict = {"num_classes": 0} if spec.kind in ("vit", "resnet") else {}
    if spec.kind != "resnet":
        kwargs["dynamic_img_size"] = True  # interpolate position embeddings to any grid
    return timm.create_model(spec.timm_name, pretrained=pretrained, **kwargs)


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001
        return os.path.expanduser("~/.cache/huggingface/hub")


def _load_pretrained(spec: BackboneSpec) -> nn.Module:
    try:
        return _build(spec, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - hub, network and cache errors differ by version
        raise WeightsUnavailableError(
            f"pretrained weights for backbone {spec.name!r} (timm model "
            f"{spec.timm_name!r}) could not be loaded: {type(exc).__name__}: {exc}\n"
            f"They are downloaded by timm into the Hugging Face cache ({_hf_cache_dir()}; "
            "moved by HF_HOME or HF_HUB_CACHE). On a machine with internet run "
            f"`napari-featup download {spec.name}` and copy that cache folder here, or pass "
            "weights=PATH to a local weights file."
        ) from exc


def _load_file(spec: BackboneSpec, path: Path) -> nn.Module:
    from timm.models import resnet, vision_transformer

    state = load_state_dict_file(path)
    with _seeded():
        model = _build(spec, pretrained=False)
    own = model.state_dict()
    if not any(k in own for k in state):
        # Original-format weights (DINO / DINOv2 hub files, OpenAI CLIP): timm converts.
        module = resnet if spec.kind == "resnet" else vision_transformer
        filt: Callable | None = getattr(module, "checkpoint_filter_fn", None)
        if filt is not None:
            try:
                state = filt(state, model)
            except Exception as exc:  # noqa: BLE001
                raise BackboneError(
                    f"{path} does not hold weights for {spec.name!r} ({spec.timm_name}): {exc}"
                ) from exc
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc.")) or k in own}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head.", "fc."))]
    if missing or unexpected:
        raise BackboneError(
            f"{path} does not fit backbone {spec.name!r} ({spec.timm_name}): "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    return model


class _seeded:
    """Fork the global RNG and seed it, so random weights are reproducible."""

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(RANDOM_SEED)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


_CACHE: dict[tuple, Backbone] = {}


def load_backbone(
    name: str,
    weights: str | os.PathLike = "pretrained",
    device: str | torch.device = "auto",
    precision: str = "float32",
    cache: bool = True,
) -> Backbone:
    """Build backbone ``name`` in eval mode.

    ``weights``: ``"pretrained"`` (timm's download and cache), ``"random"`` (seeded
    untrained weights, for tests and demos) or a path to a weights file (.safetensors,
    .pth, .bin; timm or original format). ``device``: ``"auto"`` picks CUDA, then
    Apple MPS, then CPU. ``precision``: ``"float32"``, or ``"float16"``/``"bfloat16"``
    on a GPU. Loaded backbones are cached per (name, weights, device, precision).
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


def grid_shape(height: int, width: int, stride: int) -> tuple[int, int]:
    """Feature grid (h, w) for an image of ``height`` x ``width`` px."""
    return math.ceil(height / stride), math.ceil(width / stride)


def pretrained_cached(name: str) -> bool:
    """True when timm's pretrained weights for ``name`` are already in the local cache."""
    spec = get_spec(name)
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(f"timm/{spec.timm_name}", "model.safetensors")
    except Exception:  # noqa: BLE001 - a cache look-up must never break the caller
        return False
    return isinstance(hit, str)


def download_backbone(name: str) -> str:
    """Fetch pretrained weights for ``name`` into timm's cache; return the timm name."""
    spec = get_spec(name)
    _load_pretrained(spec)
    return spec.timm_name

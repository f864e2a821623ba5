"""Layer names, placement and the layers of feature files (no Qt, no napari import).

Alignment (``docs/library.md``): a grid with stride ``s`` over an image layer with
scale ``S`` and translate ``T`` gets ``scale = s*S`` and ``translate = T + (s-1)/2*S``
on the two spatial axes; full-resolution outputs copy ``S`` and ``T``; leading (stack)
axes copy the image's scale and translate.

Layer data are napari ``LayerDataTuple``s ``(data, kwargs, layer_type)``, which
napari's ``viewer._add_layer_from_data`` and npe2 readers accept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..analysis import PCAProjection, fit_pca
from ..io import META_KEY

#: layer-name suffixes; the full name is "<image> <suffix>"
LOWRES_SUFFIX = "PCA low-res"
SIMILARITY_SUFFIX = "similarity"
MASK_SUFFIX = "similarity mask"

LayerData = tuple[np.ndarray, dict, str]


def pca_name(image_name: str, upsampler: str) -> str:
    """Name of the full-resolution PCA layer: "<image> PCA <upsampler>"."""
    return f"{image_name} PCA {upsampler}"


def grid_transform(
    stride: float, scale: Sequence[float], translate: Sequence[float]
) -> tuple[list[float], list[float]]:
    """Scale and translate of a stride-``stride`` feature grid over an image layer.

    ``scale``/``translate`` are the image layer's (one entry per axis, spatial axes
    last). Leading axes are copied; the last two become ``s*S`` and ``T + (s-1)/2*S``
    (napari puts pixel centres on integer coordinates, a grid cell's centre is pixel
    ``i*s + (s-1)/2``).
    """
    scale = [float(v) for v in scale]
    translate = [float(v) for v in translate]
    if len(scale) < 2 or len(scale) != len(translate):
        raise ValueError(f"scale {scale} and translate {translate} need the same length >= 2")
    s = float(stride)
    out_scale = scale[:-2] + [s * v for v in scale[-2:]]
    out_translate = translate[:-2] + [
        t + (s - 1) / 2 * v for t, v in zip(translate[-2:], scale[-2:])
    ]
    return out_scale, out_translate


def to_uint8_rgb(rgb01: np.ndarray) -> np.ndarray:
    """(..., 3) colours in [0, 1] -> uint8 (a quarter of the memory of float32)."""
    return np.clip(np.rint(np.asarray(rgb01) * 255.0), 0, 255).astype(np.uint8)


def _full_res(data: np.ndarray, name: str, scale: list, translate: list, meta: dict) -> LayerData:
    return (
        data,
        dict(name=name, rgb=True, scale=scale, translate=translate, metadata=meta),
        "image",
    )


def result_layer_data(
    lowres: np.ndarray | None,
    metadata: dict,
    pca: PCAProjection | None,
    name: str,
    highres: np.ndarray | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> list[LayerData]:
    """LayerDataTuples for features read from a file (no feature field).

    Layers: "<name> PCA low-res" from ``lowres`` (C, h, w), "<name> PCA <upsampler>"
    from ``highres`` (C, H, W) when present (or from a stored ``pca`` colour array in
    ``extra``), and a "<name> similarity" from ``extra["similarity"]``. Placement
    uses ``metadata``'s stride and the source layer's scale/translate when recorded.
    """
    extra = extra or {}
    scale = list(metadata.get("source_scale") or [1.0, 1.0])[-2:]
    translate = list(metadata.get("source_translate") or [0.0, 0.0])[-2:]
    if pca is None:
        source = lowres if lowres is not None else highres
        pca = fit_pca(source) if source is not None else None
    meta = {META_KEY: dict(metadata, layer="from-file")}
    out: list[LayerData] = []
    if lowres is not None:
        stride = int(metadata.get("stride", 1))
        s, t = grid_transform(stride, scale, translate)
        out.append(
            (
                to_uint8_rgb(pca.to_rgb(lowres)),
                dict(name=f"{name} {LOWRES_SUFFIX}", rgb=True, scale=s, translate=t, metadata=meta),
                "image",
            )
        )
    up_name = pca_name(name, str(metadata.get("upsampler", "full-res")))
    if highres is not None and pca is not None:
        out.append(_full_res(to_uint8_rgb(pca.to_rgb(highres)), up_name, scale, translate, meta))
    elif "pca" in extra:
        out.append(_full_res(np.asarray(extra["pca"]), up_name, scale, translate, meta))
    if "similarity" in extra:
        out.append(
            (
                np.asarray(extra["similarity"], np.float32),
                dict(
                    name=f"{name} {SIMILARITY_SUFFIX}",
                    scale=scale,
                    translate=translate,
                    colormap="inferno",
                    metadata=meta,
                ),
                "image",
            )
        )
    return out

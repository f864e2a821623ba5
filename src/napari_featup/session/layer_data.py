"""Layer names, placement and the layers of feature files (no Qt, no napari import).

Alignment (``docs/library.md``): a grid with stride ``s`` over an image layer with
scale ``S`` and translate ``T`` gets ``scale = s*S`` and ``translate = T + (s-1)/2*S``
on the two spatial axes; full-resolution outputs copy ``S`` and ``T``; leading (stack)
axes copy the image's scale and translate.

Layer data are napari ``LayerDataTuple``s ``(data, kwargs, layer_type)``, which
napari's ``viewer._add_layer_from_data`` and npe2 readers accept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..analysis import PCAProjection, fit_pca
from ..io import META_KEY
from .planes import PlaneStore

#: layer-name suffixes; the full name is "<image> <suffix>"
LOWRES_SUFFIX = "PCA low-res"
SIMILARITY_SUFFIX = "similarity"
MASK_SUFFIX = "similarity mask"

LayerData = tuple[np.ndarray, dict, str]


def pca_name(image_name: str, upsampler: str) -> str:
    """Name of the full-resolution PCA layer: "<image> PCA <upsampler>"."""
    return f"{image_name} PCA {upsampler}"


def grid_transform(
    stride: float | Sequence[float], scale: Sequence[float], translate: Sequence[float]
) -> tuple[list[float], list[float]]:
    """Scale and translate of a stride-``stride`` feature grid over an image layer.

    ``stride`` is one value or one per spatial axis (rows, columns). ``scale`` and
    ``translate`` are the image layer's (one entry per axis, spatial axes last).
    Leading axes are copied; the last two become ``s*S`` and ``T + (s-1)/2*S``
    (napari puts pixel centres on integer coordinates, a grid cell's centre is pixel
    ``i*s + (s-1)/2``).
    """
    scale = [float(v) for v in scale]
    translate = [float(v) for v in translate]
    if len(scale) < 2 or len(scale) != len(translate):
        raise ValueError(f"scale {scale} and translate {translate} need the same length >= 2")
    strides = [float(v) for v in np.broadcast_to(np.asarray(stride, float), (2,))]
    out_scale = scale[:-2] + [s * v for s, v in zip(strides, scale[-2:])]
    out_translate = translate[:-2] + [
        t + (s - 1) / 2 * v for s, t, v in zip(strides, translate[-2:], scale[-2:])
    ]
    return out_scale, out_translate


def grid_display(
    colours: np.ndarray, stride: int, size: Sequence[int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """The low-res grid's colours (h, w, K) cut to the image's extent (H, W).

    The grid covers the image padded to whole patches (37 cells of 14 px are 518 px
    over a 512 px image), so its last cells overhang. Each cell is split into squares
    of ``g = gcd(stride, H)`` (rows; columns alike) px and those past the image are
    dropped: returns the colours on that finer grid and its step (gy, gx) in pixels,
    for :func:`grid_transform`. A grid that fits the image exactly is returned as is.
    """
    h_img, w_img = (int(v) for v in size)
    s = int(stride)
    gy, gx = math.gcd(s, h_img), math.gcd(s, w_img)
    out = np.repeat(np.repeat(colours, s // gy, axis=0), s // gx, axis=1)
    return np.ascontiguousarray(out[: h_img // gy, : w_img // gx]), (gy, gx)


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
    ``extra``), a "<name> similarity" from ``extra["similarity"]``, and the text-query
    heatmaps and label map from ``extra["text_similarity"]`` / ``["text_labels"]``. Placement
    uses ``metadata``'s stride and the source layer's scale/translate when recorded.
    A stack's export (``metadata["plane_index"]``: the slice of each entry along the
    arrays' first axis, ``metadata["stack_shape"]``) gives layers over the whole stack,
    each slice in its place (slices not exported are empty).
    """
    extra = extra or {}
    if pca is None:
        source = lowres if lowres is not None else highres
        if source is not None and metadata.get("plane_index") is not None:
            source = np.moveaxis(source, 1, -1).reshape(-1, source.shape[1])  # (N*h*w, C)
        pca = fit_pca(source) if source is not None else None
    meta = {META_KEY: dict(metadata, layer="from-file")}
    planes = metadata.get("plane_index")
    if planes is None:
        return _plane_layer_data(lowres, highres, extra, metadata, pca, name, meta)
    leading = tuple(int(v) for v in metadata.get("stack_shape") or ())
    n_lead = len(leading)
    stacked: list[LayerData] = []
    for k, idx in enumerate(tuple(int(v) for v in i) for i in planes):
        layers = _plane_layer_data(
            None if lowres is None else lowres[k],
            None if highres is None else highres[k],
            {key: v[k] for key, v in extra.items()},
            metadata,
            pca,
            name,
            meta,
        )
        if not stacked:
            lead_s = list(metadata.get("source_scale") or [1.0] * (n_lead + 2))[:n_lead]
            lead_t = list(metadata.get("source_translate") or [0.0] * (n_lead + 2))[:n_lead]
            for data, kwargs, ltype in layers:
                store = PlaneStore(leading, data.shape, data.dtype)
                kwargs = dict(
                    kwargs,
                    scale=lead_s + list(kwargs["scale"]),
                    translate=lead_t + list(kwargs["translate"]),
                )
                stacked.append((store, kwargs, ltype))
        for (store, _, _), (data, _, _) in zip(stacked, layers):
            store[idx] = data
    return stacked


def _plane_layer_data(
    lowres: np.ndarray | None,
    highres: np.ndarray | None,
    extra: dict[str, np.ndarray],
    metadata: dict,
    pca: PCAProjection | None,
    name: str,
    meta: dict,
) -> list[LayerData]:
    scale = list(metadata.get("source_scale") or [1.0, 1.0])[-2:]
    translate = list(metadata.get("source_translate") or [0.0, 0.0])[-2:]
    out: list[LayerData] = []
    if lowres is not None:
        stride = int(metadata.get("stride", 1))
        size = metadata.get("image_size") or [v * stride for v in lowres.shape[-2:]]
        colours, step = grid_display(to_uint8_rgb(pca.to_rgb(lowres)), stride, size)
        s, t = grid_transform(step, scale, translate)
        out.append(
            (
                colours,
                dict(name=f"{name} {LOWRES_SUFFIX}", rgb=True, scale=s, translate=t, metadata=meta),
                "image",
            )
        )
    up_name = pca_name(name, str(metadata.get("upsampler", "full-res")))
    if highres is not None and pca is not None:
        out.append(_full_res(to_uint8_rgb(pca.to_rgb(highres)), up_name, scale, translate, meta))
    elif "pca" in extra:
        out.append(_full_res(np.asarray(extra["pca"]), up_name, scale, translate, meta))
    if "text_similarity" in extra or "text_labels" in extra:
        out += _text_layer_data(extra, metadata, name, scale, translate, meta)
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


def _text_layer_data(
    extra: dict[str, np.ndarray],
    metadata: dict,
    name: str,
    scale: list,
    translate: list,
    meta: dict,
) -> list[LayerData]:
    """The text-query layers of a file written with ``extract --text``: one heatmap per
    prompt ("<name> text: <prompt>", from ``text_similarity`` (N, H, W)) and the label
    map ("<name> text labels", from ``text_labels`` (H, W), 0 = none of these), named
    after the prompts the metadata records."""
    from ..text.labels import NONE_LABEL, label_colour
    from ..text.queries import LABELS_SUFFIX, TEXT_KEY, text_layer_name

    record = metadata.get(TEXT_KEY) if isinstance(metadata.get(TEXT_KEY), dict) else {}
    sims = extra.get("text_similarity")
    n = 0 if sims is None else int(np.shape(sims)[0])
    prompts = record.get("prompts")
    if not (isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)):
        prompts = []
    if n and len(prompts) != n:  # a file edited by hand: keep the layers, number them
        prompts = [f"prompt {i + 1}" for i in range(n)]
    out: list[LayerData] = []
    for i in range(n):
        m = np.asarray(sims[i], np.float32)
        lo, hi = float(np.nanmin(m)), float(np.nanmax(m))
        kwargs = dict(
            name=text_layer_name(name, prompts[i]),
            scale=scale,
            translate=translate,
            colormap="inferno",
            contrast_limits=(lo, hi) if hi > lo else (-1.0, 1.0),
            opacity=0.8,
            blending="translucent",
            metadata={META_KEY: dict(meta[META_KEY], kind="text-similarity", prompt=prompts[i])},
        )
        out.append((m, kwargs, "image"))
    labels = extra.get("text_labels")
    if labels is not None:
        labels = np.asarray(labels)
        labels = labels if labels.dtype.kind in "iu" else labels.astype(np.int32)
        count = max(len(prompts), int(labels.max(initial=0)))
        names = [NONE_LABEL] + prompts + [f"label {i}" for i in range(len(prompts) + 1, count + 1)]
        colormap: dict = {i: label_colour(i) for i in range(count + 1)}
        colormap[None] = (0.0, 0.0, 0.0, 0.0)
        kwargs = dict(
            name=f"{name} {LABELS_SUFFIX}",
            scale=scale,
            translate=translate,
            opacity=0.6,
            colormap=colormap,
            features={"index": list(range(count + 1)), "prompt": names},
            metadata={META_KEY: dict(meta[META_KEY], kind="text-labels")},
        )
        out.append((labels, kwargs, "labels"))
    return out

"""A stack of feature planes for one image layer (no Qt, no napari import).

A :class:`FeatureStack` holds the features of one image layer: one
:class:`~napari_featup.pipeline.FeatureResult` per computed 2-D plane of a (possibly
stacked) image, one PCA shared by all planes (so colours agree between planes and
between the low-res and full-res layers) and the arrays the layers show. It answers
similarity queries made at points in the image's data coordinates, and gives its
layers as ``LayerDataTuple``s (see :mod:`.layer_data` for names and placement).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..analysis import PCAProjection, fit_pca, make_query
from ..io import META_KEY
from ..pipeline import FeatureResult
from .geometry import Index, PlaneGeometry
from .layer_data import (
    LOWRES_SUFFIX,
    MASK_SUFFIX,
    SIMILARITY_SUFFIX,
    LayerData,
    grid_transform,
    pca_name,
    to_uint8_rgb,
)


@dataclass
class FeatureStack:
    """Features of the planes of one image layer, and the arrays its layers show.

    ``config`` records the settings the features were made with (backbone, weights,
    upsampler, preprocessing); planes are only added to a stack with the same
    config. Arrays: ``pca_lowres`` ``leading + (h, w, 3)`` uint8, ``pca_full``
    ``leading + (H, W, 3)`` uint8 and ``similarity`` ``leading + (H, W)`` float32,
    zero on planes not computed.
    """

    image_name: str
    geometry: PlaneGeometry
    config: dict
    results: dict[Index, FeatureResult] = field(default_factory=dict)
    pca: PCAProjection | None = None
    pca_lowres: np.ndarray | None = None
    pca_full: np.ndarray | None = None
    similarity: np.ndarray | None = None
    #: planes whose similarity map does not match the current query
    stale_similarity: set = field(default_factory=set)
    query: np.ndarray | None = None

    @property
    def similarity_name(self) -> str:
        """Name of the similarity heatmap layer: "<image> similarity"."""
        return f"{self.image_name} {SIMILARITY_SUFFIX}"

    # ----------------------------------------------------------------- features
    @property
    def metadata(self) -> dict:
        """Metadata of the first computed plane (shared settings), or {}."""
        return next(iter(self.results.values())).metadata if self.results else {}

    @property
    def stride(self) -> int:
        """Image pixels per feature cell (from the features' metadata)."""
        return int(self.metadata["stride"])

    @property
    def upsampler(self) -> str:
        """Name of the upsampler the features were made with."""
        return str(self.metadata.get("upsampler", self.config.get("upsampler", "")))

    def add_planes(
        self,
        results: dict[Index, FeatureResult],
        pca: PCAProjection | None = None,
        colours: dict[Index, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        """Add computed planes; fit the PCA on them if there is none yet.

        ``pca`` (fitted by the caller, e.g. in a worker) is used when the stack has
        none; otherwise the stack's PCA is kept so colours agree with planes shown
        before. ``colours[idx]`` = (low-res, full-res) uint8 RGB from
        :func:`plane_colours` with that PCA (computed in a worker); planes without are
        coloured here (one 3-channel upsample per plane).
        """
        if not results:
            return
        for idx in results:
            self.geometry.check_index(idx)
        if self.pca is None:
            self.pca = pca if pca is not None else fit_stack_pca(results.values())
        first = next(iter(results.values()))
        grid = tuple(first.lowres.shape[-2:])
        if self.pca_lowres is None:
            self.pca_lowres = np.zeros(self.geometry.leading + grid + (3,), np.uint8)
            self.pca_full = np.zeros(self.geometry.leading + self.geometry.size + (3,), np.uint8)
            self.similarity = np.zeros(self.geometry.leading + self.geometry.size, np.float32)
        for idx, res in results.items():
            if tuple(res.lowres.shape[-2:]) != grid or res.field is None:
                raise ValueError(
                    f"plane {idx}: features of grid {res.lowres.shape[-2:]} (field: "
                    f"{res.field is not None}) do not fit the stack's grid {grid}"
                )
            res.pca = self.pca
            self.results[idx] = res
            low, full = (colours or {}).get(idx) or plane_colours(res, self.pca)
            self.pca_lowres[idx] = low
            self.pca_full[idx] = full
            self.stale_similarity.add(idx)

    # --------------------------------------------------------------- similarity
    def points_in_planes(
        self, points: Iterable[Sequence[float]]
    ) -> tuple[list[tuple[Index, tuple[float, float]]], list[Sequence[float]]]:
        """Split data-coordinate points into (plane, (row, col)) on computed planes and
        the points that fall on no computed plane or outside the image."""
        usable, unusable = [], []
        n_lead = len(self.geometry.leading)
        h, w = self.geometry.size
        for p in points:
            p = [float(v) for v in p]
            if len(p) != self.geometry.ndim:
                raise ValueError(
                    f"point {p} has {len(p)} coordinates; the image has {self.geometry.ndim} axes"
                )
            idx = tuple(int(round(v)) for v in p[:n_lead])
            r, c = p[n_lead:]
            inside = all(0 <= i < n for i, n in zip(idx, self.geometry.leading))
            if inside and idx in self.results and -0.5 <= r < h - 0.5 and -0.5 <= c < w - 0.5:
                usable.append((idx, (min(max(r, 0.0), h - 1), min(max(c, 0.0), w - 1))))
            else:
                unusable.append(p)
        return usable, unusable

    def set_query(
        self,
        positives: Iterable[Sequence[float]],
        negatives: Iterable[Sequence[float]] = (),
    ) -> list[Sequence[float]]:
        """Set the query from points in the image's data coordinates.

        The query is :func:`~napari_featup.analysis.make_query` of the full-resolution
        features at the points (several positives average, negatives subtract).
        Points on planes without features are ignored and returned. With no usable
        positive point the query is cleared (similarity maps become zero).
        """
        pos, bad_pos = self.points_in_planes(positives)
        neg, bad_neg = self.points_in_planes(negatives)
        if not pos:
            self.query = None
        else:
            pf = self._features_at(pos)
            nf = self._features_at(neg) if neg else None
            self.query = make_query(pf, nf)
        self.stale_similarity = set(self.results)
        return bad_pos + bad_neg

    def _features_at(self, pts: list[tuple[Index, tuple[float, float]]]) -> np.ndarray:
        return np.concatenate(
            [self.results[idx].field.features_at([rc]) for idx, rc in pts], axis=0
        )

    def update_similarity(self, index: Sequence[int] = ()) -> np.ndarray | None:
        """Compute (if stale) the similarity map of plane ``index``; return it, or None
        when that plane has no features."""
        idx = self.geometry.check_index(index)
        if idx not in self.results or self.similarity is None:
            return None
        if idx in self.stale_similarity:
            self.similarity[idx] = similarity_map(self.results[idx], self.query)
            self.stale_similarity.discard(idx)
        return self.similarity[idx]

    # ------------------------------------------------------------------- layers
    def layer_metadata(self, kind: str) -> dict:
        """What a layer of this stack records about how it was made."""
        meta = copy.deepcopy(self.metadata)
        meta.update(
            layer=kind,
            source_layer=self.image_name,
            planes=[list(i) for i in sorted(self.results)],
            source_scale=list(self.geometry.scale),
            source_translate=list(self.geometry.translate),
        )
        if self.pca is not None:
            meta["pca_explained_variance_ratio"] = self.pca.explained_variance_ratio.tolist()
        return {META_KEY: meta}

    def layer_data(self) -> list[LayerData]:
        """LayerDataTuples of the low-res and full-resolution PCA layers."""
        if self.pca_lowres is None:
            return []
        g = self.geometry
        low_scale, low_translate = grid_transform(self.stride, g.scale, g.translate)
        return [
            (
                self.pca_lowres,
                dict(
                    name=f"{self.image_name} {LOWRES_SUFFIX}",
                    rgb=True,
                    scale=low_scale,
                    translate=low_translate,
                    metadata=self.layer_metadata("pca-lowres"),
                    blending="translucent",
                ),
                "image",
            ),
            (
                self.pca_full,
                dict(
                    name=pca_name(self.image_name, self.upsampler),
                    rgb=True,
                    scale=list(g.scale),
                    translate=list(g.translate),
                    metadata=self.layer_metadata("pca-full"),
                    blending="translucent",
                ),
                "image",
            ),
        ]

    def similarity_layer_data(self, index: Sequence[int] = ()) -> LayerData:
        """LayerDataTuple of the similarity heatmap (cosine similarity in [-1, 1]).

        Contrast limits span plane ``index``'s map (min to max), so the ranking of
        pixels is visible whatever the backbone's typical similarity level.
        """
        g = self.geometry
        plane = self.similarity[self.geometry.check_index(index)]
        lo, hi = float(plane.min()), float(plane.max())
        limits = (lo, hi) if hi > lo else (-1.0, 1.0)
        return (
            self.similarity,
            dict(
                name=self.similarity_name,
                scale=list(g.scale),
                translate=list(g.translate),
                colormap="inferno",
                contrast_limits=limits,
                opacity=0.8,
                blending="translucent",
                metadata=self.layer_metadata("similarity"),
            ),
            "image",
        )

    def mask(self, threshold: float) -> np.ndarray:
        """Labels (uint8, 1 where similarity >= ``threshold``) on computed planes
        (their similarity maps are brought up to date first)."""
        if self.similarity is None:
            raise ValueError("no similarity map yet: add a query point first")
        for idx in self.results:  # bring every computed plane up to the current query
            self.update_similarity(idx)
        out = (self.similarity >= float(threshold)).astype(np.uint8)
        for idx in self.geometry.planes():
            if idx not in self.results or self.query is None:
                out[idx] = 0
        return out

    def mask_layer_data(self, threshold: float) -> LayerData:
        """LayerDataTuple of the Labels layer "<image> similarity mask" (:meth:`mask`)."""
        g = self.geometry
        meta = self.layer_metadata("similarity-mask")
        meta[META_KEY]["threshold"] = float(threshold)
        return (
            self.mask(threshold),
            dict(
                name=f"{self.image_name} {MASK_SUFFIX}",
                scale=list(g.scale),
                translate=list(g.translate),
                metadata=meta,
                opacity=0.5,
            ),
            "labels",
        )


def similarity_map(result: FeatureResult, query: np.ndarray | None) -> np.ndarray:
    """Cosine similarity (H, W) of every full-resolution feature of ``result`` to
    ``query`` (C,), through the field (a 1-channel upsample; the norms are computed
    once per field and cached); zeros for no query."""
    f = result.field
    if f is None:
        raise ValueError("this result has no feature field (was it loaded from a file?)")
    if query is None:
        return np.zeros(f.size, np.float32)
    return f.query_similarity(np.asarray(query, np.float32))


def plane_colours(result: FeatureResult, pca: PCAProjection) -> tuple[np.ndarray, np.ndarray]:
    """(low-res (h, w, 3), full-res (H, W, 3)) uint8 PCA colours of one plane."""
    if result.field is None:
        raise ValueError("this result has no feature field (was it loaded from a file?)")
    return to_uint8_rgb(pca.to_rgb(result.lowres)), to_uint8_rgb(result.field.pca_rgb(pca))


def fit_stack_pca(results: Iterable[FeatureResult], max_samples: int = 20000) -> PCAProjection:
    """One PCA over the low-res features of several planes (so colours agree)."""
    samples = [r.lowres.reshape(r.lowres.shape[0], -1).T for r in results]
    if not samples:
        raise ValueError("no features to fit a PCA on")
    return fit_pca(np.concatenate(samples, axis=0), max_samples=max_samples)

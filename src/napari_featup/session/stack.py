"""A stack of feature planes for one image layer (no Qt, no napari import).

A :class:`FeatureStack` holds the features of one image layer: one
:class:`~napari_featup.pipeline.FeatureResult` per computed 2-D plane of a (possibly
stacked) image, one PCA shared by all planes (so colours agree between planes and
between the low-res and full-res layers) and the arrays the layers show. It answers
similarity queries made at points in the image's data coordinates, and gives its
layers as ``LayerDataTuple``s (see :mod:`.layer_data` for names and placement).

Clicks are answered from each plane's :class:`~napari_featup.compact.CompactField`
in a basis shared by the stack's planes (so a query made on one slice scores the
others), at a cost independent of the upsampler and the channel count; each map
records the largest error it can have (0 when the basis is complete).
Arrays of a stack are :class:`~.planes.PlaneStore`s: memory per computed slice.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..analysis import PCAProjection, fit_pca
from ..compact import Basis, CompactField, compact_rank, fit_basis, make_compact_query
from ..compact import similarity as compact_similarity
from ..io import META_KEY
from ..pipeline import FeatureResult
from .geometry import Index, PlaneGeometry
from .layer_data import (
    LOWRES_SUFFIX,
    MASK_SUFFIX,
    SIMILARITY_SUFFIX,
    LayerData,
    grid_display,
    grid_transform,
    pca_name,
    to_uint8_rgb,
)
from .planes import plane_array

#: colour of the similarity mask's label 1 (cyan: inferno has no blue-green)
MASK_COLOUR = "#00e5ff"


@dataclass
class FeatureStack:
    """Features of the planes of one image layer, and the arrays its layers show.

    ``config`` records the settings the features were made with (backbone, weights,
    upsampler, preprocessing); planes are only added to a stack with the same
    config. Arrays: ``pca_lowres`` ``leading + (h', w', 3)`` uint8 (the grid cut to
    the image, :func:`~.layer_data.grid_display`; ``lowres_step`` px per entry),
    ``pca_full`` ``leading + (H, W, 3)`` uint8 and ``similarity`` ``leading + (H, W)``
    float32, zero on planes not computed (stored per plane for stacks).
    ``similarity_bound[plane]``: the largest error of that plane's map.
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
    query: Any = None  # a compact.CompactQuery
    basis: Basis | None = None
    lowres_step: tuple[int, int] = (1, 1)
    similarity_bound: dict = field(default_factory=dict)

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
        basis: Basis | None = None,
    ) -> None:
        """Add computed planes; fit the PCA (and the basis) on them if there is none.

        ``pca`` and ``basis`` (fitted by the caller, e.g. in a worker) are used when
        the stack has none; otherwise the stack's are kept so colours and similarity
        agree with planes shown before. ``colours[idx]`` = (low-res, full-res) uint8
        RGB from :func:`plane_colours` with that PCA (computed in a worker); planes
        without are coloured here (one 3-channel upsample per plane).
        """
        if not results:
            return
        for idx in results:
            self.geometry.check_index(idx)
        if self.pca is None:
            self.pca = pca if pca is not None else fit_stack_pca(results.values())
        if self.basis is None:
            self.basis = basis if basis is not None else fit_stack_basis(results.values())
        first = next(iter(results.values()))
        grid = tuple(first.lowres.shape[-2:])
        g = self.geometry
        if self.pca_lowres is None:
            stride = int(first.metadata["stride"])
            shown, self.lowres_step = grid_display(np.zeros(grid + (3,), np.uint8), stride, g.size)
            self.pca_lowres = plane_array(g.leading, shown.shape, np.uint8)
            self.pca_full = plane_array(g.leading, g.size + (3,), np.uint8)
            self.similarity = plane_array(g.leading, g.size, np.float32)
        for idx, res in results.items():
            if tuple(res.lowres.shape[-2:]) != grid or res.field is None:
                raise ValueError(
                    f"plane {idx}: features of grid {res.lowres.shape[-2:]} (field: "
                    f"{res.field is not None}) do not fit the stack's grid {grid}"
                )
            res.pca = self.pca
            self.results[idx] = res
            low, full = (colours or {}).get(idx) or plane_colours(res, self.pca)
            self.pca_lowres[idx] = grid_display(low, self.stride, g.size)[0]
            self.pca_full[idx] = full
            self.stale_similarity.add(idx)

    def compact(self, index: Index) -> CompactField:
        """Plane ``index``'s compact field in the stack's basis (built once)."""
        return self.results[index].field.compact(self.basis)

    @property
    def stored_bytes(self) -> int:
        """Memory of the layer arrays and the compact fields (not the features)."""
        arrays = (self.pca_lowres, self.pca_full, self.similarity)
        total = sum(getattr(a, "stored_bytes", getattr(a, "nbytes", 0)) for a in arrays)
        fields = (r.field._compact for r in self.results.values() if r.field is not None)
        return total + sum(c[1].nbytes for c in fields if c is not None)

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
        features at the points (several positives average, negatives subtract), held
        in the stack's basis (:func:`~napari_featup.compact.make_compact_query`).
        Points on planes without features are ignored and returned. With no usable
        positive point the query is cleared (similarity maps become zero).
        """
        pos, bad_pos = self.points_in_planes(positives)
        neg, bad_neg = self.points_in_planes(negatives)
        if not pos:
            self.query = None
        else:
            self.query = make_compact_query(self._terms(pos), self._terms(neg))
        self.stale_similarity = set(self.results)
        return bad_pos + bad_neg

    def _terms(self, pts: list[tuple[Index, tuple[float, float]]]) -> list:
        out = []
        for idx, rc in pts:
            z, r = self.compact(idx).point_terms([rc])
            out.append((z[0], float(r[0])))
        return out

    def update_similarity(self, index: Sequence[int] = ()) -> np.ndarray | None:
        """Compute (if stale) the similarity map of plane ``index``; return it, or None
        when that plane has no features."""
        idx = self.geometry.check_index(index)
        if idx not in self.results or self.similarity is None:
            return None
        if idx in self.stale_similarity:
            sims, bound = compact_similarity(self.compact(idx), self.query)
            self.similarity[idx] = sims
            self.similarity_bound[idx] = bound
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
        if self.basis is not None:
            meta["similarity_basis_rank"] = self.basis.rank
        return {META_KEY: meta}

    def layer_names(self) -> list[str]:
        """Names of this stack's layers, bottom to top: PCA low-res, PCA full-res,
        similarity, similarity mask."""
        return [
            f"{self.image_name} {LOWRES_SUFFIX}",
            pca_name(self.image_name, self.upsampler),
            self.similarity_name,
            f"{self.image_name} {MASK_SUFFIX}",
        ]

    def layer_data(self) -> list[LayerData]:
        """LayerDataTuples of the low-res and full-resolution PCA layers."""
        if self.pca_lowres is None:
            return []
        g = self.geometry
        low_scale, low_translate = grid_transform(self.lowres_step, g.scale, g.translate)
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
        idx = self.geometry.check_index(index)
        plane = self.similarity[idx]
        lo, hi = float(plane.min()), float(plane.max())
        limits = (lo, hi) if hi > lo else (-1.0, 1.0)
        meta = self.layer_metadata("similarity")
        meta[META_KEY]["similarity_error_bound"] = self.similarity_bound.get(idx, 0.0)
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
                metadata=meta,
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
        out = np.zeros(self.geometry.leading + self.geometry.size, np.uint8)
        if self.query is not None:
            for idx in self.results:
                out[idx] = self.similarity[idx] >= float(threshold)
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
                opacity=0.6,
                # one bright colour that stands out on the inferno heatmap and on
                # photos (napari's first label colour is a dark red)
                colormap={None: "transparent", 0: "transparent", 1: MASK_COLOUR},
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


def fit_stack_basis(results: Iterable[FeatureResult]) -> Basis:
    """One basis over the low-res features of several planes, of the size
    :func:`~napari_featup.compact.compact_rank` allows for their image size."""
    results = list(results)
    if not results:
        raise ValueError("no features to fit a basis on")
    first = results[0]
    rank = compact_rank(first.lowres.shape[0], first.field.size)
    return fit_basis([r.field.moment() for r in results], rank)


def fit_stack_pca(results: Iterable[FeatureResult], max_samples: int = 20000) -> PCAProjection:
    """One PCA over the low-res features of several planes (so colours agree)."""
    samples = [r.lowres.reshape(r.lowres.shape[0], -1).T for r in results]
    if not samples:
        raise ValueError("no features to fit a PCA on")
    return fit_pca(np.concatenate(samples, axis=0), max_samples=max_samples)

"""Images too large for in-memory layers: stream into a store, show dask layers (no Qt).

Above :data:`LARGE_PIXELS` a 2-D image with a blockwise upsampler (linear, no per-image
fit) is not run through :func:`~napari_featup.pipeline.iter_extract` (whose guidance
image, PCA and similarity layers and compact field grow with the pixels): the plane is
read lazily tile by tile into a feature store in a temporary folder
(:func:`~napari_featup.to_store.iter_extract_to_store`, what ``napari-featup extract
--store`` runs), and :class:`LargeStack` gives the dock multiscale dask layers whose
chunks are computed when napari shows them (:class:`~napari_featup.lazy.LazyField`):
full-resolution PCA colours and similarity maps upsampled per visible chunk, coarser
levels interpolated from the grid. It answers the calls the dock and the
similarity panel make on a :class:`~.stack.FeatureStack`.
"""

from __future__ import annotations

import atexit
import copy
import shutil
import tempfile
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis import PCAProjection, make_query
from ..io import META_KEY
from ..lazy import LazyField
from ..progress import Progress, relay
from ..source import Prepared, as_source, preprocessing_of
from ..store import FeatureStore, StoredImage, make_signature
from ..to_store import ExtractSettings, iter_extract_to_store, models_for
from ..upsamplers import upsampler_info
from .geometry import Index, PlaneGeometry
from .layer_data import (
    LOWRES_SUFFIX,
    MASK_SUFFIX,
    SIMILARITY_SUFFIX,
    grid_display,
    grid_transform,
    pca_name,
)
from .stack import MASK_COLOUR

#: planes with more pixels than this (4096 x 4096) take the large path
LARGE_PIXELS = 1 << 24
#: side of the dask chunks napari computes (px)
CHUNK = 512
_SETTINGS = set(ExtractSettings.__dataclass_fields__)


def use_large_path(size: Sequence[int], upsampler: Any, leading: Sequence[int] = ()) -> bool:
    """Whether a run over planes of ``size`` (H, W) streams into a store: a 2-D image
    above :data:`LARGE_PIXELS` with an upsampler that can be evaluated per block."""
    h, w = (int(v) for v in size)
    if leading or h * w <= LARGE_PIXELS:
        return False
    try:
        cls = upsampler_info(str(getattr(upsampler, "name", upsampler))).cls
    except Exception:  # noqa: BLE001 - an unknown name fails later with its own message
        return False
    return bool(cls.linear) and not cls.fits_per_image


@dataclass
class LargeRun:
    """What a large run made: the stored image, its intensity mapping, the upsampler
    and the temporary folder holding the store (removed by :meth:`LargeStack.close`)."""

    stored: StoredImage
    prepared: Prepared
    upsampler: Any
    directory: Path


def iter_large_run(
    data: Any, extract: dict, rgb: bool = False, channel_axis: int | None = None
) -> Generator[Progress, None, LargeRun]:
    """Extract a large 2-D image into a store in a new temporary folder; yields progress
    (closing the generator removes the folder), returns a :class:`LargeRun`."""
    kwargs = {k: v for k, v in extract.items() if k in _SETTINGS}
    if kwargs.get("upsampler_options") is None:
        kwargs.pop("upsampler_options", None)
    # the grid and its colours only: full-resolution colours are computed per chunk
    # when napari shows them
    settings = ExtractSettings(rgb=rgb or None, channel_axis=channel_axis, pca="lowres", **kwargs)
    source = as_source(data, rgb=rgb or None, channel_axis=channel_axis)
    directory = Path(tempfile.mkdtemp(prefix="napari-featup-large-"))
    atexit.register(shutil.rmtree, directory, True)  # also when its layer is just deleted
    done = False
    try:
        store = FeatureStore(directory / "features.zarr", mode="a")
        sig = make_signature(settings.signature_settings(), "(a napari layer)", None, ())
        yield from relay(iter_extract_to_store(source, store, "image", settings, sig), 0, 1, 1)
        _, up = models_for(settings)
        prepared = preprocessing_of(
            source,
            channels=settings.channels,
            scaling=settings.scaling,
            contrast_limits=settings.contrast_limits,
            percentiles=tuple(settings.percentiles),
        )
        done = True
        return LargeRun(store["image"], prepared, up, directory)
    finally:
        if not done:
            shutil.rmtree(directory, ignore_errors=True)


class LargeStack:
    """The features of one large 2-D image layer as dask-backed multiscale layers.

    Offers what the dock and the similarity panel use of a
    :class:`~.stack.FeatureStack`: names, metadata, :meth:`layer_data`,
    :meth:`set_query`, :meth:`update_similarity`, :meth:`similarity_layer_data` and
    :meth:`mask_layer_data`; nothing of the image's size is held in memory.
    """

    def __init__(self, image_name: str, geometry: PlaneGeometry, config: dict, run: LargeRun):
        self.image_name, self.geometry, self.config = image_name, geometry, config
        self.stored, self.directory = run.stored, run.directory
        self.results: dict[Index, StoredImage] = {(): run.stored}
        self.pca: PCAProjection | None = run.stored.projection
        device = self.metadata.get("device", "cpu")
        self.lazy = LazyField(
            run.stored.features, run.prepared, run.upsampler, self.stride, device=device
        )
        self.query: np.ndarray | None = None
        self.stale_similarity: set = set()
        self.similarity_bound: dict = {(): 0.0}
        self.basis = None
        self._similarity: list | None = None

    # ------------------------------------------------------------------ facts
    @property
    def metadata(self) -> dict:
        return self.stored.metadata

    @property
    def stride(self) -> int:
        return int(self.metadata["stride"])

    @property
    def upsampler(self) -> str:
        return str(self.metadata.get("upsampler", ""))

    @property
    def similarity_name(self) -> str:
        return f"{self.image_name} {SIMILARITY_SUFFIX}"

    @property
    def stored_bytes(self) -> int:
        """Memory held for the layers: none (they are read or computed per chunk)."""
        return 0

    def layer_names(self) -> list[str]:
        return [
            f"{self.image_name} {LOWRES_SUFFIX}",
            pca_name(self.image_name, self.upsampler),
            self.similarity_name,
            f"{self.image_name} {MASK_SUFFIX}",
        ]

    def layer_metadata(self, kind: str) -> dict:
        meta = copy.deepcopy(self.metadata)
        meta.pop("signature", None)
        meta.update(
            layer=kind,
            source_layer=self.image_name,
            planes=[[]],
            source_scale=list(self.geometry.scale),
            source_translate=list(self.geometry.translate),
            large_image="dask-backed: chunks computed when shown",
        )
        return {META_KEY: meta}

    def close(self) -> None:
        """Remove the temporary store (the layers cannot be shown after this)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    # ----------------------------------------------------------------- layers
    def _place(self) -> dict:
        return dict(scale=list(self.geometry.scale), translate=list(self.geometry.translate))

    def layer_data(self) -> list:
        """The low-res PCA layer (the grid: small) and the full-resolution one, a
        multiscale dask array (level 0 upsampled per chunk, coarser levels interpolated
        from the grid)."""
        g = self.geometry
        low = np.asarray(self.stored.pca_lowres[...])
        shown, step = grid_display(low, self.stride, g.size)
        low_scale, low_translate = grid_transform(step, g.scale, g.translate)
        levels = self.lazy.pyramid("pca", pca=self.pca, chunk=CHUNK)
        common = dict(rgb=True, blending="translucent")
        return [
            (
                shown,
                dict(
                    common,
                    name=self.layer_names()[0],
                    scale=low_scale,
                    translate=low_translate,
                    metadata=self.layer_metadata("pca-lowres"),
                ),
                "image",
            ),
            (
                levels,
                dict(
                    common,
                    name=self.layer_names()[1],
                    multiscale=True,
                    metadata=self.layer_metadata("pca-full"),
                    **self._place(),
                ),
                "image",
            ),
        ]

    # ------------------------------------------------------------- similarity
    def set_query(
        self, positives: Iterable[Sequence[float]], negatives: Iterable[Sequence[float]] = ()
    ) -> list[Sequence[float]]:
        """Query from points in the image's data coordinates (full-resolution features
        at them, as :func:`~napari_featup.analysis.make_query`); returns the points
        outside the image (ignored)."""
        h, w = self.geometry.size
        out: list[Sequence[float]] = []

        def inside(points):
            keep = []
            for p in points:
                r, c = (float(v) for v in list(p)[-2:])
                if -0.5 <= r < h - 0.5 and -0.5 <= c < w - 0.5:
                    keep.append((min(max(r, 0.0), h - 1), min(max(c, 0.0), w - 1)))
                else:
                    out.append(p)
            return keep

        pos, neg = inside(positives), inside(negatives)
        if pos:
            feats_neg = self.lazy.features_at(neg) if neg else None
            self.query = make_query(self.lazy.features_at(pos), feats_neg)
        else:
            self.query = None
        self.stale_similarity = {()}
        return out

    def update_similarity(self, index: Sequence[int] = ()) -> list:
        """The similarity levels for the current query (dask: nothing computed yet)."""
        import dask.array as da

        if () in self.stale_similarity or self._similarity is None:
            if self.query is None:  # zeros, in the pyramid's shapes (napari keeps the layer)
                shapes = [lv.shape[:2] for lv in self.lazy.pyramid("pca", pca=self.pca)]
                self._similarity = [da.zeros(s, chunks=CHUNK, dtype=np.float32) for s in shapes]
            else:
                self._similarity = self.lazy.pyramid("similarity", query=self.query, chunk=CHUNK)
            self.stale_similarity.discard(())
        return self._similarity

    def similarity_layer_data(self, index: Sequence[int] = ()) -> tuple:
        """Multiscale similarity layer; contrast limits from its coarsest level (a few
        hundred pixels, interpolated from the grid)."""
        levels = self.update_similarity(index)
        coarse = np.asarray(levels[-1])
        lo, hi = float(coarse.min()), float(coarse.max())
        meta = self.layer_metadata("similarity")
        meta[META_KEY]["similarity_error_bound"] = 0.0
        return (
            levels,
            dict(
                name=self.similarity_name,
                multiscale=len(levels) > 1,
                colormap="inferno",
                contrast_limits=(lo, hi) if hi > lo else (-1.0, 1.0),
                opacity=0.8,
                blending="translucent",
                metadata=meta,
                **self._place(),
            ),
            "image",
        )

    def mask_layer_data(self, threshold: float) -> tuple:
        """Labels layer (1 where similarity >= ``threshold``), per chunk like the map."""
        if self.query is None:
            raise ValueError("no similarity map yet: add a query point first")
        levels = [(lv >= float(threshold)).astype(np.uint8) for lv in self.update_similarity()]
        meta = self.layer_metadata("similarity-mask")
        meta[META_KEY]["threshold"] = float(threshold)
        return (
            levels if len(levels) > 1 else levels[0],
            dict(
                name=self.layer_names()[3],
                multiscale=len(levels) > 1,
                metadata=meta,
                opacity=0.6,
                colormap={None: "transparent", 0: "transparent", 1: MASK_COLOUR},
                **self._place(),
            ),
            "labels",
        )

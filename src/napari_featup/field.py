"""Cheap full-resolution views of one image's features, for interaction.

A :class:`FeatureField` keeps the low-res features, the guidance image and the
upsampler. For channel-linear upsamplers it computes the upsampling kernels once and
answers PCA colours and similarity queries as 3- or 1-channel upsamples of low-res
projections; the per-pixel feature norms (not linear) are computed once, in tiles.
Attention upsamplers (``content_linear``: weights from the image and all channels,
applied to the low-res values) are used the same way through their
``content_kernels`` when these fit ``kernel_budget_bytes``.
Other upsamplers are evaluated once, in row tiles, and kept (float32 up to 512 MB,
else float16); those whose output is an affine map of fewer per-pixel factors
(``Upsampler.factors``, e.g. FeatUp's implicit model: 128 PCA coordinates for 384
channels) keep only the factors, and queries are mapped through the affine map.

For clicks, :meth:`FeatureField.compact` evaluates the field once into a
:class:`~napari_featup.compact.CompactField` (coordinates in a basis of at most a
budget's size, exact norms and residuals): a query then costs a P-channel dot product
with a stated error bound, for every upsampler alike (zero bound when P = C).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .analysis import PCAProjection, cosine_from_dots, make_query, unit_queries
from .compact import Basis, CompactField, compact_rank, fit_basis
from .upsamplers.base import Kernels, Upsampler


def rows_per_tile(channels: int, width: int, budget_bytes: int = 256 << 20) -> int:
    """Output rows per tile so a (channels, rows, width) float32 tile and its
    temporaries stay within ``budget_bytes``."""
    return max(1, int(budget_bytes // (4 * 4 * max(1, channels) * max(1, width))))


class FeatureField:
    """Full-resolution access to features of one image.

    ``lowres`` (1, C, h, w) tensor (after any channel norm), ``image`` (1, 3, Hp, Wp)
    the normalised, padded guidance, ``size`` (H, W) the unpadded image size. All
    outputs are cropped to ``size``.
    """

    def __init__(
        self,
        lowres: torch.Tensor,
        image: torch.Tensor,
        upsampler: Upsampler,
        size: tuple[int, int],
        tile_budget_bytes: int = 256 << 20,
        dense_dtype: torch.dtype | None = None,
        dense_float32_bytes: int = 512 << 20,
        kernel_budget_bytes: int = 1 << 30,
    ):
        self.lowres = lowres
        self.image = image
        self.upsampler = upsampler
        self.size = (int(size[0]), int(size[1]))
        self.tile_budget_bytes = tile_budget_bytes
        # None: float32 while the dense store fits dense_float32_bytes (a click then
        # reads it directly; converting float16 cost more than the product), else float16
        self.dense_dtype = dense_dtype
        self.dense_float32_bytes = int(dense_float32_bytes)
        self.kernel_budget_bytes = int(kernel_budget_bytes)
        self._kernels: Kernels | None = None
        self._no_kernels = False  # content kernels asked for and not available
        self._dense: torch.Tensor | None = None  # (C or P, H, W), float32 or float16
        self._affine: tuple[torch.Tensor, torch.Tensor] | None = None  # A (C, P), m (C,)
        self._norms: torch.Tensor | None = None
        self._compact: tuple[object, CompactField] | None = None  # (basis, its form)

    @property
    def channels(self) -> int:
        """Feature channels C."""
        return int(self.lowres.shape[1])

    @property
    def linear(self) -> bool:
        """Projections go through reusable kernels (channel-linear upsamplers, and
        content-linear ones whose kernels fit the budget)."""
        if self.upsampler.linear:
            return True
        return bool(self.upsampler.content_linear) and self.kernels is not None

    @property
    def kernels(self) -> Kernels | None:
        """The upsampler's kernels for this image, computed once: channel-linear
        upsamplers' own, content-linear ones' attention weights (None when they do not
        fit ``kernel_budget_bytes``)."""
        if self._kernels is None and not self._no_kernels:
            up = self.upsampler
            with torch.inference_mode():
                if up.linear:
                    self._kernels = up.kernels(self.image, tuple(self.lowres.shape[-2:]))
                else:
                    self._kernels = up.content_kernels(
                        self.lowres, self.image, self.kernel_budget_bytes
                    )
                    self._no_kernels = self._kernels is None
        return self._kernels

    def tile_rows(self, channels: int | None = None) -> int:
        """Output rows per tile for ``channels`` (default C) within the tile budget."""
        return rows_per_tile(
            channels or self.channels, self.image.shape[-1], self.tile_budget_bytes
        )

    @torch.inference_mode()
    def _ensure_dense(self) -> torch.Tensor:
        """The non-linear upsampler's output (or its factors), evaluated once in tiles."""
        if self._dense is None:
            (h, w), up = self.size, self.upsampler
            # an upsampler that cannot evaluate a band exactly is evaluated in one piece
            tiled = up.tileable
            dense = None
            for rows in self.iter_tiles() if tiled else [slice(0, h)]:
                fac = up.factors(self.lowres, self.image, rows)
                if fac is None:
                    t = up.upsample(self.lowres, self.image, rows)
                else:
                    t, a, m = fac
                    self._affine = (a.float(), m.float())
                if dense is None:
                    dtype = self.dense_dtype
                    if dtype is None:
                        small = 4 * t.shape[1] * h * w <= self.dense_float32_bytes
                        dtype = torch.float32 if small else torch.float16
                    dense = torch.empty((t.shape[1], h, w), dtype=dtype, device=t.device)
                dense[:, rows] = t[0, :, :, :w].to(dense.dtype)
            self._dense = dense
        return self._dense

    def _dense_rows(self, rows: slice) -> torch.Tensor:
        """(C, R, W) float32 features of ``rows`` from the dense store."""
        t = self._ensure_dense()[:, rows].float()
        if self._affine is None:
            return t
        a, m = self._affine
        return torch.einsum("cp,prw->crw", a, t) + m[:, None, None]

    @torch.inference_mode()
    def highres_rows(self, rows: slice) -> torch.Tensor:
        """Features of output ``rows``: (C, R, W) float32 on the compute device."""
        if self.linear:
            return self.kernels(self.lowres, rows)[0, :, :, : self.size[1]].float()
        return self._dense_rows(rows)

    def iter_tiles(self, channels: int | None = None) -> Iterator[slice]:
        """Row slices covering the image, each within the tile budget."""
        step = self.tile_rows(channels)
        for r0 in range(0, self.size[0], step):
            yield slice(r0, min(self.size[0], r0 + step))

    @torch.inference_mode()
    def project(
        self, weight: np.ndarray | torch.Tensor, bias: np.ndarray | torch.Tensor | None = None
    ) -> np.ndarray:
        """``weight @ f + bias`` at every pixel: (K, C), (K,) -> (K, H, W) float32."""
        w = torch.as_tensor(np.asarray(weight, dtype=np.float32), device=self.lowres.device)
        b = (
            None
            if bias is None
            else torch.as_tensor(np.asarray(bias, dtype=np.float32), device=self.lowres.device)
        )
        out = np.empty((w.shape[0],) + self.size, np.float32)
        for rows in self.iter_tiles(w.shape[0]):
            if self.linear:
                t = self.kernels.project(self.lowres, w, b, rows)[0, :, :, : self.size[1]]
            else:
                dense = self._ensure_dense()
                wk, bk = w, b
                if self._affine is not None:  # w (A z + m) + b = (w A) z + (w m + b)
                    a, m = self._affine
                    wk = w @ a
                    bk = w @ m if b is None else w @ m + b
                t = torch.einsum("kc,chw->khw", wk, dense[:, rows].float())
                if bk is not None:
                    t = t + bk[:, None, None]
            out[:, rows] = t.float().cpu().numpy()
        return out

    @torch.inference_mode()
    def norms(self) -> np.ndarray:
        """Per-pixel feature norm (H, W), computed once in tiles and cached."""
        if self._norms is None:
            parts = [
                torch.linalg.vector_norm(self.highres_rows(r), dim=0) for r in self.iter_tiles()
            ]
            self._norms = torch.cat(parts, dim=0)
        return self._norms.cpu().numpy()

    @torch.inference_mode()
    def features_at(self, points: Sequence[tuple[float, float]]) -> np.ndarray:
        """Full-resolution features at (row, col) pixels -> (N, C) float32."""
        out = np.zeros((len(points), self.channels), np.float32)
        for i, (r, c) in enumerate(points):
            ri, ci = self._check_point(r, c)
            out[i] = self.highres_rows(slice(ri, ri + 1))[:, 0, ci].cpu().numpy()
        return out

    def _check_point(self, r: float, c: float) -> tuple[int, int]:
        ri, ci = int(round(float(r))), int(round(float(c)))
        if not (0 <= ri < self.size[0] and 0 <= ci < self.size[1]):
            raise ValueError(
                f"point ({r}, {c}) lies outside the {self.size[0]} x {self.size[1]} image"
            )
        return ri, ci

    def similarity(
        self,
        positives: Sequence[tuple[float, float]] = (),
        negatives: Sequence[tuple[float, float]] = (),
        *,
        queries: np.ndarray | None = None,
    ) -> np.ndarray:
        """Cosine similarity (H, W) of every pixel to the query made at the points, or,
        given ``queries`` instead (N, C) (e.g. :func:`~napari_featup.text.encode_text`),
        (N, H, W): :meth:`query_similarity`, at the cost of N clicks."""
        if queries is not None:
            if len(positives) or len(negatives):
                raise ValueError("give query points or query vectors, not both")
            return self.query_similarity(np.atleast_2d(queries))
        pos = self.features_at(positives)
        neg = self.features_at(negatives) if len(negatives) else None
        return self.query_similarity(make_query(pos, neg))

    def query_similarity(self, queries: np.ndarray) -> np.ndarray:
        """Cosine similarity of every pixel to query vectors: (C,) -> (H, W), or
        (N, C) -> (N, H, W). One N-channel projection (a click's cost per query)."""
        q = unit_queries(queries, self.channels)
        sims = cosine_from_dots(self.project(q), self.norms()[None])
        return sims[0] if np.ndim(queries) == 1 else sims

    def pca_rgb(self, pca: PCAProjection) -> np.ndarray:
        """(H, W, K) colours of the full-resolution features under ``pca``."""
        w, b = pca.weight_bias()
        return pca.colorize(self.project(w, b))

    @torch.inference_mode()
    def moment(self, max_rows: int = 64) -> np.ndarray:
        """Second moment E[f f^T] (C, C) float64 of the full-resolution features, to fit
        a basis on. A channel-linear upsampler mixes low-res features (then applies its
        per-pixel affine map, :attr:`Kernels.affine`), so the low-res cells stand for
        the field; other fields are sampled on ``max_rows`` evenly spaced rows."""
        if self.linear:
            f = self.lowres[0].reshape(self.channels, -1).double()
            affine = self.kernels.affine
            if affine is not None:
                a, b = (t.to(f.device, torch.float64) for t in affine)
                f = a @ f + b[:, None]
        else:
            step = max(1, self.size[0] // max_rows)
            f = self._dense_rows(slice(0, self.size[0], step)).double()
            f = f.reshape(f.shape[0], -1)
        return (f @ f.T / max(1, f.shape[1])).cpu().numpy()

    def compact(self, basis: Basis | None = None) -> CompactField:
        """The field's :class:`~napari_featup.compact.CompactField` in ``basis`` (by
        default one of :func:`~napari_featup.compact.compact_rank` directions fitted on
        this field's low-res features), evaluated once in row tiles and kept; the exact
        norms it computes also serve :meth:`norms`."""
        if self._compact is not None and (basis is None or basis is self._compact[0]):
            return self._compact[1]
        if basis is None:
            basis = fit_basis([self.moment()], compact_rank(self.channels, self.size))
        form = CompactField.from_field(self, basis)
        self._compact = (basis, form)
        if self._norms is None:
            self._norms = form.norms
        return form

"""A compact form of a full-resolution feature field that answers similarity clicks fast.

A click asks for the cosine similarity of every pixel's feature F(p) (C-d) to a query.
Computed through the upsampler that costs a full upsample per click (a learned one
takes seconds at 1024 x 1024); from stored features, C values per pixel. A
:class:`CompactField` keeps, per pixel, the P coordinates Z(p) = B^T F(p) of the
field in an orthonormal basis B (C x P, shared by the planes of a stack, fitted on
their low-res features), the exact norm n(p) = |F(p)| and the exact relative residual
rho(p) = |F(p) - B Z(p)| / n(p). A click is then a P-channel dot product, whatever
the upsampler and C. With P = C (small images) B is the identity and all is exact;
otherwise the error is bounded (Cauchy-Schwarz) and every result says by how much:

- the query from points p_i with weights c_i (+1/N positives, -1/M negatives) is
  q = sum c_i F(p_i)/n(p_i); its coordinates B^T q are exact, its part outside the
  basis q_perp has |q_perp| <= e_q = sum |c_i| rho(p_i);
- q . F(p) = (B^T q) . Z(p) + q_perp . R(p) and |q_perp . R(p)| <= e_q rho(p) n(p);
- |q|^2 = |B^T q|^2 + sum c_i^2 rho_i^2 + (cross terms, bounded by the same rhos).

:func:`similarity` returns the map and the largest possible error over the map.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: bytes of per-pixel coordinates kept per plane: P = budget / (4 H W), so a click
#: reads about this much (~25 ms on one CPU core), whatever C and the upsampler
COMPACT_BUDGET_BYTES = 128 << 20
MIN_RANK = 8
#: float32 rounding of n^2 - |Z|^2, relative to n^2 per channel (added to rho^2 so the
#: bound holds after rounding)
_ROUNDING = 2.0 * float(np.finfo(np.float32).eps)


def compact_rank(
    channels: int,
    size: Sequence[int],
    budget_bytes: int = COMPACT_BUDGET_BYTES,
    min_rank: int = MIN_RANK,
) -> int:
    """Basis size P for a (channels, H, W) field: as many as ``budget_bytes`` of
    float32 coordinates allow, at least ``min_rank``, at most ``channels``."""
    per_channel = 4 * int(size[0]) * int(size[1])
    return int(min(channels, max(min_rank, budget_bytes // max(1, per_channel))))


@dataclass(eq=False)
class Basis:
    """An orthonormal basis (C, P) of feature space, or None for the identity (exact)."""

    matrix: np.ndarray | None
    channels: int

    @property
    def rank(self) -> int:
        return self.channels if self.matrix is None else int(self.matrix.shape[1])

    @property
    def exact(self) -> bool:
        return self.matrix is None


def fit_basis(moments: Iterable[np.ndarray], rank: int) -> Basis:
    """The ``rank`` leading directions of feature fields, from their (C, C) second
    moments E[f f^T] (:meth:`~napari_featup.field.FeatureField.moment`; summed over
    the planes of a stack). Uncentred, so the mean direction that every feature
    shares is in the basis; ``rank >= C`` gives the identity.
    """
    mats = [np.asarray(m, np.float64) for m in moments]
    if not mats:
        raise ValueError("no features to fit a basis on")
    c = mats[0].shape[0]
    if rank >= c:
        return Basis(None, c)
    _, vecs = np.linalg.eigh(sum(mats))  # ascending eigenvalues
    return Basis(np.ascontiguousarray(vecs[:, ::-1][:, :rank], dtype=np.float32), c)


@dataclass
class CompactQuery:
    """A similarity query in a basis: unit-scaled coordinates and error terms."""

    coords: np.ndarray  # (P,) B^T q / |q|_est
    norm: float  # |q| estimate
    norm_low: float  # bounds on |q|
    norm_high: float
    residual: float  # e_q >= |q_perp|


@dataclass
class CompactField:
    """Per-pixel coordinates ``coeffs`` (P, H, W) in ``basis``, exact ``norms`` (H, W)
    and relative residuals ``residual`` (H, W) of one plane's full-resolution field."""

    basis: Basis
    coeffs: torch.Tensor
    norms: torch.Tensor
    residual: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.norms.shape)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.coeffs, self.norms, self.residual))

    def inverse_norms(self) -> np.ndarray:
        """1 / n(p) (H, W) as numpy (0 where the feature is zero), computed once."""
        if not hasattr(self, "_inverse_norms"):
            n = self.norms.cpu().numpy()
            self._inverse_norms = np.divide(1.0, n, out=np.zeros_like(n), where=n > 1e-12)
        return self._inverse_norms

    @property
    def max_residual(self) -> float:
        """Largest relative residual over the plane (0 when exact)."""
        if not hasattr(self, "_max_residual"):
            self._max_residual = float(self.residual.max()) if self.residual.numel() else 0.0
        return self._max_residual

    @classmethod
    @torch.inference_mode()
    def from_field(cls, field: Any, basis: Basis) -> CompactField:
        """Evaluate ``field`` (a :class:`~napari_featup.field.FeatureField`) once, in
        row tiles, into its coordinates in ``basis``."""
        h, w = field.size
        dev = field.lowres.device
        b = None if basis.exact else torch.as_tensor(basis.matrix, device=dev)
        coeffs = torch.empty((basis.rank, h, w), dtype=torch.float32, device=dev)
        norms = torch.empty((h, w), dtype=torch.float32, device=dev)
        residual = torch.zeros((h, w), dtype=torch.float32, device=dev)
        for rows in field.iter_tiles():
            f = field.highres_rows(rows)  # (C, R, W) exact, float32
            n2 = torch.einsum("crw,crw->rw", f, f)
            norms[rows] = n2.sqrt()
            if b is None:
                coeffs[:, rows] = f
                continue
            z = torch.einsum("cp,crw->prw", b, f)
            coeffs[:, rows] = z
            r2 = (n2 - torch.einsum("prw,prw->rw", z, z)).clamp_min(0)
            r2 += _ROUNDING * basis.channels * n2
            residual[rows] = (r2 / n2.clamp_min(1e-30)).sqrt().clamp_max(1.0)
        return cls(basis, coeffs, norms, residual)

    def point_terms(self, points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
        """(N, P) coordinates of the unit features at (row, col) pixels and their (N,)
        relative residuals."""
        h, w = self.size
        zs, rs = [], []
        for r, c in points:
            ri, ci = int(round(float(r))), int(round(float(c)))
            if not (0 <= ri < h and 0 <= ci < w):
                raise ValueError(f"point ({r}, {c}) lies outside the {h} x {w} image")
            n = float(self.norms[ri, ci])
            z = self.coeffs[:, ri, ci].double().cpu().numpy()
            zs.append(z / n if n > 0 else np.zeros_like(z))
            rs.append(float(self.residual[ri, ci]) if n > 0 else 0.0)
        return np.asarray(zs).reshape(len(points), self.basis.rank), np.asarray(rs)

    def query(
        self,
        positives: Sequence[tuple[float, float]],
        negatives: Sequence[tuple[float, float]] = (),
    ) -> CompactQuery:
        """The query made at (row, col) points of this plane (see
        :func:`make_compact_query`)."""
        pos = list(zip(*self.point_terms(positives))) if len(positives) else []
        neg = list(zip(*self.point_terms(negatives))) if len(negatives) else []
        return make_compact_query(pos, neg)


def make_compact_query(
    positives: Sequence[tuple[np.ndarray, float]],
    negatives: Sequence[tuple[np.ndarray, float]] = (),
) -> CompactQuery:
    """The query of :func:`napari_featup.analysis.make_query` (mean positive unit
    feature minus mean negative one) from each point's (coordinates, residual)."""
    if not positives:
        raise ValueError("a similarity query needs at least one positive point")
    terms = [(z, r, 1.0 / len(positives)) for z, r in positives]
    terms += [(z, r, -1.0 / len(negatives)) for z, r in negatives]
    qb = sum(c * np.asarray(z, np.float64) for z, _, c in terms)
    e_q = sum(abs(c) * r for _, r, c in terms)
    own = sum((c * r) ** 2 for _, r, c in terms)
    cross = e_q**2 - own  # bound on the unknown residual cross terms
    base = float(qb @ qb)
    est = math.sqrt(base + own)
    low = math.sqrt(max(base, base + own - cross))
    high = math.sqrt(base + own + cross)
    coords = qb / est if est > 0 else np.zeros_like(qb)
    return CompactQuery(coords.astype(np.float32), est, low, high, float(e_q))


def vector_query(basis: Basis, vector: np.ndarray) -> CompactQuery:
    """A query given as a (C,) vector (a text embedding) in ``basis``.

    Unlike a click's, the vector is known exactly: its coordinates are B^T q / |q| and
    its part outside the basis has norm exactly sqrt(1 - |B^T q|^2 / |q|^2), so the map's
    error is at most that times the plane's largest relative residual.
    """
    q = np.asarray(vector, np.float64).ravel()
    if q.shape[0] != basis.channels:
        raise ValueError(f"a {q.shape[0]}-d query for {basis.channels}-d features")
    n = float(np.linalg.norm(q))
    if n == 0:
        return CompactQuery(np.zeros(basis.rank, np.float32), 0.0, 0.0, 0.0, 0.0)
    q = q / n
    coords = q if basis.exact else basis.matrix.T.astype(np.float64) @ q
    outside = 0.0 if basis.exact else math.sqrt(max(0.0, 1.0 - float(coords @ coords)))
    return CompactQuery(coords.astype(np.float32), 1.0, 1.0, 1.0, outside)


@torch.inference_mode()
def vector_similarities(
    field: CompactField, queries: Sequence[CompactQuery]
) -> tuple[np.ndarray, list[float]]:
    """(N, H, W) cosine maps of exact vector queries (:func:`vector_query`: unit norm)
    from one pass over the coordinates (a GEMM), and each map's largest error."""
    p = field.coeffs.shape[0]
    coords = np.stack([q.coords for q in queries]).astype(np.float32)
    qt = torch.as_tensor(coords, device=field.coeffs.device)
    sims = (qt @ field.coeffs.view(p, -1)).view((len(queries),) + field.size).cpu().numpy()
    sims *= field.inverse_norms()[None]
    bounds = [0.0 if field.basis.exact else q.residual * field.max_residual for q in queries]
    return sims, bounds


@torch.inference_mode()
def similarity(field: CompactField, query: CompactQuery | None) -> tuple[np.ndarray, float]:
    """Cosine similarity (H, W) of every pixel to ``query`` and the largest error it
    can have (0 when exact); zeros for no query."""
    if query is None or query.norm == 0:
        return np.zeros(field.size, np.float32), 0.0
    p = field.coeffs.shape[0]
    q = torch.as_tensor(query.coords, device=field.coeffs.device)[None]
    # one GEMV (the only step that reads P values per pixel); the per-pixel steps run
    # in numpy, single-threaded: torch's thread pool costs more than 1M divisions
    sims = (q @ field.coeffs.view(p, -1)).view(field.size).cpu().numpy()
    sims *= field.inverse_norms()
    if field.basis.exact:
        return sims, 0.0
    # |s| * |1/|q| - 1/est| * est for the normalisation, e_q rho / |q| for the dots
    est, low = query.norm, max(query.norm_low, 1e-12)
    scale = est * max(1 / low - 1 / est, 1 / est - 1 / query.norm_high)
    top = max(float(sims.max()), -float(sims.min()))
    bound = top * scale + query.residual * field.max_residual / low
    return sims, float(bound)

"""PCA colouring and cosine similarity of feature maps (numpy in, numpy out).

Feature maps are channel-first: (C, H, W). A PCA is fitted once (on a subsample of
the low-res features) and applied unchanged to low-res and full-res maps, with colour
limits taken from percentiles of the fitted projection, so colours agree between maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class PCAProjection:
    """A fitted projection of C-d features to K components, with colour limits.

    Parameters
    ----------
    components : numpy.ndarray
        (K, C) unit principal directions.
    mean : numpy.ndarray
        (C,) mean feature.
    low, high : numpy.ndarray
        (K,) projection values mapped to 0 and 1 for display.
    explained_variance_ratio : numpy.ndarray
        (K,) share of the variance along each component.
    """

    components: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    explained_variance_ratio: np.ndarray

    @property
    def n_components(self) -> int:
        """Number of components K."""
        return self.components.shape[0]

    def weight_bias(self) -> tuple[np.ndarray, np.ndarray]:
        """(W (K, C), b (K,)) with ``transform(f) = W @ f + b`` at every pixel."""
        return self.components, -(self.components @ self.mean)

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Project (C, ...) features to (K, ...) components."""
        features = np.asarray(features)
        c = features.shape[0]
        if c != self.components.shape[1]:
            raise ValueError(
                f"features have {c} channels; this PCA was fitted on {self.components.shape[1]}"
            )
        w, b = self.weight_bias()
        flat = features.reshape(c, -1).astype(np.float32, copy=False)
        out = w @ flat + b[:, None]
        return out.reshape((self.n_components,) + features.shape[1:])

    def colorize(self, projected: np.ndarray) -> np.ndarray:
        """(K, H, W) components -> (H, W, K) float32 in [0, 1] with the fitted limits."""
        span = np.where(self.high > self.low, self.high - self.low, 1.0)
        scaled = (
            np.asarray(projected, dtype=np.float32) - self.low.reshape(-1, 1, 1)
        ) / span.reshape(-1, 1, 1)
        return np.clip(np.moveaxis(scaled, 0, -1), 0.0, 1.0).astype(np.float32)

    def to_rgb(self, features: np.ndarray) -> np.ndarray:
        """(C, H, W) features -> (H, W, K) colours."""
        return self.colorize(self.transform(features))

    def to_dict(self) -> dict:
        """Plain values (lists) for metadata; :meth:`from_dict` reads them back."""
        return {k: np.asarray(v).tolist() for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> PCAProjection:
        """Inverse of :meth:`to_dict` (e.g. a PCA stored in a feature file's metadata)."""
        return cls(**{k: np.asarray(v, dtype=np.float32) for k, v in d.items()})


def fit_pca(
    features: np.ndarray,
    n_components: int = 3,
    max_samples: int = 20000,
    percentiles: tuple[float, float] = (1.0, 99.0),
    seed: int = 0,
) -> PCAProjection:
    """Fit a PCA to (C, h, w) or (N, C) features.

    Parameters
    ----------
    features : numpy.ndarray
        (C, h, w) map or (N, C) feature vectors.
    n_components : int
        K components kept (padded with zero components when C < K).
    max_samples : int
        At most this many feature vectors, chosen at random with ``seed``, are fitted.
    percentiles : tuple of float
        Colour limits: these percentiles of the fitted samples' projections (robust to a
        few extreme pixels).
    seed : int
        Seed of the sample choice.

    Returns
    -------
    PCAProjection
    """
    from sklearn.decomposition import PCA

    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim == 3:
        samples = feats.reshape(feats.shape[0], -1).T
    elif feats.ndim == 2:
        samples = feats
    else:
        raise ValueError(f"expected (C, h, w) or (N, C) features, got shape {feats.shape}")
    if not np.isfinite(samples).all():
        raise ValueError("features contain NaN or infinite values")
    n, c = samples.shape
    k = min(n_components, c, n)
    if k < 1:
        raise ValueError(f"cannot fit a PCA to {n} samples of {c} channels")
    if n > max_samples:
        idx = np.random.default_rng(seed).choice(n, max_samples, replace=False)
        samples = samples[idx]
    if n < 2 or not np.any(samples != samples[:1]):
        # constant features (or one sample): no direction varies. sklearn would divide
        # by the zero total variance (NaN ratios); every pixel gets the same colour.
        return PCAProjection(
            components=np.zeros((n_components, c), np.float32),
            mean=samples.mean(axis=0, dtype=np.float64).astype(np.float32),
            low=np.zeros(n_components, np.float32),
            high=np.zeros(n_components, np.float32),
            explained_variance_ratio=np.zeros(n_components, np.float32),
        )
    pca = PCA(n_components=k, svd_solver="full" if c <= 64 else "randomized", random_state=seed)
    proj = pca.fit_transform(samples).T  # (k, n)
    comps = pca.components_.astype(np.float32)
    # Fix each component's sign (largest loading positive) so colours are stable.
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    signs[signs == 0] = 1
    comps *= signs[:, None]
    proj *= signs[:, None]
    if k < n_components:  # fewer channels than colours: pad with zero components
        pad = n_components - k
        comps = np.vstack([comps, np.zeros((pad, c), np.float32)])
        proj = np.vstack([proj, np.zeros((pad, proj.shape[1]))])
    evr = np.zeros(n_components, np.float32)
    evr[:k] = pca.explained_variance_ratio_
    low, high = np.percentile(proj, percentiles, axis=1)
    return PCAProjection(
        components=comps,
        mean=pca.mean_.astype(np.float32),
        low=low.astype(np.float32),
        high=high.astype(np.float32),
        explained_variance_ratio=evr,
    )


def make_query(positives: np.ndarray, negatives: np.ndarray | None = None) -> np.ndarray:
    """A query direction from positive and optional negative features.

    Each feature is unit-normalised; the query is the mean positive direction minus
    the mean negative one, so negatives push their look-alikes down the similarity.

    Parameters
    ----------
    positives : numpy.ndarray
        (N, C) features of the clicked points.
    negatives : numpy.ndarray, optional
        (M, C) features of points to push down.

    Returns
    -------
    numpy.ndarray
        (C,) float32 query.
    """
    pos = _unit(np.atleast_2d(np.asarray(positives, dtype=np.float32)))
    if pos.shape[0] == 0:
        raise ValueError("a similarity query needs at least one positive point")
    q = pos.mean(axis=0)
    if negatives is not None and len(negatives):
        neg = _unit(np.atleast_2d(np.asarray(negatives, dtype=np.float32)))
        q = q - neg.mean(axis=0)
    return q


def _unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def unit_queries(queries: np.ndarray, channels: int) -> np.ndarray:
    """(N, C) or (C,) query vectors -> (N, C) float32 unit vectors (zero rows stay zero).

    Raises ValueError when the channel count is not ``channels``.
    """
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if q.ndim != 2 or q.shape[1] != channels:
        raise ValueError(f"queries have {q.shape[-1]} channels, features have {channels}")
    return _unit(q).astype(np.float32)


def cosine_from_dots(dots: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Cosine similarity from dot products with unit queries and per-pixel feature norms
    (broadcast); pixels with zero features get 0."""
    return (np.asarray(dots) / np.maximum(norms, 1e-12)).astype(np.float32)


def cosine_similarity(
    features: np.ndarray, query: np.ndarray, norms: np.ndarray | None = None
) -> np.ndarray:
    """Cosine similarity of every pixel of (C, ...) features to a (C,) query.

    Parameters
    ----------
    features : numpy.ndarray
        (C, ...) features, channels first.
    query : numpy.ndarray
        (C,) query direction (need not be unit length).
    norms : numpy.ndarray, optional
        (...) per-pixel feature norms, when already known.

    Returns
    -------
    numpy.ndarray
        (...) float32 similarity in [-1, 1]; 0 where a feature (or the query) is zero.
    """
    features = np.asarray(features, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32).ravel()
    if q.shape[0] != features.shape[0]:
        raise ValueError(f"query has {q.shape[0]} channels, features have {features.shape[0]}")
    dots = np.tensordot(unit_queries(q, q.shape[0])[0], features, axes=(0, 0))
    if norms is None:
        norms = np.sqrt(np.einsum("c...,c...->...", features, features))
    return cosine_from_dots(dots, norms)


def similarity_to_points(
    features: np.ndarray,
    positives: Sequence[tuple[int, int]],
    negatives: Sequence[tuple[int, int]] = (),
) -> np.ndarray:
    """Cosine similarity of (C, H, W) features to the query made at (row, col) points.

    The dense reference: :meth:`~napari_featup.field.FeatureField.similarity` gives the
    same without materialising the features."""
    pos = (
        np.stack([features[:, r, c] for r, c in positives])
        if positives
        else np.zeros((0, features.shape[0]))
    )
    neg = np.stack([features[:, r, c] for r, c in negatives]) if negatives else None
    return cosine_similarity(features, make_query(pos, neg))

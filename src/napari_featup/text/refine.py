"""Exact text maps to replace the fast ones (no Qt, no napari import).

:class:`~napari_featup.text.StackText` answers prompts at once from a plane's compact
field, with a stated error (``bounds``). This module makes those maps exact afterwards:
:func:`plan_refinement` takes, on the caller's thread, what the exact maps of one plane
need (the plane's features and the embeddings of the prompts whose map is not exact);
:func:`exact_maps` computes them the library's and the command line's way
(:func:`~napari_featup.text.text_similarity`: ``FeatureField.query_similarity`` on the
full-resolution field, one projection for all of them), which may run in a worker
thread; :func:`apply_refinement` writes them over the fast maps, with bound 0, unless
the query or the plane's features changed meanwhile (then nothing is written).
:func:`refine_plane` does the three in a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .queries import StackText, text_similarity


@dataclass(frozen=True)
class Refinement:
    """What the exact maps of plane ``plane`` of ``text`` need: the prompts (indices
    into ``text.prompts``) whose map there is not exact, their embeddings, and the
    plane's features as they were when it was planned."""

    text: StackText
    plane: tuple[int, ...]
    prompts: tuple[int, ...]
    embeddings: np.ndarray
    result: Any

    def current(self) -> bool:
        """Whether the plane still has the features these maps would be exact for."""
        return self.text.stack.results.get(self.plane) is self.result


def plan_refinement(text: StackText, plane: tuple[int, ...] = ()) -> Refinement | None:
    """The refinement of plane ``plane``'s computed maps, or None when there is
    nothing to refine: maps already exact (bilinear features, a complete basis, or
    refined before), none computed, or features without a field."""
    idx = text.stack.geometry.check_index(plane)
    result = text.stack.results.get(idx)
    if result is None or getattr(result, "field", None) is None:
        return None
    todo = tuple(
        i
        for i, (done, bounds) in enumerate(zip(text.done, text.bounds))
        if idx in done and bounds.get(idx, 0.0) > 0.0
    )
    if not todo:
        return None
    emb = np.array(text.embeddings[list(todo)], np.float32)  # a copy: the worker's own
    return Refinement(text, idx, todo, emb, result)


def exact_maps(refinement: Refinement) -> np.ndarray:
    """(K, H, W) exact cosine maps of the refinement's K prompts on its plane (the
    library's path; safe to run in a worker thread: it reads the plane's feature field
    and writes nothing shared but the field's own caches)."""
    return text_similarity(refinement.result, refinement.embeddings)


def apply_refinement(refinement: Refinement, maps: np.ndarray) -> bool:
    """Write ``maps`` (from :func:`exact_maps`) over the fast maps and record them as
    exact (bound 0); False, and nothing written, when the plane's features changed
    since the refinement was planned."""
    text = refinement.text
    if not refinement.current():
        return False
    maps = np.asarray(maps, np.float32)
    for k, i in enumerate(refinement.prompts):
        text.maps[(i,) + refinement.plane] = maps[k]
        text.done[i].add(refinement.plane)
        text.bounds[i][refinement.plane] = 0.0
    return True


def refine_plane(text: StackText, plane: tuple[int, ...] = ()) -> bool:
    """Make plane ``plane``'s computed maps exact, here and now; whether any changed."""
    ref = plan_refinement(text, plane)
    return ref is not None and apply_refinement(ref, exact_maps(ref))

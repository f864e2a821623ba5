"""Text queries against computed features (no Qt, no napari import).

A text query is a similarity query whose vectors come from the text tower instead of
clicked pixels. The library and the command line answer it exactly:
``FeatureField.query_similarity`` answers N prompts with one N-channel projection (for
linear upsamplers a low-res projection upsampled with the cached kernels) over the
per-pixel norms. The plugin (:class:`StackText`) answers it as it answers clicks, from
the plane's compact field (:mod:`napari_featup.compact`): one pass over its coordinates
for all prompts whatever the upsampler, with the largest error it can have recorded per
map (0 when the basis is complete; else the text vector's part outside the basis times
the plane's largest relative residual); bilinear features, whose exact projection is a
1-channel resize, are answered exactly.

Features made with FeatUp's channel norm (``use_norm``) are centred per pixel, so their
mean direction is gone; a text vector is centred the same way before the cosine
(:func:`query_vectors`), which makes the heatmap the cosine between the centred text
vector and the centred features.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..compact import vector_query, vector_similarities
from ..errors import SettingsError
from ..io import META_KEY
from .encoder import TextEncoder, load_text_encoder
from .labels import LegendEntry, label_map, legend_colormap
from .templates import DEFAULT_TEMPLATES, templates_name

#: metadata key of the text-query record in feature files and layers
TEXT_KEY = "text"
LABELS_SUFFIX = "text labels"


def text_layer_name(image_name: str, prompt: str) -> str:
    """Name of a prompt's heatmap layer: "<image> text: <prompt>"."""
    return f"{image_name} text: {prompt}"


def parse_prompts(text: str | Sequence[str]) -> list[str]:
    """Prompts from comma- or line-separated text (or a list): stripped, empty ones
    dropped, repeats removed, order kept."""
    parts = re.split(r"[,\n;]", text) if isinstance(text, str) else [str(t) for t in text]
    out: list[str] = []
    for p in parts:
        p = " ".join(p.split())
        if p and p not in out:
            out.append(p)
    return out


def features_weights(metadata: dict) -> str:
    """The backbone weights the features were made with, as ``load_*`` accepts them."""
    if metadata.get("random_weights"):
        return "random"
    return str(metadata.get("weights", "pretrained"))


def encoder_for(metadata: dict, device: str = "cpu") -> TextEncoder:
    """The text tower paired with the image tower the features came from."""
    return load_text_encoder(metadata["backbone"], features_weights(metadata), device)


def query_vectors(embeddings: np.ndarray, use_norm: bool) -> np.ndarray:
    """Text vectors to compare with features made with (or without) the channel norm."""
    q = np.atleast_2d(np.asarray(embeddings, np.float32))
    if use_norm:
        q = q - q.mean(axis=1, keepdims=True)
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)


def text_similarity(result: Any, embeddings: np.ndarray) -> np.ndarray:
    """(N, H, W) cosine similarity of ``result``'s full-resolution features (through its
    feature field, never materialised) to N text embeddings."""
    f = result.field
    if f is None:
        raise ValueError("these features have no feature field (loaded from a file?)")
    q = query_vectors(embeddings, bool(result.metadata.get("use_norm")))
    return f.query_similarity(q).reshape((q.shape[0],) + f.size)


def stack_text_similarity(
    stack: Any, index: tuple[int, ...], embeddings: np.ndarray
) -> tuple[np.ndarray, list[float]]:
    """(N, H, W) cosine maps of plane ``index`` of a FeatureStack to N text embeddings,
    and each map's largest possible error.

    From the plane's compact field (one pass over its coordinates for all N, whatever
    the upsampler), unless the upsampler's projection is as cheap (bilinear: a 1-channel
    resize), which is then taken, exactly."""
    result = stack.results[index]
    if result.field is not None and getattr(result.field.upsampler, "cheap_projection", False):
        return text_similarity(result, embeddings), [0.0] * len(embeddings)
    compact = stack.compact(index)
    q = query_vectors(embeddings, bool(result.metadata.get("use_norm")))
    return vector_similarities(compact, [vector_query(compact.basis, v) for v in q])


def text_record(
    prompts: Sequence[str],
    encoder: TextEncoder,
    templates: str | Sequence[str] | None,
    threshold: float | None = None,
    legend: Sequence[LegendEntry] | None = None,
    use_norm: bool = False,
) -> dict:
    """What a feature file or layer records about its text queries."""
    return {
        "prompts": list(prompts),
        "templates": templates_name(templates),
        "threshold": None if threshold is None else float(threshold),
        "legend": [e.to_dict() for e in legend] if legend else None,
        "queries": "centred per vector (features use FeatUp's channel norm)"
        if use_norm
        else "as encoded",
        "text_tower": encoder.metadata(templates),
    }


def text_outputs(
    result: Any,
    prompts: Sequence[str],
    templates: str | Sequence[str] | None = DEFAULT_TEMPLATES,
    threshold: float | None = None,
    device: str = "cpu",
) -> tuple[dict[str, np.ndarray], dict]:
    """Heatmaps and label map of ``prompts`` for one result (the command line's --text).

    Returns arrays ``text_similarity`` (N, H, W) float32 and ``text_labels`` (H, W)
    (0 = none of these, i + 1 = prompt i), and the metadata record.
    """
    prompts = parse_prompts(prompts)
    if not prompts:
        raise SettingsError("no text prompts given")
    enc = encoder_for(result.metadata, device)
    sims = text_similarity(result, enc.encode(prompts, templates))
    labels, legend = label_map(sims, prompts, threshold)
    record = text_record(
        prompts, enc, templates, threshold, legend, bool(result.metadata.get("use_norm"))
    )
    return {"text_similarity": sims, "text_labels": labels}, record


@dataclass
class StackText:
    """Text heatmaps over the planes of a :class:`~napari_featup.session.FeatureStack`.

    ``maps[i]`` is prompt i's heatmap, ``leading + (H, W)``, zero on planes not computed;
    planes are computed on demand (:meth:`update`), each (prompt, plane) once, from the
    plane's compact field (:func:`stack_text_similarity`; ``bounds`` keeps each map's
    largest possible error). The record
    of the prompts is written into every plane's metadata, so exported features keep it.
    """

    stack: Any
    prompts: list[str]
    embeddings: np.ndarray
    record: dict
    maps: np.ndarray | None = None
    #: per prompt, the planes whose map is computed
    done: list[set] = field(default_factory=list)
    #: per prompt, {plane: largest error of its map} (compact field; 0 when exact)
    bounds: list[dict] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        stack: Any,
        prompts: Sequence[str],
        encoder: TextEncoder,
        templates: str | Sequence[str] | None = DEFAULT_TEMPLATES,
        previous: StackText | None = None,
    ) -> StackText:
        """Encode ``prompts`` (cached per prompt) and prepare the maps; nothing is
        computed on the features yet. Maps of ``previous`` (the last query on the same
        stack) are kept for prompts whose vector is unchanged, so adding a prompt costs
        one prompt."""
        prompts = parse_prompts(prompts)
        if not prompts:
            raise SettingsError("no text prompts given")
        emb = encoder.encode(prompts, templates)
        use_norm = bool(stack.metadata.get("use_norm"))
        record = text_record(prompts, encoder, templates, None, None, use_norm)
        out = cls(stack, prompts, emb, record)
        out.refresh()
        if previous is not None and previous.stack is stack and previous.maps is not None:
            for i, p in enumerate(prompts):
                j = previous.prompts.index(p) if p in previous.prompts else -1
                if j >= 0 and np.array_equal(previous.embeddings[j], emb[i]):
                    out.maps[i] = previous.maps[j]
                    out.done[i] = set(previous.done[j])
                    out.bounds[i] = dict(previous.bounds[j])
        return out

    @property
    def stale(self) -> set:
        """Computed planes of the stack whose maps are not all up to date."""
        return {idx for idx in self.stack.results if any(idx not in d for d in self.done)}

    def refresh(self) -> None:
        """Forget computed maps (new planes or features) and record the prompts."""
        g = self.stack.geometry
        shape = (len(self.prompts),) + g.leading + g.size
        if self.maps is None or self.maps.shape != shape:
            self.maps = np.zeros(shape, np.float32)
        self.done = [set() for _ in self.prompts]
        self.bounds = [{} for _ in self.prompts]
        for res in self.stack.results.values():
            res.metadata[TEXT_KEY] = copy.deepcopy(self.record)

    def update(self, plane: tuple[int, ...] = ()) -> np.ndarray | None:
        """Plane ``plane``'s (N, H, W) heatmaps, computing the missing ones (one
        projection for all of them); None without features there."""
        idx = self.stack.geometry.check_index(plane)
        if idx not in self.stack.results:
            return None
        todo = [i for i, d in enumerate(self.done) if idx not in d]
        if todo:
            sims, bounds = stack_text_similarity(self.stack, idx, self.embeddings[todo])
            for k, i in enumerate(todo):
                self.maps[(i,) + idx] = sims[k]
                self.done[i].add(idx)
                self.bounds[i][idx] = bounds[k]
        return self.maps[(slice(None),) + idx]

    def _meta(self, kind: str, **extra: Any) -> dict:
        meta = self.stack.layer_metadata(kind)
        meta[META_KEY].update(extra)
        return meta

    def layer_data(self, plane: tuple[int, ...] = ()) -> list[tuple[np.ndarray, dict, str]]:
        """One heatmap LayerDataTuple per prompt, contrast limits from plane ``plane``."""
        g = self.stack.geometry
        sims = self.update(plane)
        out = []
        for i, p in enumerate(self.prompts):
            lo, hi = (float(sims[i].min()), float(sims[i].max())) if sims is not None else (0, 0)
            kwargs = dict(
                name=text_layer_name(self.stack.image_name, p),
                scale=list(g.scale),
                translate=list(g.translate),
                colormap="inferno",
                contrast_limits=(lo, hi) if hi > lo else (-1.0, 1.0),
                opacity=0.8,
                blending="translucent",
                metadata=self._meta(
                    "text-similarity",
                    prompt=p,
                    similarity_error_bound=max(self.bounds[i].values(), default=0.0),
                ),
            )
            out.append((self.maps[i], kwargs, "image"))
        return out

    def labels(self, threshold: float | None) -> tuple[np.ndarray, list[LegendEntry]]:
        """Label map over every computed plane (planes brought up to date first)."""
        for idx in self.stack.results:
            self.update(idx)
        labels, legend = label_map(self.maps, self.prompts, threshold)
        for idx in self.stack.geometry.planes():
            if idx not in self.stack.results:
                labels[idx] = 0
        return labels, legend

    def label_layer_data(self, threshold: float | None) -> tuple[tuple, list[LegendEntry]]:
        """(LayerDataTuple of "<image> text labels", legend)."""
        g = self.stack.geometry
        labels, legend = self.labels(threshold)
        record = dict(self.record, threshold=threshold, legend=[e.to_dict() for e in legend])
        for res in self.stack.results.values():
            res.metadata[TEXT_KEY] = copy.deepcopy(record)
        kwargs = dict(
            name=f"{self.stack.image_name} {LABELS_SUFFIX}",
            scale=list(g.scale),
            translate=list(g.translate),
            opacity=0.6,
            colormap=legend_colormap(legend),
            features={"index": [e.label for e in legend], "prompt": [e.prompt for e in legend]},
            metadata=self._meta("text-labels", text=record),
        )
        return (labels, kwargs, "labels"), legend

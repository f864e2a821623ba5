"""Text towers of CLIP-family backbones: prompts -> unit vectors in the image feature space.

The text transformers and tokenizers are open_clip's: OpenAI's BPE vocabulary ships in
the open_clip package (tokenising works offline); SigLIP 2's Gemma tokenizer is read by
``transformers`` from the files in the model's Hugging Face repository. The weights
always come from the checkpoint the backbone's image tower comes from (see
:mod:`.files`): ``"pretrained"`` (the Hugging Face cache, ``napari-featup download``), the
path of the file the backbone was given, or ``"random"`` (seeded, flagged in metadata).

Which space a text vector lives in decides which backbone it pairs with: CLIP's text
meets ``clip`` and ``maskclip`` (projected patch tokens), SigLIP 2's text meets
``siglip2-b-dense`` (patch tokens through the attention-pooling head), not ``siglip2-b``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones import RANDOM_SEED, Backbone, get_spec, list_backbones
from ..devices import resolve_device
from ..errors import BackboneError, WeightsFileError, WeightsUnavailableError
from ..weights import read_state_dict
from . import files
from .templates import DEFAULT_TEMPLATES, expand, resolve_templates, templates_name

RANDOM_TEXT_LABEL = "random (untrained text tower, for tests and demos only)"


@dataclass(frozen=True)
class TowerSpec:
    """Which open_clip text tower a backbone pairs with."""

    model: str  # open_clip model name (its config gives the text tower's shape)
    tag: str  # open_clip pretrained tag (gives the Hugging Face repository)
    quick_gelu: bool  # OpenAI's CLIP uses QuickGELU in both towers
    description: str
    both_towers: str  # a local file holding both towers, for messages
    image_file: str  # where the pretrained image tower is, in the same repository
    checkpoint: str  # what the pretrained checkpoint is

    @property
    def text_cfg(self) -> dict:
        """open_clip's ``text_cfg`` of the model (a fresh copy)."""
        import open_clip

        return open_clip.get_model_config(self.model)["text_cfg"]

    @property
    def hf_tokenizer(self) -> bool:
        """Whether the tokenizer is a Hugging Face one with files of its own (SigLIP 2's
        Gemma) rather than the BPE vocabulary open_clip ships."""
        return bool(self.text_cfg.get("hf_tokenizer_name"))


_OPENAI_B16 = TowerSpec(
    "ViT-B-16",
    "openai",
    True,
    "OpenAI CLIP ViT-B/16 text transformer (open_clip, QuickGELU)",
    "OpenAI's ViT-B-16.pt",
    "model.safetensors (timm's image tower)",
    "OpenAI CLIP ViT-B/16, converted",
)
#: open_clip's SigLIP 2 B/16: its image tower is timm's ``vit_base_patch16_siglip_224``
#: (MAP head), pretrained tag ``webli`` in the Hugging Face repository timm/ViT-B-16-SigLIP2
SIGLIP2_OPEN_CLIP = "ViT-B-16-SigLIP2"
_SIGLIP2_B16 = TowerSpec(
    SIGLIP2_OPEN_CLIP,
    "webli",
    False,
    "SigLIP 2 ViT-B/16 text transformer (open_clip, Gemma tokenizer, 64 tokens)",
    "a copy of open_clip_model.safetensors (with tokenizer.json and tokenizer_config.json "
    "beside it)",
    "open_clip_model.safetensors (visual.trunk.*, the same file)",
    "SigLIP 2 ViT-B/16 WebLI (big_vision), converted by timm",
)
#: backbones whose text tower napari-featup loads (the image tower's twin)
TEXT_TOWERS: dict[str, TowerSpec] = {
    "clip": _OPENAI_B16,
    "maskclip": _OPENAI_B16,
    "siglip2-b-dense": _SIGLIP2_B16,
}
#: backbones whose published model has a text tower that does not answer their own
#: features, and the backbone that does
TEXT_PARTNERS = {"siglip2-b": "siglip2-b-dense"}


def text_backbones() -> list[str]:
    """Backbones whose text tower napari-featup can load, in listing order.

    Returns
    -------
    list of str
    """
    return [n for n in list_backbones() if n in TEXT_TOWERS]


def has_text_tower(backbone: str) -> bool:
    """True when text queries work with ``backbone`` (a name; unknown names: False)."""
    return str(backbone).lower() in TEXT_TOWERS


def tower_spec(backbone: str) -> TowerSpec:
    """The :class:`TowerSpec` of ``backbone``; BackboneError when it has none."""
    spec = get_spec(backbone)  # unknown names fail here, with the list of names
    if spec.name in TEXT_TOWERS:
        return TEXT_TOWERS[spec.name]
    supported = ", ".join(text_backbones())
    if spec.name in TEXT_PARTNERS:
        raise BackboneError(
            f"backbone {spec.name!r} gives SigLIP 2's normed patch tokens, which its text "
            "tower does not answer: SigLIP aligns text with the embedding its attention-"
            f"pooling head makes. Use {TEXT_PARTNERS[spec.name]!r}, which sends each patch "
            f"token through that head, for text queries (they work with {supported})."
        )
    raise BackboneError(
        f"no text tower for backbone {spec.name!r}: text queries need a CLIP-family "
        f"backbone ({supported})"
    )


def hub_repo(backbone: str) -> str:
    """The Hugging Face repository both towers of ``backbone`` are read from.

    Raises BackboneError when the image tower and the text tower would come from
    different repositories (different checkpoints).
    """
    ts = tower_spec(backbone)
    return files.hub_repo(get_spec(backbone).name, ts.model, ts.tag)


def pretrained_file(backbone: str, download: bool = True) -> Path:
    """open_clip's weights file for ``backbone`` in the Hugging Face cache (fetched when
    ``download`` and missing); WeightsUnavailableError offline, saying what to do."""
    name = get_spec(backbone).name
    return files.pretrained_file(name, hub_repo(name), tower_spec(name).both_towers, download)


def make_tokenizer(backbone: str, weights_file: Path | None = None, download: bool = True):
    """(tokenizer, description) for ``backbone``'s text tower, as open_clip builds it.

    OpenAI's BPE needs nothing; a Hugging Face tokenizer (SigLIP 2's Gemma) is read from
    the files beside ``weights_file`` or in the cache (:func:`.files.tokenizer_folder`).
    """
    import open_clip

    ts = tower_spec(backbone)
    if not ts.hf_tokenizer:
        return open_clip.get_tokenizer(ts.model), "OpenAI BPE (open_clip's vocabulary)"
    cfg = ts.text_cfg
    folder = files.tokenizer_folder(backbone, hub_repo(backbone), weights_file, download)
    try:
        import transformers  # noqa: F401  (open_clip's HFTokenizer runs on it)
    except ImportError as exc:
        raise BackboneError(
            f"the tokenizer of backbone {backbone!r} needs the `transformers` package: "
            "pip install transformers"
        ) from exc
    from open_clip.tokenizer import HFTokenizer

    tok = HFTokenizer(
        str(folder),
        context_length=cfg["context_length"],
        tokenizer_mode=cfg.get("tokenizer_mode"),
        **cfg.get("tokenizer_kwargs", {}),
    )
    return tok, f"Hugging Face tokenizer ({folder})"


def build_tower(ts: TowerSpec) -> nn.Module:
    """open_clip's text transformer for ``ts``, randomly initialised (seeded here)."""
    import open_clip
    from open_clip.model import _build_text_tower

    cfg = open_clip.get_model_config(ts.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return _build_text_tower(cfg["embed_dim"], cfg["text_cfg"], quick_gelu=ts.quick_gelu)


class TextEncoder:
    """A loaded text tower: :meth:`encode` turns prompts into (N, D) unit vectors.

    Embeddings are cached per (prompt, templates), so a prompt is encoded once.
    ``metadata`` records where both towers' weights came from.
    """

    def __init__(
        self,
        backbone: str,
        tower: nn.Module,
        device: torch.device,
        source: dict,
        tokenizer: Any = None,
    ):
        self.backbone = backbone
        self.tower = tower.eval().to(device)
        self.tower.requires_grad_(False)
        self.device = device
        self.tokenizer = make_tokenizer(backbone)[0] if tokenizer is None else tokenizer
        self.dim = int(self.tower.output_dim)
        self.source = source
        self._cache: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    @property
    def random_weights(self) -> bool:
        """Whether the text tower has random (untrained) weights."""
        return bool(self.source.get("random_weights"))

    def metadata(self, templates: str | Sequence[str] | None = DEFAULT_TEMPLATES) -> dict:
        """The text tower's record for a feature file (plain values)."""
        import open_clip

        return dict(
            self.source,
            backbone=self.backbone,
            model=tower_spec(self.backbone).description,
            open_clip_version=open_clip.__version__,
            templates=templates_name(templates),
            n_templates=len(resolve_templates(templates)),
            dim=self.dim,
            normalisation="L2 per template sentence, mean over templates, L2 again (CLIP's)",
        )

    @torch.inference_mode()
    def sentence_embeddings(self, sentences: Sequence[str]) -> torch.Tensor:
        """(S, D) unnormalised embeddings of whole sentences (CLIP's ``encode_text``).

        With a causal mask (CLIP), tokens after the longest sentence's end-of-text token
        are dropped: the mask keeps them from reaching any earlier position, so the result
        is the same as at the full 77-token context, for a fraction of the work. Without
        one (SigLIP), every position sees the padding, so the whole context is run.
        """
        t = self.tower
        ids = self.tokenizer(list(sentences)).to(self.device)
        if t.attn_mask is None:
            return t(ids).float()
        eot = ids.argmax(dim=-1)  # the end-of-text token has the largest id (CLIP's rule)
        n = int(eot.max()) + 1
        ids = ids[:, :n]
        x = t.token_embedding(ids) + t.positional_embedding[:n]
        x = t.transformer(x, attn_mask=t.attn_mask[:n, :n])
        x = t.ln_final(x)[torch.arange(ids.shape[0], device=self.device), eot]
        return (x @ t.text_projection).float()

    def encode(
        self,
        prompts: str | Sequence[str],
        templates: str | Sequence[str] | None = DEFAULT_TEMPLATES,
    ) -> np.ndarray:
        """(N, D) float32 unit vectors, one per prompt (a string is one prompt)."""
        prompts = [prompts] if isinstance(prompts, str) else [str(p) for p in prompts]
        if not prompts:
            raise ValueError("no prompts to encode")
        tmpl = resolve_templates(templates)
        out = np.empty((len(prompts), self.dim), np.float32)
        for i, p in enumerate(prompts):
            key = (p, tmpl)
            if key not in self._cache:
                e = nn.functional.normalize(self.sentence_embeddings(expand(p, tmpl)), dim=-1)
                self._cache[key] = nn.functional.normalize(e.mean(0), dim=0).cpu().numpy()
            out[i] = self._cache[key]
        return out


_CACHE: dict[tuple, TextEncoder] = {}


def _source_key(weights: Any) -> str:
    if str(weights) in ("pretrained", "random"):
        return str(weights)
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights file {str(path)!r} does not exist; pass 'pretrained', 'random' or the "
            "path of the file the backbone's image tower was read from"
        )
    return str(path.resolve())


def load_text_encoder(
    backbone: str | Backbone = "clip",
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> TextEncoder:
    """The text tower paired with ``backbone``'s image tower (cached).

    Parameters
    ----------
    backbone : str or Backbone
        A name from :func:`text_backbones`, or a loaded backbone, whose weights are then
        used.
    weights : str or os.PathLike, optional
        ``"pretrained"`` (the default), ``"random"`` or the path of the checkpoint the
        image tower was read from; with a loaded backbone it may be omitted, and if given
        must match.
    device : str or torch.device
        Where the text tower runs.

    Returns
    -------
    TextEncoder
        ``encoder(prompts)`` gives (N, C) unit embeddings in the image features' space.

    Raises
    ------
    BackboneError
        The backbone has no text tower.
    WeightsUnavailableError, WeightsFileError
        Missing or unusable weights.
    """
    if isinstance(backbone, Backbone):
        name, bb_weights = backbone.name, str(backbone.weights)
        if weights is not None and _source_key(weights) != _source_key(bb_weights):
            raise BackboneError(
                f"the text tower must come from the image tower's checkpoint ({bb_weights}), "
                f"not {weights}"
            )
        weights = bb_weights
    else:
        name = get_spec(backbone).name
    weights = "pretrained" if weights is None else weights
    ts = tower_spec(name)
    source = _source_key(weights)
    dev = resolve_device(device)
    key = (ts, source, str(dev))
    if key in _CACHE:
        enc = _CACHE[key]
        return enc if enc.backbone == name else _rename(enc, name)
    weights_file = None if source in ("pretrained", "random") else Path(source)
    tokenizer, tokenizer_record = make_tokenizer(name, weights_file)  # before the big read
    tower = build_tower(ts)
    if source == "random":
        record = dict(
            weights=RANDOM_TEXT_LABEL,
            random_weights=True,
            checkpoint=f"random, seed {RANDOM_SEED}",
            same_checkpoint=True,
            image_tower_file=None,
            text_tower_file=None,
        )
    else:
        if source == "pretrained":
            path = pretrained_file(name)
            repo = hub_repo(name)
            image_file = f"{repo}: {ts.image_file}"
            checkpoint = f"Hugging Face {repo} ({ts.checkpoint})"
        else:
            path = Path(source)
            image_file = str(path)
            checkpoint = str(path)
        state = files.text_state(read_state_dict(path), repr(str(path)))
        try:
            tower.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsFileError(
                f"{str(path)!r} does not fit the {ts.description}: {str(exc).splitlines()[0]}"
            ) from exc
        record = dict(
            weights=source,
            random_weights=False,
            checkpoint=checkpoint,
            same_checkpoint=True,
            image_tower_file=image_file,
            text_tower_file=str(path),
        )
    record["tokenizer"] = tokenizer_record
    enc = TextEncoder(name, tower, dev, record, tokenizer)
    if enc.dim != get_spec(name).dim:
        raise BackboneError(
            f"the text tower gives {enc.dim}-d vectors, backbone {name!r} {get_spec(name).dim}-d"
        )
    _CACHE[key] = enc
    return enc


def _rename(enc: TextEncoder, name: str) -> TextEncoder:
    """The same tower (and embedding cache) under another backbone's name (clip and
    maskclip share OpenAI's text tower)."""
    other = object.__new__(TextEncoder)
    other.__dict__.update(enc.__dict__, backbone=name)
    return other


def encode_text(
    texts: str | Sequence[str],
    backbone: str | Backbone = "clip",
    weights: str | os.PathLike | None = None,
    templates: str | Sequence[str] | None = DEFAULT_TEMPLATES,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Prompts -> (N, D) float32 unit vectors in ``backbone``'s feature space.

    Parameters
    ----------
    texts
        One prompt or a sequence of prompts.
    backbone, weights, device
        As :func:`load_text_encoder` (a loaded Backbone brings its own weights).
    templates
        ``"maskclip"`` (default: MaskCLIP's 85 sentences, averaged), ``"imagenet"``
        (CLIP's 80), ``"plain"`` / None (the prompt as typed), or a list of sentences
        with ``{}``.

    Returns
    -------
    numpy.ndarray
        (N, D) float32 unit vectors, one per prompt.
    """
    return load_text_encoder(backbone, weights, device).encode(texts, templates)


def download_text_tower(backbone: str) -> Path:
    """Fetch ``backbone``'s text tower (and its tokenizer, where it has its own files)
    into the Hugging Face cache; return the weights file.

    Parameters
    ----------
    backbone : str
        A name from :func:`text_backbones`.

    Returns
    -------
    pathlib.Path
        open_clip's whole-model file in the cache.
    """
    path = pretrained_file(backbone, download=True)
    if tower_spec(backbone).hf_tokenizer:
        files.tokenizer_folder(get_spec(backbone).name, hub_repo(backbone), optional=True)
    return path

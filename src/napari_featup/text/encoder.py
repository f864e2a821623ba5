"""Text towers of CLIP-family backbones: prompts -> unit vectors in the image feature space.

The text transformer and its BPE tokenizer are open_clip's (the OpenAI vocabulary ships
inside the open_clip package, so tokenising works offline). The weights always come from
the checkpoint the backbone's image tower comes from:

* ``"pretrained"``: open_clip's file in the Hugging Face repository timm builds the image
  tower from (``timm/vit_base_patch16_clip_224.openai``: ``model.safetensors`` is timm's
  image tower, ``open_clip_model.safetensors`` the whole CLIP model, both converted from
  OpenAI's ViT-B/16 release), through the Hugging Face cache (``napari-featup download``);
* a path: the same file the backbone was given (OpenAI's ``ViT-B-16.pt`` TorchScript
  archive, an open_clip state dict, or safetensors);
* ``"random"``: seeded untrained weights, for tests and demos, flagged in metadata.
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
from ..weights import load_state_dict_file
from .templates import DEFAULT_TEMPLATES, expand, resolve_templates, templates_name

RANDOM_TEXT_LABEL = "random (untrained text tower, for tests and demos only)"
#: open_clip's file names in a Hugging Face repository, the safetensors one first
HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class TowerSpec:
    """Which open_clip text tower a backbone pairs with."""

    model: str  # open_clip model name (its config gives the text tower's shape)
    tag: str  # open_clip pretrained tag (gives the Hugging Face repository)
    quick_gelu: bool  # OpenAI's CLIP uses QuickGELU in both towers
    description: str


_OPENAI_B16 = TowerSpec(
    "ViT-B-16", "openai", True, "OpenAI CLIP ViT-B/16 text transformer (open_clip, QuickGELU)"
)
#: open_clip's model with the image tower of ``siglip2-b`` (timm
#: ``vit_base_patch16_siglip_224``, MAP head), pretrained tag ``webli`` in the Hugging Face
#: repository ``timm/ViT-B-16-SigLIP2``; not wired (see tower_spec)
SIGLIP2_OPEN_CLIP = "ViT-B-16-SigLIP2"
#: backbones whose text tower napari-featup loads (the image tower's twin)
TEXT_TOWERS: dict[str, TowerSpec] = {"clip": _OPENAI_B16, "maskclip": _OPENAI_B16}


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
    if getattr(spec, "text_tower", False):  # its published model has one we do not load
        why = (
            f" (its twin is open_clip's {SIGLIP2_OPEN_CLIP}, whose text transformer builds "
            "offline, but whose Gemma tokenizer needs `transformers` and files from the "
            "Hugging Face Hub; and SigLIP aligns text with its attention-pooled image "
            "embedding, not with the patch tokens this backbone outputs)"
            if "siglip" in spec.name or "siglip" in spec.timm_name
            else ""
        )
        raise BackboneError(
            f"no text tower for backbone {spec.name!r} in napari-featup yet: its published "
            f"model has one, but it is not wired here{why}. Text queries work with {supported}."
        )
    raise BackboneError(
        f"no text tower for backbone {spec.name!r}: text queries need a CLIP-family "
        f"backbone ({supported})"
    )


def hub_repo(backbone: str) -> str:
    """The Hugging Face repository both towers of ``backbone`` are read from.

    Raises BackboneError when timm's image tower and open_clip's text tower would come
    from different repositories (different checkpoints).
    """
    import open_clip
    import timm

    ts = tower_spec(backbone)
    text_repo = str(open_clip.get_pretrained_cfg(ts.model, ts.tag)["hf_hub"]).rstrip("/")
    timm_name = get_spec(backbone).timm_name
    image_repo = timm.models.get_pretrained_cfg(timm_name).hf_hub_id
    if image_repo != text_repo:
        raise BackboneError(
            f"backbone {backbone!r}: the image tower ({timm_name}) comes from {image_repo!r} "
            f"but the text tower from {text_repo!r}; they must share one checkpoint"
        )
    return text_repo


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def pretrained_file(backbone: str, download: bool = True) -> Path:
    """open_clip's weights file for ``backbone`` in the Hugging Face cache (fetched when
    ``download`` and missing); WeightsUnavailableError offline, saying what to do."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo = hub_repo(backbone)
    cache = _hub_cache()
    for name in HUB_FILES:  # a cached file first, so offline use never touches the network
        hit = try_to_load_from_cache(repo, name, cache_dir=cache)
        if isinstance(hit, str):
            return Path(hit)
    errors = []
    for name in HUB_FILES if download else ():
        try:
            return Path(hf_hub_download(repo, name, cache_dir=cache))
        except Exception as exc:  # noqa: BLE001 - offline, missing file and hub errors differ
            errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    raise WeightsUnavailableError(
        f"the text tower of backbone {backbone!r} (open_clip's {HUB_FILES[0]} in the Hugging "
        f"Face repository {repo}) is not in the cache ({cache}; moved by HF_HOME or "
        f"HF_HUB_CACHE)"
        + (f" and could not be downloaded ({'; '.join(errors)})" if errors else "")
        + f". On a machine with internet run `napari-featup download {backbone}` and copy that "
        "cache folder here, or pass weights=PATH to OpenAI's ViT-B-16.pt for both towers."
    )


def _is_torchscript(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.split("/", 1)[-1] == "constants.pkl" for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, a torch file (``weights_only``) or a TorchScript
    archive (OpenAI's format: ``torch.jit.load(...).state_dict()``, which restores
    tensors without unpickling Python objects; the module is never run)."""
    try:  # the backbones' reader, where it exists, handles every format they accept
        from ..weights import read_state_dict  # type: ignore[attr-defined]

        return read_state_dict(path)
    except ImportError:
        pass
    path = Path(path)
    if path.suffix != ".safetensors" and _is_torchscript(path):
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - TorchScript raises RuntimeError and more
            raise WeightsFileError(
                f"{str(path)!r} is an unreadable TorchScript archive: {exc}"
            ) from exc
        return {k: v.detach().clone() for k, v in module.state_dict().items()}
    return load_state_dict_file(path)


def text_state(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The text-tower entries of a whole-CLIP state dict, keys as open_clip's
    ``TextTransformer`` names them (``token_embedding.weight``, ``positional_embedding``,
    ``transformer.*``, ``ln_final.*``, ``text_projection``), float32."""
    anchor = next((k for k in state if k.endswith("token_embedding.weight")), None)
    if anchor is None:
        raise WeightsFileError(
            f"{where} holds no CLIP text tower (no token_embedding.weight): an image-only "
            "file such as timm's model.safetensors? Use OpenAI's ViT-B-16.pt or open_clip's "
            "open_clip_model.safetensors, which hold both towers."
        )
    prefix = anchor[: -len("token_embedding.weight")]
    keep = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            continue
        name = k[len(prefix) :]
        if name.startswith(keep) or name == "text_projection":
            out[name] = v.float()
    return out


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

    def __init__(self, backbone: str, tower: nn.Module, device: torch.device, source: dict):
        import open_clip

        self.backbone = backbone
        self.tower = tower.eval().to(device)
        self.tower.requires_grad_(False)
        self.device = device
        self.tokenizer = open_clip.get_tokenizer(tower_spec(backbone).model)
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

        Tokens after the longest sentence's end-of-text token are dropped: the causal mask
        keeps them from reaching any earlier position, so the result is the same as at the
        full 77-token context, for a fraction of the work.
        """
        t = self.tower
        ids = self.tokenizer(list(sentences)).to(self.device)
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
            image_file = f"{repo}: model.safetensors (timm's image tower)"
            checkpoint = f"Hugging Face {repo} (OpenAI CLIP ViT-B/16, converted)"
        else:
            path = Path(source)
            image_file = str(path)
            checkpoint = str(path)
        state = text_state(read_weights(path), repr(str(path)))
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
    enc = TextEncoder(name, tower, dev, record)
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
    """Fetch ``backbone``'s text tower into the Hugging Face cache; return the file."""
    return pretrained_file(backbone, download=True)

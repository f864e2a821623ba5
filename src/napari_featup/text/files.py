"""Where a text tower's weights and tokenizer come from: the image tower's checkpoint.

* ``"pretrained"``: open_clip's whole-model file in the Hugging Face repository the
  image tower is read from (``timm/vit_base_patch16_clip_224.openai`` for OpenAI's
  CLIP, ``timm/ViT-B-16-SigLIP2`` for SigLIP 2), through the Hugging Face cache;
* a path: the file the backbone was given, which holds both towers;
* ``"random"``: seeded untrained weights (no file).

CLIP's BPE vocabulary ships with open_clip. SigLIP 2's Gemma tokenizer
(``tokenizer.json`` and its config) sits in the same repository, or beside a weights
file copied from it, and is read by ``transformers`` (through open_clip's HFTokenizer).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..backbones import get_spec
from ..backbones._hub import hub_file
from ..errors import BackboneError, WeightsFileError, WeightsUnavailableError

#: open_clip's file names in a Hugging Face repository, the safetensors one first
HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: a Hugging Face tokenizer's files, as the SigLIP 2 repositories hold them (the last is
#: optional: tokenizer_config.json names the special tokens too)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def hub_repo(backbone: str, text_model: str, text_tag: str) -> str:
    """The Hugging Face repository both towers of ``backbone`` are read from.

    Raises BackboneError when the image tower and open_clip's ``text_model`` /
    ``text_tag`` would come from different repositories (different checkpoints).
    """
    import open_clip

    text = str(open_clip.get_pretrained_cfg(text_model, text_tag)["hf_hub"]).rstrip("/")
    image = get_spec(backbone).hub_repo
    if image != text:
        raise BackboneError(
            f"backbone {backbone!r}: the image tower comes from {image!r} but the text "
            f"tower from {text!r}; they must share one checkpoint"
        )
    return text


def pretrained_file(backbone: str, repo: str, both_towers: str, download: bool = True) -> Path:
    """open_clip's weights file for ``backbone`` from ``repo``, via the Hugging Face cache
    (fetched when ``download`` and missing); WeightsUnavailableError when neither works,
    saying what to do (``both_towers`` names a local file holding both towers)."""
    alt = f"pass weights=PATH to {both_towers} for both towers"
    return hub_file(repo, HUB_FILES, "the text tower", backbone, alt, download)


def tokenizer_folder(
    backbone: str,
    repo: str,
    weights_file: Path | None = None,
    download: bool = True,
    optional: bool = False,
) -> Path:
    """The folder of ``backbone``'s Hugging Face tokenizer files: beside ``weights_file``
    when they are there (a copied repository), else the cache's copy of ``repo`` (the
    optional file is fetched too when ``optional``, as ``napari-featup download`` does)."""
    if weights_file is not None and (Path(weights_file).parent / TOKENIZER_FILES[0]).is_file():
        return Path(weights_file).parent
    alt = f"put {', '.join(TOKENIZER_FILES[:2])} beside the weights file"
    first = hub_file(repo, TOKENIZER_FILES[:1], "the tokenizer", backbone, alt, download)
    hub_file(repo, TOKENIZER_FILES[1:2], "the tokenizer", backbone, alt, download)
    if optional:
        with contextlib.suppress(WeightsUnavailableError):
            hub_file(repo, TOKENIZER_FILES[2:], "the tokenizer", backbone, alt, download)
    return first.parent  # one snapshot folder holds them all


def text_state(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The text-tower entries of a whole-model state dict, keys as open_clip's
    ``TextTransformer`` names them (``token_embedding.weight``, ``positional_embedding``,
    ``transformer.*``, ``ln_final.*``, ``text_projection`` or ``text_projection.*``),
    float32."""
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
        if name.startswith(keep) or name.split(".")[0] == "text_projection":
            out[name] = v.float()
    return out

"""Prompt templates: how one prompt becomes the sentences the text tower encodes.

CLIP's zero-shot recipe (and MaskCLIP's, which FeatUp's MaskCLIP backbone comes from)
encodes a prompt in many sentences ("a photo of a {}.", "a drawing of the {}." ...),
L2-normalises each sentence's embedding, averages them and normalises the mean.

* ``"maskclip"`` (the default): MaskCLIP's list (``tools/maskclip_utils/
  prompt_engineering.py`` in its repository): CLIP's 80 ImageNet templates, then five
  "in the scene" sentences MaskCLIP added for dense prediction.
* ``"imagenet"``: CLIP's 80 ImageNet templates (OpenAI's prompt-engineering notebook).
* ``"plain"``: the prompt as typed, one sentence. This is what FeatUp's own
  ``plot_lang_heatmaps`` does (it tokenises the query without templates).

FeatUp's code itself holds no template list; the averaged default follows MaskCLIP.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import SettingsError

# Data, not code: CLIP's 80 ImageNet templates in the order of OpenAI's notebook.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.",
    "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.",
    "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.",
    "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.",
    "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.",
    "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.",
    "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.",
    "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
)  # fmt: skip

#: MaskCLIP's templates: CLIP's 80, then five sentences about a scene
MASKCLIP_TEMPLATES: tuple[str, ...] = IMAGENET_TEMPLATES + (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "maskclip": MASKCLIP_TEMPLATES,
    "imagenet": IMAGENET_TEMPLATES,
    "plain": ("{}",),
}
DEFAULT_TEMPLATES = "maskclip"


def resolve_templates(templates: str | Sequence[str] | None = DEFAULT_TEMPLATES) -> tuple[str, ...]:
    """The template sentences for a set name (``maskclip``, ``imagenet``, ``plain``;
    None means plain) or a sequence of sentences, each with one ``{}`` for the prompt.

    Raises
    ------
    SettingsError
        An unknown set name, an empty list, or a sentence without ``{}``.
    """
    if templates is None:
        return TEMPLATE_SETS["plain"]
    if isinstance(templates, str):
        key = templates.lower()
        if key not in TEMPLATE_SETS:
            raise SettingsError(
                f"unknown prompt templates {templates!r}; choose one of "
                f"{', '.join(TEMPLATE_SETS)} or pass a list of sentences with '{{}}'"
            )
        return TEMPLATE_SETS[key]
    out = tuple(str(t) for t in templates)
    if not out:
        raise SettingsError("the list of prompt templates is empty")
    bad = [t for t in out if "{}" not in t]
    if bad:
        raise SettingsError(f"prompt templates need '{{}}' where the prompt goes: {bad[:3]}")
    return out


def templates_name(templates: str | Sequence[str] | None) -> str:
    """How metadata records a template choice: the set name, or ``custom (N)``."""
    if templates is None:
        return "plain"
    if isinstance(templates, str):
        return templates.lower()
    return f"custom ({len(tuple(templates))})"


def expand(prompt: str, templates: Sequence[str]) -> list[str]:
    """The sentences for one prompt (``{}`` replaced; other braces are left alone)."""
    return [t.replace("{}", prompt) for t in templates]

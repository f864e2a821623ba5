"""Text queries: prompts -> vectors in a CLIP-family backbone's feature space,
heatmaps at full resolution, and zero-shot label maps (no Qt, no napari import).

::

    import napari_featup as nf
    q = nf.encode_text(["nucleus", "background"], backbone="clip")  # (2, 512) unit vectors
    res = nf.extract_features(image, backbone="clip", upsampler="featup-jbu")
    sims = res.field.query_similarity(q)                          # (2, H, W), a click's cost
    labels, legend = nf.label_map(sims, ["nucleus", "background"], threshold=0.2)

See docs/text-queries.md.
"""

from .encoder import (
    RANDOM_TEXT_LABEL,
    TEXT_PARTNERS,
    TEXT_TOWERS,
    TextEncoder,
    download_text_tower,
    encode_text,
    has_text_tower,
    load_text_encoder,
    text_backbones,
)
from .labels import NONE_LABEL, LegendEntry, label_map
from .queries import (
    TEXT_KEY,
    StackText,
    parse_prompts,
    query_vectors,
    stack_text_similarity,
    text_layer_name,
    text_outputs,
    text_similarity,
)
from .templates import IMAGENET_TEMPLATES, MASKCLIP_TEMPLATES, TEMPLATE_SETS, resolve_templates

__all__ = [
    "IMAGENET_TEMPLATES",
    "MASKCLIP_TEMPLATES",
    "NONE_LABEL",
    "RANDOM_TEXT_LABEL",
    "TEMPLATE_SETS",
    "TEXT_KEY",
    "TEXT_PARTNERS",
    "TEXT_TOWERS",
    "LegendEntry",
    "StackText",
    "TextEncoder",
    "download_text_tower",
    "encode_text",
    "has_text_tower",
    "label_map",
    "load_text_encoder",
    "parse_prompts",
    "query_vectors",
    "resolve_templates",
    "stack_text_similarity",
    "text_backbones",
    "text_layer_name",
    "text_outputs",
    "text_similarity",
]

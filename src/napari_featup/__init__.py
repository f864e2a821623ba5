"""napari-featup: look inside vision backbones with FeatUp-style feature upsampling.

The public interface (docs/library.md has the whole of it)::

    import napari_featup as nf
    nf.list_backbones(); nf.list_upsamplers()
    bb = nf.load_backbone("dinov2", weights="pretrained" | "random" | PATH)
    up = nf.load_upsampler("bilinear")
    res = nf.extract_features(image, backbone="dinov2", upsampler="bilinear")
    q = nf.encode_text(["nucleus"], backbone="clip")   # text queries (CLIP family)
    store = nf.extract_many("folder/*.tif", "features.zarr", downsample=2, workers=2)
    up = nf.train_jbu(images, backbone="dinov2", steps=500, out="mine.ckpt")
"""

__version__ = "0.1.0"

from .analysis import PCAProjection, cosine_similarity, fit_pca, make_query  # noqa: E402
from .backbones import Backbone, BackboneError, list_backbones, load_backbone  # noqa: E402
from .batch import BatchError, extract_many, iter_extract_many  # noqa: E402
from .errors import (  # noqa: E402
    FeatUpError,
    FeatureFileError,
    SettingsError,
)
from .estimate import Estimate, estimate_run  # noqa: E402
from .lazy import LazyField  # noqa: E402
from .pipeline import FeatureResult, extract_features, iter_extract  # noqa: E402
from .preprocess import ImageError, prepare_image  # noqa: E402
from .progress import Cancelled, Progress, drive, relay  # noqa: E402
from .store import FeatureStore, open_store  # noqa: E402
from .text import encode_text, label_map, load_text_encoder, text_backbones  # noqa: E402
from .to_store import ExtractSettings  # noqa: E402
from .upsamplers import Upsampler, UpsamplerError, list_upsamplers, load_upsampler  # noqa: E402
from .upsamplers.featup_jbu import (  # noqa: E402
    download_featup_checkpoint,
    load_featup_checkpoint,
)

# after the upsampler registry is complete (the trainer imports the implicit package)
from .upsamplers.featup_jbu.train import iter_train_jbu, train_jbu  # noqa: E402
from .weights import WeightsFileError, WeightsUnavailableError  # noqa: E402

__all__ = [
    "Backbone",
    "BackboneError",
    "BatchError",
    "Cancelled",
    "Estimate",
    "ExtractSettings",
    "FeatureStore",
    "LazyField",
    "FeatUpError",
    "FeatureFileError",
    "FeatureResult",
    "ImageError",
    "SettingsError",
    "PCAProjection",
    "Progress",
    "Upsampler",
    "UpsamplerError",
    "WeightsFileError",
    "WeightsUnavailableError",
    "cosine_similarity",
    "download_featup_checkpoint",
    "drive",
    "encode_text",
    "estimate_run",
    "extract_features",
    "extract_many",
    "fit_pca",
    "iter_extract",
    "label_map",
    "iter_extract_many",
    "iter_train_jbu",
    "list_backbones",
    "list_upsamplers",
    "load_backbone",
    "load_featup_checkpoint",
    "load_text_encoder",
    "load_upsampler",
    "make_query",
    "open_store",
    "prepare_image",
    "relay",
    "text_backbones",
    "train_jbu",
]

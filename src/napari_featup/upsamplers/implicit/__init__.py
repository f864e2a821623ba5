"""FeatUp's implicit upsampler: a small network fitted to one image.

FeatUp (Fu et al., ICLR 2024) fits, per image, a per-pixel MLP on Fourier features of
the pixel position and colour, so that its full-resolution features, put through the
same random jitter (reflect pad, zoom, crop, flip) as the image and downsampled by a
learned attention pooling, reproduce the backbone's features of the jittered image.
FeatUp ships this only as a training script; here it is an API:

    from napari_featup.upsamplers.implicit import ImplicitFeatures, fit_implicit

    feats = fit_implicit(image, backbone, settings="fast", seed=0)
    hr = feats.render((H, W))            # (1, C, H, W), in row tiles
    feats.save("img.implicit.pt"); ImplicitFeatures.load("img.implicit.pt")

:func:`iter_fit_implicit` is the generator underneath: it yields
:class:`~napari_featup.progress.Progress` events (done, total, message, stage, loss) and
returns the :class:`ImplicitFeatures`; a consumer that stops iterating cancels the fit.
In the pipeline it is the upsampler ``featup-implicit`` (:mod:`.upsampler`).

Modules, by concern: :mod:`.config` (settings and presets), :mod:`.model` (the
networks), :mod:`.views` (jitter geometry and pooling of views), :mod:`.features` (the
fitted result and its file format), :mod:`.fit` (the fitter), :mod:`.upsampler`.

Facts taken from FeatUp's public code (``train_implicit_upsampler.py``,
``configs/implicit_upsampler.yaml``, ``layers.py``, ``downsamplers.py``,
``datasets/JitteredImage.py``, ``losses.py``) are reproduced by the ``"featup"``
settings: 3000 jittered views, 1200 steps of NAdam (lr 2e-3) on 10 views each, views
reflect-padded by 30 px, zoomed in [1, 1.8] half the time, cropped and flipped half the
time; features reduced to 128 PCA dimensions fitted on 50 views; 30 frequencies
exp-spaced from e^-2 to e^10 with learned phases; dropout 0.2; loss = Gaussian
negative log-likelihood with a learned per-location scale, + 0.001 x magnitude,
+ 0.05 x magnitude total variation, + 0.1 x blur pin.
One FeatUp setting is not ours: FeatUp's implicit config fits raw features
(``use_norm: false``); ``use_norm`` defaults to True here (docs/implicit.md says why).

Deliberate differences from FeatUp's script (same model and loss, cheaper arithmetic):

* Fourier features use ``sin(a + p) = sin(a) cos(p) + cos(a) sin(p)``: ``a`` (position
  or colour times frequency) is fixed for an image, so its sine and cosine are computed
  once in float64. The phases, LayerNorm, dropout and first linear layer are then folded
  into one matrix product on those constants (``ImplicitNet._first_layer``).
* Jitter and blur are per-axis matrices (the exact taps of reflect pad + bilinear zoom +
  crop + flip, and the 5-tap Gaussian). Features are never jittered as a map: each
  view's rows are taken on its source band and the attention windows are pulled back
  through the column matrix (``ViewOps.pool``).
* The attention downsampler pools windows of 2 x stride centred on each patch
  (FeatUp: 29 px at stride 14/16) over a reflect-padded map, via 2 x 2 shifted block
  views instead of ``Unfold`` (4x less memory). Its input dropout is drawn per view and
  channel, not per (window, pixel, channel), and its random logit mask only runs while training.
* Scaling of the colour input (FeatUp's MinMaxScaler) uses the fit image's range,
  stored with the model, so tiles and other render sizes see the same inputs.
* Images larger than ``max_fit_pixels`` are fitted at a reduced size (aspect kept) and
  rendered at any size with the full-resolution colours.
"""

from __future__ import annotations

from .config import SETTINGS, ImplicitConfig, resolve_config
from .features import ImplicitFeatures
from .fit import FitProgress, ImplicitFitter, fit_implicit, iter_fit_implicit
from .model import AttentionDownsampler, ImplicitNet
from .upsampler import ImplicitOptions, ImplicitUpsampler
from .views import Jitter, ViewOps

__all__ = [
    "SETTINGS",
    "AttentionDownsampler",
    "FitProgress",
    "ImplicitConfig",
    "ImplicitFeatures",
    "ImplicitFitter",
    "ImplicitNet",
    "ImplicitOptions",
    "ImplicitUpsampler",
    "Jitter",
    "ViewOps",
    "fit_implicit",
    "iter_fit_implicit",
    "resolve_config",
]

"""torch.hub entry points, as FeatUp's: ``torch.hub.load(REPO, "dinov2", use_norm=True)``.

One plain function per backbone in FeatUp's checkpoint table
(``napari_featup.upsamplers.featup_jbu.FEATUP_CHECKPOINTS``, via
``napari_featup.hub.HUB_MODELS``), made by ``napari_featup.hub.hub_entry``: adding a
checkpoint to the table adds its entry point here. Each returns
:class:`napari_featup.hub.UpsampledBackbone` in eval mode: ``model(x)`` gives the
JBU-upsampled features of an ImageNet-normalised image, ``model.model(x)`` the low-res
ones, ``model.upsampler`` the JBU stack.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from napari_featup import hub as _hub

dependencies = ["torch", "torchvision", "timm"]

# torch.hub lists the module's public callables: define them as module globals
for _name in _hub.HUB_MODELS:
    globals()[_name] = _hub.hub_entry(_name)
del _name

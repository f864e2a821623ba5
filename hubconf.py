"""torch.hub entry points, as FeatUp's: ``torch.hub.load(REPO, "dinov2", use_norm=True)``.

Each returns :class:`napari_featup.hub.UpsampledBackbone` in eval mode: ``model(x)`` gives
the JBU-upsampled features of an ImageNet-normalised image, ``model.model(x)`` the
low-res ones, ``model.upsampler`` the JBU stack.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from napari_featup.hub import load  # noqa: E402

dependencies = ["torch", "torchvision", "timm"]


def dino16(pretrained: bool = True, use_norm: bool = True):
    return load("dino16", use_norm=use_norm, pretrained=pretrained)


def dinov2(pretrained: bool = True, use_norm: bool = True):
    return load("dinov2", use_norm=use_norm, pretrained=pretrained)


def clip(pretrained: bool = True, use_norm: bool = True):
    return load("clip", use_norm=use_norm, pretrained=pretrained)


def maskclip(pretrained: bool = True, use_norm: bool = False):
    return load("maskclip", use_norm=use_norm, pretrained=pretrained)


def vit(pretrained: bool = True, use_norm: bool = True):
    return load("vit", use_norm=use_norm, pretrained=pretrained)


def resnet50(pretrained: bool = True, use_norm: bool = True):
    return load("resnet50", use_norm=use_norm, pretrained=pretrained)

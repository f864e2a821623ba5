"""The backbone registry: one decorator per backbone family, in the style of timm's
``register_model``.

A *family* is a :class:`BackboneFamily` subclass: how its models are built from timm,
how original-format weight files are converted to timm's keys, and how a (B, 3, H, W)
tensor becomes a (B, C, h, w) feature grid. :func:`register_backbone` records one or more
:class:`BackboneSpec` (name, timm model, dim, stride, licence, group ...) against it.
Names with a registered prefix (``timm:``) are resolved to a spec on demand.

Whether a FeatUp JBU checkpoint exists is not written here: it is read from the one
table that holds it, ``FEATUP_CHECKPOINTS`` next to the FeatUp JBU code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ..errors import BackboneError

#: the groups a backbone belongs to, in the order the listing shows them
GROUPS = ("featup", "modern", "custom")

#: ImageNet mean / std: what every backbone receives (FeatUp's convention, CLIP included)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def featup_checkpoint_settings(name: str) -> tuple[bool, ...]:
    """The ``use_norm`` settings FeatUp published a JBU checkpoint for, for backbone ``name``.

    Read lazily from ``FEATUP_CHECKPOINTS``, the single table, which lives with the FeatUp
    JBU code (``upsamplers/featup_jbu/checkpoints.py``).

    Parameters
    ----------
    name : str
        A backbone name.

    Returns
    -------
    tuple of bool
        Empty for backbones without a published stack.
    """
    try:
        from ..upsamplers.featup_jbu.checkpoints import FEATUP_CHECKPOINTS
    except ImportError:  # the JBU code is still one module
        from ..upsamplers.featup_jbu import FEATUP_CHECKPOINTS
    return tuple(FEATUP_CHECKPOINTS.get(str(name).lower(), ()))


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone is.

    Attributes
    ----------
    name, timm_name
        Our name and the timm model (with pretrained tag) it is built from.
    dim, stride
        Output channels and pixels per grid cell.
    description, licence
        One line each; ``licence`` is that of the pretrained weights.
    group
        ``"featup"`` (FeatUp's six), ``"modern"`` or ``"custom"`` (``timm:<name>``).
    text_tower
        The published model has an aligned text encoder (CLIP family; see
        :mod:`napari_featup.text` for the backbones whose features it answers).
    mean, std
        Input normalisation the weights were trained with, when it is not ImageNet's:
        the backbone converts its ImageNet-normalised input to it.
    family
        The :class:`BackboneFamily` that builds and runs it (set by the registry).
    """

    name: str
    timm_name: str
    dim: int
    stride: int
    description: str
    licence: str = ""
    group: str = "modern"
    text_tower: bool = False
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    family: type[BackboneFamily] | None = field(default=None, compare=False, repr=False)

    @property
    def featup_checkpoint(self) -> bool:
        """FeatUp published a JBU stack for this backbone."""
        return bool(featup_checkpoint_settings(self.name))

    @property
    def hub_repo(self) -> str | None:
        """The Hugging Face repository its pretrained weights come from (None: unknown),
        as its family says (:meth:`BackboneFamily.hub_repo`)."""
        return self.family.hub_repo(self) if self.family is not None else None

    @property
    def learned_upsamplers(self) -> tuple[str, ...]:
        """Learned upsamplers with published weights for this backbone."""
        return ("featup-jbu",) if self.featup_checkpoint else ()

    def describe(self) -> dict[str, Any]:
        """The spec as plain values, for listings and metadata."""
        settings = featup_checkpoint_settings(self.name)
        return {
            "name": self.name,
            "group": self.group,
            "timm_name": self.timm_name,
            "dim": self.dim,
            "stride": self.stride,
            "licence": self.licence,
            "description": self.description,
            "text_tower": self.text_tower,
            "featup_jbu": settings,
            "learned_upsampler": (
                "FeatUp JBU (" + ", ".join("norm" if s else "no_norm" for s in settings) + ")"
                if settings
                else "none published: train your own JBU (weights=PATH)"
            ),
        }


class BackboneFamily:
    """How one family of backbones is built, loaded and run.

    Subclasses override :meth:`features` and, where needed, :meth:`timm_kwargs` and
    :meth:`convert`. All methods are classmethods: a family holds no state.
    """

    #: reflect-pad inputs to a multiple of the stride before the model (see pad_to_stride)
    pads: ClassVar[bool] = True

    @classmethod
    def timm_kwargs(cls, spec: BackboneSpec) -> dict[str, Any]:
        """Extra ``timm.create_model`` arguments."""
        return {"num_classes": 0}

    @classmethod
    def build(cls, spec: BackboneSpec, pretrained: bool) -> nn.Module:
        """The timm model, with timm's pretrained weights or its random initialisation."""
        from ._timm import create_timm

        return create_timm(spec.timm_name, pretrained, **cls.timm_kwargs(spec))

    @classmethod
    def hub_repo(cls, spec: BackboneSpec) -> str | None:
        """The Hugging Face repository the pretrained weights come from (None: unknown)."""
        from ._timm import hf_repo

        return hf_repo(spec.timm_name)

    @classmethod
    def convert(
        cls, spec: BackboneSpec, state: dict[str, torch.Tensor], model: nn.Module
    ) -> dict[str, torch.Tensor]:
        """Map an original-format state dict onto ``model``'s keys (timm's converter)."""
        from ._timm import timm_filter

        return timm_filter(state, model)

    @classmethod
    def features(cls, spec: BackboneSpec, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), H and W multiples of the stride when ``pads`` -> (B, dim, h, w)."""
        raise NotImplementedError


FamilyT = TypeVar("FamilyT", bound=type)

_SPECS: dict[str, BackboneSpec] = {}
_PREFIXES: dict[str, Callable[[str], BackboneSpec]] = {}
_RESOLVED: dict[str, BackboneSpec] = {}


def register_backbone(*specs: BackboneSpec) -> Callable[[FamilyT], FamilyT]:
    """Class decorator: register ``specs`` as backbones of the decorated family.

    Parameters
    ----------
    *specs
        One :class:`BackboneSpec` per backbone (``family`` left unset), listed by
        :func:`list_backbones` in registration order.

    Returns
    -------
    callable
        The decorator; it returns the family class unchanged.
    """

    def decorate(cls: FamilyT) -> FamilyT:
        if not (isinstance(cls, type) and issubclass(cls, BackboneFamily)):
            raise TypeError(f"register_backbone decorates BackboneFamily classes, not {cls!r}")
        for spec in specs:
            key = spec.name.lower()
            if key in _SPECS and _SPECS[key].family is not cls:
                raise ValueError(f"backbone {spec.name!r} is registered twice")
            if spec.group not in GROUPS:
                raise ValueError(f"backbone {spec.name!r}: group must be one of {GROUPS}")
            _SPECS[key] = dataclasses.replace(spec, name=key, family=cls)
        return cls

    return decorate


def register_prefix(prefix: str, resolve: Callable[[str], BackboneSpec]) -> None:
    """Resolve names starting with ``prefix`` with ``resolve``.

    Parameters
    ----------
    prefix : str
        e.g. ``"timm:"``.
    resolve : callable
        ``resolve(name) -> BackboneSpec`` for a name with the prefix.
    """
    _PREFIXES[prefix] = resolve


def _prefix_of(name: str) -> str | None:
    low = name.lower()
    return next((p for p in _PREFIXES if low.startswith(p)), None)


def is_backbone_name(name: str) -> bool:
    """Whether ``name`` is a registered backbone or has a registered prefix.

    Parameters
    ----------
    name : str
        The name to check (a prefixed name is not resolved).

    Returns
    -------
    bool
    """
    return str(name).lower() in _SPECS or _prefix_of(str(name)) is not None


def get_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` for ``name``.

    Registered names are case-insensitive; after a prefix such as ``timm:`` the model
    name is kept as typed (Hugging Face repository names are case-sensitive).

    Parameters
    ----------
    name : str
        A registered name or one with a registered prefix.

    Returns
    -------
    BackboneSpec

    Raises
    ------
    BackboneError
        An unknown name (the message lists the registered ones).
    """
    name = str(name)
    key = name.lower()
    if key in _SPECS:
        return _SPECS[key]
    prefix = _prefix_of(name)
    if prefix is None:
        raise BackboneError(
            f"unknown backbone {name!r}; choose one of {', '.join(_SPECS)}, "
            f"or {' / '.join(p + '<model name>' for p in _PREFIXES)}"
        )
    if name not in _RESOLVED:
        _RESOLVED[name] = _PREFIXES[prefix](name)
    return _RESOLVED[name]


def list_backbones(group: str | None = None) -> list[str]:
    """Registered backbone names, in listing order.

    ``timm:<model name>`` is accepted too and is not listed.

    Parameters
    ----------
    group : str, optional
        Only this group's names (``"featup"``, ``"modern"``, ...; see
        :func:`describe_backbones`).

    Returns
    -------
    list of str
    """
    if group is not None and group not in GROUPS:
        raise BackboneError(f"unknown backbone group {group!r}; choose one of {GROUPS}")
    return [n for n, s in _SPECS.items() if group is None or s.group == group]


def describe_backbones(group: str | None = None) -> dict[str, dict[str, Any]]:
    """Each registered backbone as plain values, for listings and metadata.

    Parameters
    ----------
    group : str, optional
        Only this group (``"featup"``, ``"modern"``).

    Returns
    -------
    dict of str to dict
        Name -> :meth:`BackboneSpec.describe` (group, dim, stride, licence, learned
        upsampler, ...).
    """
    return {n: _SPECS[n].describe() for n in list_backbones(group)}

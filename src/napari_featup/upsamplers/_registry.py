"""The upsampler registry: one decorator per upsampler, in the style of timm's
``register_model``.

An upsampler is one module holding an :class:`~napari_featup.upsamplers.base.Upsampler`
subclass decorated with :func:`register_upsampler`; its options are a dataclass whose
fields (with defaults) are the ``KEY=VALUE`` items users type. Capabilities are class
attributes of the upsampler (``linear``, ``tileable``/``halo``, ``fits_per_image``,
``factored``), read by the pipeline and the feature field.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import UpsamplerError

U = TypeVar("U", bound=type)


@dataclass(frozen=True)
class NoOptions:
    """The options of an upsampler that takes none."""


@dataclass(frozen=True)
class UpsamplerInfo:
    """What the registry knows of one upsampler.

    Attributes
    ----------
    name, description : str
        The registered name and its one-line description.
    cls : type
        The :class:`~napari_featup.upsamplers.base.Upsampler` subclass.
    options : type
        The dataclass of its options.
    takes_weights : bool
        Whether ``load_upsampler(..., weights=...)`` applies.
    default_use_norm : bool
        FeatUp's channel LayerNorm when the caller does not say.
    licence, citation : str
        Of the method and its published weights (empty when not applicable).
    """

    name: str
    cls: type
    description: str
    options: type
    takes_weights: bool
    default_use_norm: bool
    licence: str = ""
    citation: str = ""

    def defaults(self) -> dict[str, Any]:
        """Option name -> default value, for the options that have one (an option whose
        default is None is an override of something else, e.g. a preset's value)."""
        out = {f.name: _default(f) for f in dataclasses.fields(self.options)}
        return {k: v for k, v in out.items() if v is not None}


_REGISTRY: dict[str, UpsamplerInfo] = {}


def register_upsampler(
    name: str,
    *,
    description: str,
    options: type = NoOptions,
    takes_weights: bool = False,
    default_use_norm: bool = False,
    licence: str = "",
    citation: str = "",
) -> Callable[[U], U]:
    """Class decorator: register an :class:`Upsampler` subclass under ``name``.

    The class builds itself with its ``build`` classmethod.

    Parameters
    ----------
    name : str
        The name :func:`load_upsampler` takes.
    description : str
        One line, shown in listings and the widget.
    options : type
        A dataclass of the options it takes (field defaults are the defaults).
    takes_weights : bool
        Whether ``load_upsampler(..., weights=...)`` applies.
    default_use_norm : bool
        FeatUp's channel LayerNorm when the caller does not say.
    licence, citation : str
        Of the method and its weights, shown in listings.

    Returns
    -------
    callable
        The decorator; it returns the class unchanged.
    """
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"options of upsampler {name!r} must be a dataclass, got {options!r}")

    def decorate(cls: U) -> U:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"upsampler {name!r} is registered twice")
        cls.name = name
        cls.description = description
        _REGISTRY[name] = UpsamplerInfo(
            name, cls, description, options, takes_weights, default_use_norm, licence, citation
        )
        return cls

    return decorate


def upsampler_info(name: str) -> UpsamplerInfo:
    """The registry entry of upsampler ``name``.

    Parameters
    ----------
    name : str
        A registered upsampler.

    Returns
    -------
    UpsamplerInfo

    Raises
    ------
    UpsamplerError
        No such upsampler (the message names the choices).
    """
    key = str(name).lower()
    if key not in _REGISTRY:
        raise UpsamplerError(f"unknown upsampler {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def registered() -> dict[str, UpsamplerInfo]:
    """Name -> entry, in registration order."""
    return dict(_REGISTRY)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _coerce(name: str, key: str, value: Any, kind: Any) -> Any:
    """``value`` as the annotated type ``kind`` (int, float, bool, str, or X | None)."""
    args = typing.get_args(kind)
    if type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        kind = next(a for a in args if a is not type(None))
    if isinstance(value, str) and kind in (int, float, bool):
        with contextlib.suppress(ValueError, SyntaxError):
            value = ast.literal_eval(value.strip())
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: (
            isinstance(v, int)
            and not isinstance(v, bool)
            or (isinstance(v, float) and v.is_integer())
        ),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }.get(kind)
    if ok is None:
        return value
    if not ok(value):
        raise UpsamplerError(
            f"{name} option {key}={value!r} is not a{'n' if kind is int else ''} {kind.__name__}"
        )
    return kind(value)


def make_options(name: str, options: dict[str, Any] | None = None) -> Any:
    """Validated options of upsampler ``name`` from a dict (values may be strings).

    Parameters
    ----------
    name : str
        A registered upsampler.
    options : dict, optional
        Option name -> value; strings are converted to the field's type.

    Returns
    -------
    object
        An instance of the upsampler's options dataclass.

    Raises
    ------
    UpsamplerError
        An unknown key (naming the accepted ones) or a value of the wrong type; range
        checks are the options class's ``__post_init__``.
    """
    info = upsampler_info(name)
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(info.options)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        accepted = ", ".join(sorted(fields)) or "none"
        short = info.name.removeprefix("featup-")
        raise UpsamplerError(
            f"{info.name} takes no options {unknown} (unknown {short} option names are "
            f"refused; unknown options are not ignored). It accepts: {accepted}"
        )
    hints = typing.get_type_hints(info.options)
    values = {k: _coerce(info.name, k, v, hints.get(k, Any)) for k, v in options.items()}
    try:
        return info.options(**values)
    except UpsamplerError:
        raise
    except (TypeError, ValueError) as exc:
        raise UpsamplerError(f"{info.name}: {exc}") from exc


def parse_options(text: str | Sequence[str] | None) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` option items, as typed in the widget or on the command line.

    Values are read as Python literals (numbers, True/False, None) where they parse and
    kept as strings otherwise.

    Parameters
    ----------
    text : str, sequence of str or None
        ``"steps=40, settings=featup"`` or ``["steps=40", "settings=featup"]``.

    Returns
    -------
    dict of str to object
        e.g. ``{"steps": 40, "settings": "featup"}``.

    Raises
    ------
    UpsamplerError
        An item without ``=``.
    """
    if text is None:
        return {}
    items = text.replace(";", ",").split(",") if isinstance(text, str) else list(text)
    options: dict[str, Any] = {}
    for item in items:
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UpsamplerError(
                f"upsampler options are KEY=VALUE items (e.g. steps=40), got {item.strip()!r}"
            )
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return options

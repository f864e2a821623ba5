"""Are the weights a run needs here, or can they be fetched? Asked before the run.

Offline, timm's hub download retries for about 48 s before it gives up, and FeatUp's
checkpoint download waits for its timeout; a machine that cannot reach the server is
told in a second instead. The check is cheap: a look in the cache, then (only when the
weights are not cached and the hub is not marked offline, ``HF_HUB_OFFLINE``, which
makes the library fail at once by itself) one TCP connection to the server with a
short timeout. The downloads themselves are the library's, unchanged.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from ..backbones import get_spec
from ..errors import UpsamplerError, WeightsUnavailableError

PROBE_TIMEOUT_S = 3.0


def hub_offline() -> bool:
    """Whether the Hugging Face hub is marked offline (``HF_HUB_OFFLINE``)."""
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to ``url``'s server opens within ``timeout`` s, else
    why not. Runs in a thread so a stalled name lookup cannot hold the caller."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: dict[str, str | None] = {}

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["why"] = None
        except OSError as exc:
            result["why"] = f"{type(exc).__name__}: {exc}"

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    if "why" not in result:
        return f"no answer from {host} within {timeout:g} s"
    why = result["why"]
    return None if why is None else f"{host} cannot be reached ({why})"


def _hub_cache() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001
        return Path(os.path.expanduser("~/.cache/huggingface/hub"))


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except Exception:  # noqa: BLE001
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def backbone_cached(backbone: str) -> bool:
    """Whether timm's pretrained weights for ``backbone`` are in the Hugging Face cache
    (timm falls back to them offline)."""
    from ..backbones import pretrained_cached

    return pretrained_cached(backbone)


def _from_hub(backbone: str) -> bool:
    """Whether ``backbone``'s pretrained weights come from the Hugging Face hub (the
    only server the check knows how to reach)."""
    try:
        return get_spec(backbone).hub_repo is not None
    except Exception:  # noqa: BLE001 - unknown: do not block the run
        return False


def _published_checkpoint(
    upsampler: str, backbone: str, use_norm: bool | None, options: dict | None = None
):
    """(cached path, URL) of the published weights ``upsampler`` loads when given none,
    or None when it has none (or they cannot be located): asked of the upsampler class
    (:meth:`~napari_featup.upsamplers.base.Upsampler.published_weights`)."""
    from ..upsamplers import make_options, upsampler_info

    try:
        info = upsampler_info(upsampler)
        opts = make_options(upsampler, options or {})
    except (UpsamplerError, ValueError):  # the run itself reports a bad name or option
        return None
    if not info.takes_weights:
        return None
    return info.cls.published_weights(backbone, use_norm, opts)


def check_weights(
    backbone: str,
    weights: str = "pretrained",
    upsampler: str = "bilinear",
    upsampler_weights: str | None = None,
    use_norm: bool | None = None,
    upsampler_options: dict | None = None,
) -> None:
    """Raise :class:`~napari_featup.errors.WeightsUnavailableError` at once when
    weights this run needs are neither cached nor reachable. Its ``part`` attribute
    says whose: ``"backbone"`` or ``"upsampler"``."""
    needs_hub = weights == "pretrained" and not hub_offline()
    if needs_hub and not backbone_cached(backbone) and _from_hub(backbone):
        why = unreachable(_hub_endpoint())
        if why is not None:
            spec = get_spec(backbone)
            exc = WeightsUnavailableError(
                f"pretrained weights for backbone {backbone!r} (timm model "
                f"{spec.timm_name!r}) are not in the Hugging Face cache ({_hub_cache()}), "
                f"and {why}. On a machine with internet, `napari-featup download "
                f"{backbone}` fetches them; copy that cache folder here (it moves with "
                "HF_HOME or HF_HUB_CACHE)."
            )
            exc.part = "backbone"
            raise exc
    if upsampler_weights is None:
        published = _published_checkpoint(upsampler, backbone, use_norm, upsampler_options)
        if published is not None and not published[0].is_file():
            path, url = published
            why = unreachable(url)
            if why is not None:
                exc = WeightsUnavailableError(
                    f"{upsampler}'s published checkpoint for {backbone!r} is not in the "
                    f"cache ({path}), and {why}. On a machine with internet, "
                    f"`napari-featup download {backbone}` fetches it; copy it to {path} "
                    "(the cache folder moves with $NAPARI_FEATUP_CACHE)."
                )
                exc.part = "upsampler"
                raise exc

"""Files from the Hugging Face cache, fetched when missing, with an error that says what
to do: for weights that timm does not download itself (open_clip's whole-model files,
tokenizers)."""

from __future__ import annotations

from pathlib import Path

from ..errors import WeightsUnavailableError


def hub_cache() -> str:
    """The Hugging Face cache folder (moved by ``HF_HOME`` or ``HF_HUB_CACHE``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_file(
    repo: str,
    names: tuple[str, ...],
    what: str,
    backbone: str,
    alternative: str,
    download: bool = True,
) -> Path:
    """The first of ``names`` in Hugging Face ``repo`` that is cached, else the first
    that downloads (when ``download``).

    Parameters
    ----------
    repo : str
        The repository, e.g. ``"timm/ViT-B-16-SigLIP2"``.
    names : tuple of str
        File names in it, the preferred first.
    what, backbone, alternative : str
        For the error: what the file is, whose it is, and the local way out
        ("pass weights=PATH to ...").
    download : bool
        Fetch when not cached.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    WeightsUnavailableError
        Neither cached nor downloadable; names the file, the cache and
        ``napari-featup download``.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = hub_cache()
    for name in names:  # a cached file first, so offline use never touches the network
        hit = try_to_load_from_cache(repo, name, cache_dir=cache)
        if isinstance(hit, str):
            return Path(hit)
    errors = []
    for name in names if download else ():
        try:
            return Path(hf_hub_download(repo, name, cache_dir=cache))
        except Exception as exc:  # noqa: BLE001 - offline, missing file and hub errors differ
            errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    raise WeightsUnavailableError(
        f"{what} of backbone {backbone!r} ({names[0]} in the Hugging Face repository "
        f"{repo}) is not in the cache ({cache}; moved by HF_HOME or HF_HUB_CACHE)"
        + (f" and could not be downloaded ({'; '.join(errors)})" if errors else "")
        + f". On a machine with internet run `napari-featup download {backbone}` and copy "
        f"that cache folder here, or {alternative}."
    )

"""The fitted result: :class:`ImplicitFeatures` renders one image's features at any
size (in row tiles), and saves to / loads from a plain dict of tensors (the
``napari-featup-implicit`` file format, read with ``weights_only=True``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...devices import resolve_device
from ...errors import FeatureFileError, ImageError, UpsamplerError
from ...ops import resize_bilinear
from .model import ImplicitNet

#: the ``format`` entry of a saved fit, and the newest version this code reads
FORMAT = "napari-featup-implicit"
FORMAT_VERSION = 1


class ImplicitFeatures:
    """A fitted implicit model: features of one image at any resolution.

    ``render(size)`` gives (1, C, H, W) float32 backbone-dimension features covering the
    whole image (the fitted one, without stride padding) at ``size`` = (H, W).
    """

    def __init__(
        self,
        net: ImplicitNet,
        components: torch.Tensor,
        mean: torch.Tensor,
        colour_range: torch.Tensor,
        image: torch.Tensor,
        fit_size: tuple[int, int],
        content_size: tuple[int, int],
        original_size: tuple[int, int],
        info: dict,
    ):
        self.net = net.eval()
        self.components = components  # (P, C)
        self.mean = mean  # (C,)
        self.colour_range = colour_range  # (2, 3): min, max of the normalised fit image
        self.image = image  # (1, 3, Hc, Wc) normalised colours of the fitted content
        self.fit_size = tuple(int(v) for v in fit_size)
        self.content_size = tuple(int(v) for v in content_size)
        self.original_size = tuple(int(v) for v in original_size)
        self.info = dict(info)

    @property
    def dim(self) -> int:
        """Channels of the rendered features (the backbone's dimension)."""
        return int(self.components.shape[1])

    @property
    def device(self) -> torch.device:
        """Where the model and its tensors live."""
        return self.components.device

    def to(self, device: str | torch.device) -> ImplicitFeatures:
        """Move everything to ``device`` (``"auto"`` allowed), in place; returns self."""
        dev = resolve_device(device)
        self.net.to(dev)
        self.components, self.mean = self.components.to(dev), self.mean.to(dev)
        self.colour_range, self.image = self.colour_range.to(dev), self.image.to(dev)
        return self

    def _scaled_colour(self, image: torch.Tensor) -> torch.Tensor:
        lo, hi = self.colour_range[0], self.colour_range[1]
        return (image - lo[:, None, None]) / (hi - lo).clamp_min(1e-4)[:, None, None] - 0.5

    def _coords(self, size: tuple[int, int], rows: slice) -> torch.Tensor:
        """Model coordinates of render pixels ``rows`` of a ``size`` render: (R*W, 2)."""
        (hh, ww), (hf, wf), (hc, wc) = size, self.fit_size, self.content_size
        dev = self.device
        r = torch.arange(rows.start, rows.stop, device=dev, dtype=torch.float64)
        c = torch.arange(ww, device=dev, dtype=torch.float64)
        # render pixel -> fit-image pixel (pixel centres aligned over the content) -> [-1, 1]
        fy = (r + 0.5) * hc / hh - 0.5
        fx = (c + 0.5) * wc / ww - 0.5
        y = -1 + 2 * fy / max(hf - 1, 1)
        x = -1 + 2 * fx / max(wf - 1, 1)
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)

    def tile_rows(self, width: int, budget_bytes: int = 128 << 20) -> int:
        """Rows per render tile so intermediates stay near ``budget_bytes``."""
        per_px = 4 * (2 * 5 * self.net.n_freqs * 4 + 128 * 6 + 2 * self.dim)
        return max(1, int(budget_bytes // (per_px * max(1, width))))

    @torch.no_grad()
    def render(
        self,
        size: tuple[int, int] | None = None,
        rows: slice | None = None,
        image: torch.Tensor | None = None,
        budget_bytes: int = 128 << 20,
        space: str = "features",
    ) -> torch.Tensor:
        """Features at ``size`` = (H, W) (default: the original image size).

        ``rows`` renders only those output rows; ``image`` (1, 3, H, W), normalised,
        supplies the colours at the render size (default: the fitted image resized).
        Rendered in row tiles of about ``budget_bytes``. Returns (1, C, R, W) float32,
        or with ``space="pca"`` the network's (1, P, R, W) PCA coordinates ``z``
        (features = ``components.T @ z + mean``).
        """
        if space not in ("features", "pca"):
            raise UpsamplerError(f"space must be 'features' or 'pca', got {space!r}")
        pca = space == "pca"
        size = self.original_size if size is None else (int(size[0]), int(size[1]))
        if len(size) != 2 or size[0] < 1 or size[1] < 1:
            raise UpsamplerError(f"render size must be (H, W) with H, W >= 1, got {size!r}")
        hh, ww = size
        r0, r1, step = (rows or slice(0, hh)).indices(hh)
        if step != 1:
            raise UpsamplerError("render rows must be a contiguous slice (step 1)")
        if image is not None and (
            image.ndim != 4 or image.shape[:2] != (1, 3) or tuple(image.shape[-2:]) != size
        ):
            raise ImageError(
                f"render image must be (1, 3, {hh}, {ww}) to match the render size, "
                f"got {tuple(image.shape)}"
            )
        p = int(self.components.shape[0])
        out = torch.empty((1, p if pca else self.dim, r1 - r0, ww), device=self.device)
        n = self.tile_rows(ww, budget_bytes)
        for a in range(r0, r1, n):
            b = min(r1, a + n)
            if image is not None:
                col = image[:, :, a:b].to(self.device, torch.float32)
            else:
                col = resize_bilinear(self.image, size, slice(a, b))
            col = self._scaled_colour(col[0]).reshape(3, -1).T
            e = ImplicitNet.encode(self._coords(size, slice(a, b)), col, self.net.n_freqs)
            z = self.net(e)  # (N, P)
            f = z if pca else z @ self.components + self.mean  # (N, P or C)
            out[0, :, a - r0 : b - r0] = f.T.reshape(out.shape[1], b - a, ww)
        return out

    def state(self) -> dict:
        """A plain dict of tensors, numbers and strings (torch.save-able, loadable with
        ``weights_only=True``)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "n_freqs": int(self.net.n_freqs),
            "components": self.components.cpu(),
            "mean": self.mean.cpu(),
            "colour_range": self.colour_range.cpu(),
            # float32: the e^10 colour frequencies make features sensitive to rounding
            "image": self.image.cpu(),
            "fit_size": list(self.fit_size),
            "content_size": list(self.content_size),
            "original_size": list(self.original_size),
            "info": self.info,
        }

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write to ``path`` (via a temporary name, then rename); returns the path.

        Raises :class:`FileExistsError` when ``path`` exists and ``overwrite`` is False.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(path)
        return path

    @classmethod
    def from_state(cls, st: dict, device: str | torch.device = "cpu") -> ImplicitFeatures:
        """Rebuild from a :meth:`state` dict on ``device``.

        Raises
        ------
        FeatureFileError
            Not this format, a newer format version, or entries missing or mismatched.
        """
        if not isinstance(st, dict) or st.get("format") != FORMAT:
            raise FeatureFileError(f"not a {FORMAT} file (no 'format': {FORMAT!r} entry)")
        if int(st.get("format_version", -1)) > FORMAT_VERSION:
            raise FeatureFileError(
                f"file format version {st['format_version']} is newer than this "
                f"napari-featup reads ({FORMAT_VERSION}); update napari-featup"
            )
        try:
            comps = st["components"].float()
            net = ImplicitNet(int(st["n_freqs"]), int(comps.shape[0]))
            net.load_state_dict(st["net"])
            feats = cls(
                net,
                comps,
                st["mean"].float(),
                st["colour_range"].float(),
                st["image"].float(),
                tuple(st["fit_size"]),
                tuple(st["content_size"]),
                tuple(st["original_size"]),
                dict(st.get("info", {})),
            )
        except (KeyError, TypeError, AttributeError, RuntimeError) as exc:
            # a truncated or hand-edited file: say so rather than leak a KeyError
            raise FeatureFileError(f"a {FORMAT} entry is missing or malformed: {exc}") from exc
        return feats.to(resolve_device(device))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ImplicitFeatures:
        """Read a file written by :meth:`save` (no arbitrary unpickling).

        Raises
        ------
        FileNotFoundError
            No file at ``path``.
        FeatureFileError
            The file is not a readable saved fit.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"implicit features file {str(path)!r} does not exist")
        try:
            st = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises several types here
            raise FeatureFileError(f"{path} is not a readable {FORMAT} file: {exc}") from exc
        return cls.from_state(st, device)


__all__ = ["FORMAT", "FORMAT_VERSION", "ImplicitFeatures"]

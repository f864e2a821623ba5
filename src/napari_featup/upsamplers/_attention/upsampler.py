"""What AnyUp and JAFAR share: an upsampler whose output is a convex combination of the
unmodified low-res feature vectors, with attention weights between full-resolution
image queries and low-res keys computed from the image and all C feature channels.

:class:`AttentionUpsampler` evaluates any band of output rows exactly: the image is
encoded once per (image, features) pair (:class:`~.encoded.EncodedImage`:
whole-image GroupNorm statistics and the pooled keys), then each band needs only its
own queries (plus one halo row for their 3x3 conv) and the keys. Subclasses give the
weights, the low-res key head and the attention pattern.
"""

from __future__ import annotations

import contextlib
import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ... import weights as _weights
from ...errors import UpsamplerError, WeightsFileError
from ...progress import check_cancelled
from ..base import Kernels, Upsampler
from .cost import attention_cost
from .encoded import EncodedImage, rms_project
from .encoder import Block, EncoderWeights

#: label of untrained weights in metadata and messages
RANDOM_LABEL = "random (untrained weights, for tests and demos only)"


def conv_mat(conv: nn.Module | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv's weight as an (in, out) matrix: ``x @ m`` applies it to (N, in) rows."""
    w = conv.weight if isinstance(conv, nn.Module) else conv
    return w.detach().reshape(w.shape[0], w.shape[1]).t().to(like).contiguous()


def gn_affine(gn: nn.GroupNorm, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return gn.weight.detach().to(like), gn.bias.detach().to(like)


@dataclass
class Prepared:
    """One (features, image) pair, encoded: everything a band of output rows needs."""

    enc: EncodedImage
    keys: torch.Tensor  # (h*w, heads, head_dim): normed, projected keys
    values: torch.Tensor  # (C, h*w): the unmodified low-res features
    conv: torch.Tensor  # (D, D, 3, 3) query conv
    wq: torch.Tensor  # (D, D) (in, out) query projection, RMSNorm weight and 1/sqrt(d) folded
    bq: torch.Tensor  # (D,)
    size: tuple[int, int]
    grid: tuple[int, int]
    geometry: Any = None  # subclass data (AnyUp's windows)


class AttentionUpsampler(Upsampler):
    """Base of the learned attention upsamplers (see the module docstring)."""

    linear = False
    tileable = True
    fits_per_image = False
    content_linear = True
    heads: ClassVar[int] = 4
    #: query pixels per attention tile
    tile_pixels: ClassVar[int] = 8192

    def __init__(self, memory_mb: int = 1024):
        super().__init__()
        self.memory_mb = int(memory_mb)
        self.weights_source = ""
        self.release: str | None = None
        self._cache: tuple | None = None
        self._work: torch.Tensor | None = None  # working buffers kept between calls

    #: GroupNorm groups of the per-pixel encoders
    groups: ClassVar[int] = 8

    # ------------------------------------------------------------ subclass hooks
    def encoder_extras(self, like: torch.Tensor) -> dict:
        """Model-specific :class:`EncoderWeights` fields (JAFAR: the query norm and its
        guidance normalisation)."""
        return {}

    def encoder_weights(self, like: torch.Tensor) -> EncoderWeights:
        """The per-pixel encoders as matrices (both models name their modules alike)."""

        def blocks(seq):
            return [self.block(b.parts(), like) for b in seq[1:]]

        return EncoderWeights(
            w0=conv_mat(self.image_encoder[0], like),
            image=blocks(self.image_encoder),
            freqs=self.rope.freqs.detach().to(like),
            wk0=conv_mat(self.key_encoder[0], like),
            wq0=conv_mat(self.query_encoder[0], like),
            key=blocks(self.key_encoder),
            query=blocks(self.query_encoder),
            groups=self.groups,
            **self.encoder_extras(like),
        )

    def key_head(self, pooled: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Keys before their RMSNorm, (h*w, D), from the pooled image keys (h, w, D)
        and the features (C, h, w)."""
        raise NotImplementedError

    # both models name their cross-attention decoder alike (their checkpoints' keys)
    def attention(self) -> nn.MultiheadAttention:
        return self.cross_decode.cross_attn.attention

    def norms_qk(self) -> tuple[torch.Tensor, torch.Tensor]:
        ca = self.cross_decode.cross_attn
        return ca.norm_q.weight, ca.norm_k.weight

    def query_conv(self) -> torch.Tensor:
        return self.cross_decode.conv2d.weight

    def geometry(self, size: tuple[int, int], grid: tuple[int, int]) -> Any:
        return None

    def attend(
        self, prep: Prepared, q: torch.Tensor, rows: slice, out: torch.Tensor, record=None
    ) -> None:
        """Write the output of ``rows`` into ``out`` (C, R, W), from their queries ``q``
        (R*W, heads, head_dim); ``record`` collects attention weights for kernels."""
        raise NotImplementedError

    @classmethod
    def keys_per_pixel(cls, grid: tuple[int, int], size: tuple[int, int]) -> float:
        """Mean keys an output pixel attends to (all of them unless windowed)."""
        return float(grid[0] * grid[1])

    @classmethod
    def cost(
        cls, channels: int, grid: tuple[int, int], size: tuple[int, int], options: Any = None
    ) -> tuple[float, int, int | None]:
        """See :meth:`Upsampler.cost` (:func:`.cost.attention_cost`)."""
        memory_mb = getattr(options, "memory_mb", 1024)
        return attention_cost(channels, cls.keys_per_pixel(grid, size), size, memory_mb)

    def kernel_entries(self, size: tuple[int, int], grid: tuple[int, int]) -> int:
        """Number of attention weights :meth:`make_kernels` would keep."""
        raise NotImplementedError

    def make_kernels(self, prep: Prepared, store: torch.dtype) -> Kernels:
        """The attention weights of ``prep`` (kept in ``store`` precision)."""
        raise NotImplementedError

    def check_features(self, lowres: torch.Tensor) -> None:
        """Raise for features this model cannot take (JAFAR: a fixed channel count)."""

    # ------------------------------------------------------------ helpers
    @staticmethod
    def block(parts: tuple, like: torch.Tensor) -> Block:
        n1, c1, n2, c2 = parts
        return Block(
            gn_affine(n1, like), conv_mat(c1, like), gn_affine(n2, like), conv_mat(c2, like)
        )

    def projections(self, like: torch.Tensor):
        """(wq, bq, wk, bk): in-projections as (in, out), RMSNorm weights folded in and
        the query scaled by 1/sqrt(head_dim), as MultiheadAttention scales it."""
        att = self.attention()
        d = att.embed_dim
        if att.in_proj_weight is not None:
            wq, wk = att.in_proj_weight[:d], att.in_proj_weight[d : 2 * d]
        else:
            wq, wk = att.q_proj_weight, att.k_proj_weight
        b = att.in_proj_bias.detach().cpu().double()  # CPU: MPS has no float64
        gq, gk = (g.detach().cpu().double() for g in self.norms_qk())
        scale = 1.0 / math.sqrt(d // self.heads)
        wq = (wq.detach().cpu().double().t() * gq[:, None]) * scale
        wk = wk.detach().cpu().double().t() * gk[:, None]
        return tuple(t.to(like).contiguous() for t in (wq, b[:d] * scale, wk, b[d : 2 * d]))

    def _dtype(self, lowres: torch.Tensor) -> torch.dtype:
        ok = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        return lowres.dtype if lowres.dtype in ok else torch.float32

    def _check(self, lowres: torch.Tensor, image: torch.Tensor) -> None:
        if lowres.ndim != 4 or image.ndim != 4 or image.shape[1] != 3:
            raise UpsamplerError(
                f"{self.name} takes features (B, C, h, w) and an image (B, 3, H, W); got "
                f"{tuple(lowres.shape)} and {tuple(image.shape)}"
            )
        if lowres.shape[0] != image.shape[0]:
            raise UpsamplerError(
                f"{self.name}: batch of features ({lowres.shape[0]}) and image "
                f"({image.shape[0]}) differ"
            )
        h, w = lowres.shape[-2:]
        if h < 2 or w < 2:
            raise UpsamplerError(
                f"{self.name} needs a feature grid of at least 2 x 2, got {h} x {w}"
            )
        self.check_features(lowres)

    # ------------------------------------------------------------ preparation
    def _budget(self) -> int:
        return self.memory_mb << 20

    @torch.no_grad()
    def prepare(self, feats: torch.Tensor, image: torch.Tensor) -> Prepared:
        """Encode one (C, h, w) feature grid and its (3, H, W) image."""
        like = self._like = feats
        ew = self.encoder_weights(like)
        grid, size = tuple(feats.shape[-2:]), tuple(image.shape[-2:])
        enc = EncodedImage(ew, image.to(like), grid, self._budget(), self._arena)
        wq, bq, wk, bk = self.projections(like)
        k = self.key_head(enc.pooled_keys, feats)
        keys = rms_project(k, wk, bk)
        d = keys.shape[1]
        return Prepared(
            enc=enc,
            keys=keys.view(-1, self.heads, d // self.heads),
            values=feats.reshape(feats.shape[0], -1),
            conv=self.query_conv().detach().to(like).contiguous(memory_format=torch.channels_last),
            wq=wq,
            bq=bq,
            size=size,
            grid=grid,
            geometry=self.geometry(size, grid),
        )

    def _arena(self, numel: int) -> torch.Tensor:
        """A flat float buffer of at least ``numel`` for the encoders' workspaces (used
        by one encoding at a time), kept for the next call up to half of ``memory_mb``:
        fresh memory is page-faulted (and zeroed by the OS) on every call."""
        like = self._like
        buf = self._work
        if (
            buf is None
            or buf.numel() < numel
            or buf.dtype != like.dtype
            or buf.device != like.device
            # made under inference_mode: not writable outside it
            or (buf.is_inference() and not torch.is_inference_mode_enabled())
        ):
            buf = like.new_empty(numel)
        keep = buf.numel() * buf.element_size() <= self._budget() // 2
        self._work = buf if keep else None
        return buf[:numel]

    def _param_version(self) -> int:
        return sum(_version(p) for p in self.parameters())

    def _prepared(self, lowres: torch.Tensor, image: torch.Tensor, keep: bool) -> list[Prepared]:
        dt = self._dtype(lowres)
        key = (_version(lowres), _version(image), dt, lowres.device, self._param_version())
        c = self._cache
        if c is not None and c[0] is lowres and c[1] is image and c[2] == key:
            return c[3]
        preps = [self.prepare(lowres[b].to(dt), image[b].to(dt)) for b in range(lowres.shape[0])]
        # the tensors themselves are held so that their ids cannot be reused meanwhile
        self._cache = (lowres, image, key, preps) if keep else None
        return preps

    def clear_cache(self) -> None:
        """Forget the encoded image and the working buffers kept between calls."""
        self._cache = None
        self._work = None

    # ------------------------------------------------------------ evaluation
    def tile_rows(self, prep: Prepared) -> int:
        return max(1, self.tile_pixels // prep.size[1])

    def queries(self, prep: Prepared, rows: slice) -> torch.Tensor:
        """Projected, scaled queries of ``rows``: (R*W, heads, head_dim)."""
        q = prep.enc.query_rows(rows, prep.conv).reshape(-1, prep.wq.shape[0])
        q = rms_project(q, prep.wq, prep.bq)
        return q.view(q.shape[0], self.heads, -1)

    def rows_of(
        self,
        prep: Prepared,
        rows: slice,
        record=None,
        out: torch.Tensor | None = None,
        weights_only: bool = False,
    ) -> torch.Tensor | None:
        """Output (C, R, W) of ``rows``, in tiles of :meth:`tile_rows` (with
        ``weights_only``: only the attention weights, for ``record``)."""
        W, c = prep.size[1], prep.values.shape[0]
        if out is None and not weights_only:
            out = prep.values.new_empty(c, rows.stop - rows.start, W)
        step = self.tile_rows(prep)
        for r0 in range(rows.start, rows.stop, step):
            check_cancelled()  # a band of rows can take minutes at large sizes
            sub = slice(r0, min(rows.stop, r0 + step))
            dst = None if out is None else out[:, r0 - rows.start : sub.stop - rows.start]
            self.attend(prep, self.queries(prep, sub), sub, dst, record)
        return out

    @torch.no_grad()
    def forward(self, lowres: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The upsampled features (B, C, H, W) at the image's size."""
        self._check(lowres, image)
        preps = self._prepared(lowres, image, keep=False)
        H, W = image.shape[-2:]
        out = preps[0].values.new_empty(len(preps), lowres.shape[1], H, W)
        for b, p in enumerate(preps):
            self.rows_of(p, slice(0, H), out=out[b])
        return out

    @torch.no_grad()
    def upsample(
        self, lowres: torch.Tensor, image: torch.Tensor, rows: slice | None = None
    ) -> torch.Tensor:
        """Rows of the output, exactly as in :meth:`forward`; the encoded image is kept
        between calls with the same tensors, so tiling costs one encoding."""
        self._check(lowres, image)
        H = image.shape[-2]
        r0, r1, _ = (rows or slice(0, H)).indices(H)
        preps = self._prepared(lowres, image, keep=True)
        out = preps[0].values.new_empty(len(preps), lowres.shape[1], r1 - r0, image.shape[-1])
        for b, p in enumerate(preps):
            self.rows_of(p, slice(r0, r1), out=out[b])
        if r1 == H:  # the last band: kept queries are not needed in the usual row order
            for p in preps:
                p.enc.release_queries()
        return out

    @torch.no_grad()
    def content_kernels(
        self, lowres: torch.Tensor, image: torch.Tensor, max_bytes: int = 1 << 30
    ) -> Kernels | None:
        """The attention weights of this (features, image) pair as :class:`Kernels`
        (any K-channel low-res map upsamples through them), or None when they would take
        more than ``max_bytes`` or more than the C-channel output itself."""
        self._check(lowres, image)
        if lowres.shape[0] != 1:
            return None
        size, grid = tuple(image.shape[-2:]), tuple(lowres.shape[-2:])
        n = self.kernel_entries(size, grid)
        if n > lowres.shape[1] * size[0] * size[1]:
            return None  # more weights than output values: keeping the output is cheaper
        # weights in half precision when float32 does not fit (bfloat16 on the CPU, whose
        # bfloat16 products are fast; float16 elsewhere): ~3 significant digits
        half = torch.bfloat16 if lowres.device.type == "cpu" else torch.float16
        store = next(
            (dt for dt in (self._dtype(lowres), half) if n * dt.itemsize <= max_bytes), None
        )
        if store is None:
            return None
        prep = self._prepared(lowres, image, keep=False)[0]
        return self.make_kernels(prep, store)

    def extra_metadata(self) -> dict:
        return {
            "weights": self.weights_source,
            "random_weights": self.weights_source == RANDOM_LABEL,
            "release": self.release,
            "memory_mb": self.memory_mb,
        }

    # ------------------------------------------------------------ checkpoints
    def load_checkpoint(self, state: dict, source: str) -> None:
        """Load ``state`` (strict: every key, no others, matching shapes) with errors
        that name what is wrong."""
        own = self.state_dict()
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if bad or missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
            if unexpected:
                parts.append(
                    f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})"
                )
            if bad:
                parts.append(f"non-tensor entries {bad[:3]}")
            raise WeightsFileError(
                f"{source} is not a checkpoint of {self.name}: {'; '.join(parts)}"
            )
        for k, v in own.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise WeightsFileError(
                    f"{source}: {k} has shape {tuple(state[k].shape)}, {self.name} expects "
                    f"{tuple(v.shape)}"
                )
        self.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        self.clear_cache()


def _version(t: torch.Tensor) -> int:
    """In-place modification counter (inference tensors have none: they cannot be
    modified outside inference mode, so identity is the check there)."""
    try:
        return t._version
    except RuntimeError:
        return -1


def heads_softmax_mean(scores: torch.Tensor, dim_heads: int = 0) -> torch.Tensor:
    """Softmax over the last dim per head, averaged over heads (MultiheadAttention's
    ``average_attn_weights``), computed in at least float32. The heads are summed
    slice by slice (a reduction over a leading dim is several times slower)."""
    dt = scores.dtype
    a = torch.softmax(scores, dim=-1, dtype=torch.float32 if dt != torch.float64 else dt)
    acc = a.select(dim_heads, 0)
    for h in range(1, a.shape[dim_heads]):
        acc.add_(a.select(dim_heads, h))
    return acc.mul_(1.0 / a.shape[dim_heads]).to(dt)


#: bytes of attention scores per product: small enough to stay in cache
SCORE_BYTES = 2 << 20


def read_state(
    path: str | os.PathLike, wrappers: tuple[str, ...] = ("state_dict", "model")
) -> dict[str, torch.Tensor]:
    """A state dict from a weights file, without unpickling arbitrary objects.

    Torch zip files are read with :func:`~napari_featup.weights.read_tensors` (only
    tensors materialise, so training save dicts with config objects load); a dict
    stored under one of ``wrappers`` is unwrapped. ``.safetensors`` and legacy torch
    pickles go through the package's ``weights_only`` loader.
    """
    path = Path(path)

    def unwrap(obj: Any) -> Any:
        for key in wrappers:
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                return obj[key]
        return obj

    if path.suffix == ".safetensors":
        obj = _weights.load_state_dict_file(path)
    elif path.is_file() and zipfile.is_zipfile(path):
        obj = _weights.read_tensors(path, select=unwrap)
    else:
        obj = unwrap(_weights.torch_load(path))
    if not isinstance(obj, dict) or not obj:
        raise WeightsFileError(f"{str(path)!r} does not hold a state dict")
    return obj


def release_path(url: str, folder: str) -> Path:
    """Where the published weights file ``url`` is cached: ``cache_dir()/folder/NAME``."""
    return _weights.cache_dir() / folder / url.rsplit("/", 1)[-1]


def release_file(url: str, folder: str, progress: bool = True) -> Path:
    """A published weights file in the cache (``cache_dir()/folder``), downloaded once."""
    return _weights.download(url, release_path(url, folder), progress=progress)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build untrained weights from a fixed seed without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield

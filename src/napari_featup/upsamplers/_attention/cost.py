"""The arithmetic and memory of one AnyUp / JAFAR evaluation, for run estimates
(:func:`napari_featup.session.estimate.estimate_run`): counted from the model's shape,
as ``benchmarks/bench_learned_upsamplers.py`` counts them."""

from __future__ import annotations

from .encoded import EncodedImage

#: per-pixel 1x1 convs of the encoders in units of D^2 multiply-adds: image 4, key 4,
#: query 5 + its 3x3 conv 9 + the query projection 1
ENCODER_D2 = 23
#: compute of a swept encoding (image too large to keep) over a kept one: the sweeps
#: that gather GroupNorm statistics (2048 x 2048: 143 s cpu vs ~3.3x 448 x 448's per px)
SWEPT_FACTOR = 3.3
#: FeatureField keeps attention weights up to this many bytes (its kernel budget)
KERNEL_BUDGET_BYTES = 1 << 30


def attention_cost(
    channels: int,
    keys: float,
    size: tuple[int, int],
    memory_mb: int,
    dim: int = 128,
) -> tuple[float, int, int | None]:
    """(GFLOP, working bytes, kept-weights bytes or None) of evaluating ``channels``-d
    features at ``size`` with ``keys`` keys per output pixel on average, as the
    plugin does: encode, then one attention pass (weights kept as kernels when they
    fit the budget, else the C-channel output; None then: the caller counts the dense
    store) plus three channels for the PCA colours."""
    px = int(size[0]) * int(size[1])
    budget = int(memory_mb) << 20
    kept_bytes = px * dim * 4 * EncodedImage.KEPT_PER_PIXEL
    encoder = 2.0 * ENCODER_D2 * dim * dim * (1.0 if kept_bytes <= budget else SWEPT_FACTOR)
    attention = 2.0 * keys * (dim + channels + 3)
    entries = px * keys
    kernels = next((int(entries * b) for b in (4, 2) if entries * b <= KERNEL_BUDGET_BYTES), None)
    if keys > channels:  # more weights than output values: the output is kept instead
        kernels = None
    work = min(budget, kept_bytes) + 16 * channels * int(size[1]) * 64  # and a row tile
    return px * (encoder + attention) / 1e9, work, kernels

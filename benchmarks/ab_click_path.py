"""The click path before and after the redesign, in one process on the same field.

Before: the inline formula of ``layers.similarity_map`` at 3e5d1a9 (unit query, a
1-channel projection, divided by the cached norms). After:
``FeatureField.query_similarity``. Calls alternate, so both see the same machine load.

Usage: python benchmarks/ab_click_path.py [--size 1024] [--clicks 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _harness import header, set_threads

import napari_featup as nf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--clicks", type=int, default=20)
    args = ap.parse_args()
    set_threads(1)
    n = args.size
    yy, xx = np.mgrid[:n, :n]
    grey = ((np.sin(yy / 37.0) + np.cos(xx / 23.0)) * 60 + 128).astype(np.uint8)
    image = np.stack([grey, grey[::-1], grey[:, ::-1]], -1)
    res = nf.extract_features(image, "dinov2", "bilinear", weights="random", highres=False)
    field = res.field
    field.norms()  # computed once per image in both versions

    def before(q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, np.float32)
        dots = field.project((q / float(np.linalg.norm(q)))[None])[0]
        return dots / np.maximum(field.norms(), 1e-12)

    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.clicks):
        r, c = (int(v) for v in rng.integers(0, n, 2))
        q = field.features_at([(r, c)])[0]
        out = {}
        for name, fn in (("before", before), ("after", field.query_similarity)):
            t0 = time.perf_counter()
            out[name] = fn(q)
            times[name].append(time.perf_counter() - t0)
        assert np.allclose(out["before"], out["after"], atol=1e-6)
    print(header(f"ab_click_path: {n}x{n}, dinov2 + bilinear"))
    print(
        "click -> heatmap, median of "
        f"{args.clicks}: before {1e3 * np.median(times['before']):.1f} ms, "
        f"after {1e3 * np.median(times['after']):.1f} ms (same values to 1e-6)"
    )


if __name__ == "__main__":
    main()

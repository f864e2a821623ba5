"""Figures for SigLIP 2 text queries (issue 14): ``siglip2-b-dense`` and its text tower.

Nothing can be downloaded here, so every figure uses a seeded open_clip
``ViT-B-16-SigLIP2`` saved the way its Hugging Face repository holds it (float16
safetensors, both towers) and a small word-level stand-in for the Gemma tokenizer in the
same file format (tests/text/conftest.py): wiring and speed, never a model's quality.

1. Exactness against open_clip's own model read by open_clip from the same folder
   (``local-dir:``): token ids, whole-sentence text embeddings, templated prompt
   vectors (CLIP's recipe written out on open_clip's ``encode_text``), the image
   tower's pooled embedding (``encode_image``), and each dense token against timm's
   ``AttentionPoolLatent`` masked to attend to that token alone.
2. Speed (random weights): encoding one prompt (85 templates and plain: SigLIP's text
   transformer runs all 64 positions, padding included, where CLIP's can stop at the
   end-of-text token), the backbone forward of ``siglip2-b`` vs ``siglip2-b-dense``
   (the per-token head's cost), and Enter -> heatmap at ``--size`` for ``--upsamplers``
   (bench_text's measurement, on siglip2-b-dense).

Usage: python benchmarks/bench_siglip_text.py [--size 1024] [--upsamplers bilinear ...]
       [--repeat 10] [--threads N] [--skip-timing]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _harness import RANDOM_WEIGHTS, header, set_threads, timed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "text"))  # the test fixtures' folder writer
from conftest import SIGLIP2_REPO, hub_snapshot, make_siglip2_folder  # noqa: E402

SEEDED = "seeded open_clip ViT-B-16-SigLIP2 weights and a stand-in tokenizer (wiring only)"
SENTENCES = [
    "a photo of the nucleus.",
    "There is a Mitochondrion in the scene!",
    "membrane",
    " ".join(["cell"] * 80),
]
PROMPTS = ["nucleus", "cell membrane", "background"]


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def exactness(folder: Path) -> None:
    import open_clip
    import torch

    import napari_featup as nf
    from napari_featup.backbones.siglip import map_head_dense
    from napari_featup.text import load_text_encoder, resolve_templates

    ref = open_clip.create_model(f"local-dir:{folder}", pretrained=None).eval()
    ref_tok = open_clip.get_tokenizer(f"local-dir:{folder}")
    path = folder / "open_clip_model.safetensors"
    ours = load_text_encoder("siglip2-b-dense", path)
    same_ids = bool(torch.equal(ours.tokenizer(SENTENCES), ref_tok(SENTENCES)))
    with torch.inference_mode():
        want = ref.encode_text(ref_tok(SENTENCES))
    err = float((ours.sentence_embeddings(SENTENCES) - want).abs().max())
    print(
        f"text: token ids identical {same_ids}; sentences ({len(SENTENCES)}, one beyond 64 "
        f"tokens): max abs error {err:.2e} (embeddings up to {float(want.abs().max()):.2f})"
    )
    for templates in ("maskclip", "plain"):
        tmpl = resolve_templates(templates)
        errs = []
        for p in PROMPTS:
            with torch.inference_mode():
                e = ref.encode_text(ref_tok([t.replace("{}", p) for t in tmpl]))
            w = _unit(_unit(e).mean(0)).numpy()
            errs.append(float(np.abs(ours.encode([p], templates)[0] - w).max()))
        print(f"text: templates {templates} ({len(tmpl)}): unit vectors max error {max(errs):.2e}")
    bb = nf.load_backbone("siglip2-b-dense", weights=path, device="cpu")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        xs = bb._renormalise(x)
        pooled = bb.model.forward_head(bb.model.forward_features(xs))
        err = float((pooled - ref.encode_image(xs)).abs().max())
        head = bb.model.attn_pool
        tokens = torch.randn(1, 9, 768, generator=torch.Generator().manual_seed(1))
        dense = map_head_dense(head, tokens)
        worst = 0.0
        for i in range(9):
            mask = torch.full((1, 1, 1, 9), float("-inf"))
            mask[..., i] = 0
            worst = max(worst, float((dense[:, i] - head(tokens, attn_mask=mask)).abs().max()))
    print(f"image: pooled embedding vs open_clip encode_image: max abs error {err:.2e}")
    print(f"dense head vs timm's MAP head masked to one token (9 tokens): max error {worst:.2e}")


def speed(size: int, upsamplers: list[str], repeat: int) -> None:
    import torch
    from bench_text import enter_to_heatmap

    import napari_featup as nf
    from napari_featup.text import load_text_encoder

    enc = load_text_encoder("siglip2-b-dense", "random")
    for templates, n in (("maskclip", 85), ("plain", 1)):
        times = []
        for p in ("mitochondrion", "cytoplasm", "nuclear envelope"):
            t0 = time.perf_counter()
            enc.encode([p], templates)
            times.append(time.perf_counter() - t0)
        print(
            f"encoding one prompt ({n} template{'s' if n > 1 else ''}): median "
            f"{statistics.median(times):.2f} s (once per prompt, in a worker)"
        )
    for side in (448, size):
        x = torch.randn(1, 3, side, side)
        row = {}
        for name in ("siglip2-b", "siglip2-b-dense"):
            bb = nf.load_backbone(name, weights="random", device="cpu")
            row[name] = round(timed(lambda bb=bb, x=x: bb(x), repeat=3, warmup=1)["median_s"], 3)
        print(f"backbone forward {side}x{side} (median of 3, s): {json.dumps(row)}")
    for name in upsamplers:
        try:
            row = enter_to_heatmap(name, size, repeat, enc)
        except Exception as exc:  # noqa: BLE001 - report and go on to the next upsampler
            print(f"{name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        ok = "OK" if row["median_ms_1_prompt"] < 50 else "MISSED"
        print(f"Enter -> heatmap [{ok} target < 50 ms, 1 prompt]: {json.dumps(row)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--upsamplers", nargs="+", default=["bilinear", "featup-jbu"])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()
    set_threads(args.threads or max(1, min(4, os.cpu_count() or 1)))
    from huggingface_hub import constants

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_siglip2_folder(Path(tmp) / "ViT-B-16-SigLIP2")
        cache = Path(tmp) / "hf-cache"  # the tokenizer where `download` would leave it
        tok = ("tokenizer.json", "tokenizer_config.json")
        hub_snapshot(cache, SIGLIP2_REPO, {n: folder / n for n in tok})
        constants.HF_HUB_CACHE = str(cache)
        print(header("bench_siglip_text exactness vs open_clip", SEEDED))
        exactness(folder)
        if not args.skip_timing:
            title = "bench_siglip_text speed (siglip2-b-dense, maskclip templates)"
            print(header(title, RANDOM_WEIGHTS))
            speed(args.size, args.upsamplers, args.repeat)


if __name__ == "__main__":
    main()

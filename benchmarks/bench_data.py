"""Throughput of the data pipeline: JSONL folder of 512x512 PNGs + entity maps -> 480 tensors.

Writes a small dataset (images, masks, entity label maps, all 512x512 PNG) to a temporary
folder, then reads it through ``load_dataset("jsonl", ...)`` + ``ReferringTransform(480,
tokenizer)`` + ``collate_referring`` in a torch ``DataLoader`` (batch 8). Settings are
measured interleaved, round after round, and the median of the rounds is reported (the
machine is shared: absolute numbers are noisy, ratios less so). Target (issue 3): at least
50 samples/s with 2 workers and entity maps.

    .venv/bin/python benchmarks/bench_data.py --images 48 --rounds 3 \\
        --out benchmarks/results/data.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from entitwist.data import ReferringTransform, collate_referring, load_dataset
from entitwist.utils import atomic_path


def make_dataset(root: Path, n_images: int, size: int = 512, seed: int = 0) -> int:
    """Aerial-ish 512x512 PNGs (smooth fields + texture), 2 objects x 2 sentences each."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks", "entities/felzenszwalb/images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    lines = []
    for i in range(n_images):
        base = rng.integers(40, 200, size=(8, 8, 3)).astype(np.float32)
        img = np.kron(base, np.ones((size // 8, size // 8, 1), np.float32))
        img += rng.normal(0, 12, img.shape)
        img = np.clip(img, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"scene_{i:04d}.png")
        labels = np.zeros((size, size), np.uint8)
        for k in range(1, 31):  # 30 entities: rectangles, later ones on top
            y0, x0 = rng.integers(0, size - 32, 2)
            hh, ww = rng.integers(16, 160, 2)
            labels[y0 : y0 + hh, x0 : x0 + ww] = k
        Image.fromarray(labels).save(root / "entities/felzenszwalb/images" / f"scene_{i:04d}.png")
        for obj in range(2):
            cy, cx = rng.integers(50, size - 50, 2)
            r = rng.integers(10, 45)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8) * 255
            mrel = f"masks/scene_{i:04d}_{obj}.png"
            Image.fromarray(mask).save(root / mrel)
            for e in range(2):
                lines.append(
                    json.dumps(
                        {
                            "sample_id": f"{i}_{obj}_{e}",
                            "image": f"images/scene_{i:04d}.png",
                            "mask": mrel,
                            "expression": ["the round tank on the left", "the large pond"][e],
                            "split": "test",
                        }
                    )
                )
    (root / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    manifest = {
        "format": "entitwist-entities/1",
        "generator": "felzenszwalb",
        "params": {},
        "checkpoint_sha256": None,
        "max_entities": 40,
    }
    (root / "entities/felzenszwalb/manifest.json").write_text(json.dumps(manifest))
    return len(lines)


def build_tokenizer():
    """The tiny-vocab tokenizer of the model package, or None when it is not available."""
    try:
        from entitwist.config import TextConfig
        from entitwist.models.tokenizer import build_tokenizer as build

        return build(TextConfig(pretrained=None, vocab="tiny", max_tokens=20))
    except Exception as exc:  # model package not there: measure without token ids
        print(f"note: no tokenizer ({exc}); token ids not produced", file=sys.stderr)
        return None


def measure(
    root: Path, workers: int, entities: bool, tokenizer, size: int, batch: int
) -> tuple[float, float]:
    """(samples per second, main-process CPU ms per sample) over one full pass.

    Workers are started (first batch fetched) before timing. With ``workers=0`` the CPU time
    is the whole per-sample cost of the pipeline.
    """
    ds = load_dataset(
        "jsonl",
        root,
        "test",
        transform=ReferringTransform(size, tokenizer),
        entities="auto" if entities else None,
    )
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch,
        num_workers=workers,
        collate_fn=collate_referring,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    it = iter(loader)
    first = next(it)  # start the workers and fill the first batch
    assert first["image"].shape[1:] == (3, size, size)
    assert ("entities" in first) == entities
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for b in it:
        n += b["image"].shape[0]
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    del it, loader
    return n / dt, 1000 * cpu / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48, help="512x512 images (4 samples each)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=480)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path, help="write a Markdown report here")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    settings = [(2, True), (2, False), (0, True)]
    results: dict[tuple[int, bool], list[float]] = {s: [] for s in settings}
    cpu_ms: list[float] = []
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        n = make_dataset(root, args.images)
        print(f"wrote {n} samples on {args.images} images in {time.perf_counter() - t0:.1f} s")
        for r in range(args.rounds):
            for workers, ent in settings:
                sps, ms = measure(root, workers, ent, tokenizer, args.size, args.batch)
                results[(workers, ent)].append(sps)
                if workers == 0:
                    cpu_ms.append(ms)
                print(f"round {r}: workers={workers} entities={ent}: {sps:.1f} samples/s")
            load = os.getloadavg()[0]
            loads.append(load)
            print(f"round {r}: load average {load:.1f}")

    med = {s: statistics.median(v) for s, v in results.items()}
    ref = med[(2, True)]
    rows = [
        f"| {w} | {'yes' if e else 'no'} | {med[(w, e)]:.1f} | "
        f"{', '.join(f'{x:.1f}' for x in results[(w, e)])} | {med[(w, e)] / ref:.2f} |"
        for w, e in settings
    ]
    cmd = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_data.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    report = "\n".join(
        [
            "# Data pipeline throughput",
            "",
            f"Command: `{cmd}`",
            "",
            f"{n} samples on {args.images} generated 512x512 PNG images (+ 512x512 PNG masks and "
            f"entity label maps with 30 labels); `load_dataset('jsonl')` + "
            f"`ReferringTransform({args.size}, tokenizer={'tiny vocab' if tokenizer else 'None'})` + "
            f"`collate_referring`, DataLoader batch {args.batch}, one full pass per measurement "
            f"(after the first batch, so worker start-up is excluded), {args.rounds} rounds "
            "interleaved, median reported.",
            "",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
            "(shared with other jobs while measured), torch "
            f"{torch.__version__}.",
            "",
            "| workers | entity maps | samples/s (median) | rounds | vs 2 workers + entities |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"CPU cost per sample (1 process, entity maps, from `time.process_time`): "
            f"{statistics.median(cpu_ms):.1f} ms, so two uncontended workers can deliver at most "
            f"about {2000 / statistics.median(cpu_ms):.0f} samples/s. Load average during the "
            f"rounds: {', '.join(f'{x:.1f}' for x in loads)} on {os.cpu_count()} CPUs.",
            "",
            f"Target (issue 3): >= 50 samples/s with 2 workers and entity maps: "
            f"{'met' if ref >= 50 else 'NOT met'} as measured ({ref:.1f}).",
            "",
        ]
    )
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp_path:
            tmp_path.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

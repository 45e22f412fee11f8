"""Large-scene benchmark: peak memory, speed and grid alignment of ``entitwist segment`` on
a generated 20,000 x 20,000 (or ``--size``) multi-band uint16 GeoTIFF.

1. Generate the scene window by window (never in memory at once): tiled 512 x 512,
   deflate-compressed, BigTIFF, EPSG:32616 with a 0.5 m affine transform; smooth terrain,
   bright square roofs and round tanks, sensor noise, a nodata corner.
2. Save an untrained model (``--model``: ``entitwist_tiny`` by default, or the full-size
   ``entitwist_swinb_bert`` with random weights; output quality is irrelevant here) and run
   ``entitwist segment`` on the scene in a child process; the child reports its own peak
   resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), the time of every
   network call (whole-scene view, tiles), and the parent samples the child's RSS with
   psutil as a cross-check. ``--max-tiles N`` refines only N tiles (a full-size model on a
   CPU takes seconds a tile): the report gives the measured tiles/s and the whole-scene time
   extrapolated from it, labelled as such.
3. Check that every output GeoTIFF has the input's CRS, affine transform, width and height
   (pixel-aligned), that nodata pixels are out of the mask, and write a Markdown report.

Usage:
    python benchmarks/bench_large_scene.py                       # 20,000 x 20,000, 4 bands
    python benchmarks/bench_large_scene.py --size 3000 --report - # quick check
    python benchmarks/bench_large_scene.py --size 10000 --model entitwist_swinb_bert \
        --tile-size 480 --overlap 32 --max-tiles 6 --entity-generator felzenszwalb
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SENTENCE = "the largest storage tank"


def generate_scene(path: Path, size: int, bands: int, seed: int = 0) -> dict:
    """Write a ``size x size`` uint16 GeoTIFF strip by strip; returns facts about it."""
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    n_obj = max(4, size * size // 400_000)
    objects = np.stack(
        [
            rng.integers(0, size, n_obj),  # centre row
            rng.integers(0, size, n_obj),  # centre col
            rng.integers(6, 60, n_obj),  # half size (px)
            rng.integers(0, 2, n_obj),  # 0 roof (square), 1 tank (disc)
        ],
        axis=1,
    )
    nodata_corner = size // 10  # top-left triangle of nodata
    transform = Affine(0.5, 0.0, 733_000.0, 0.0, -0.5, 3_730_000.0)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=bands,
        dtype="uint16",
        crs=CRS.from_epsg(32616),
        transform=transform,
        nodata=0,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        predictor=2,
        BIGTIFF="YES",
    )
    strip = 512
    cols = np.arange(size)
    with rasterio.Env(GDAL_CACHEMAX=128), rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, strip):
            r1 = min(size, r0 + strip)
            rows = np.arange(r0, r1)[:, None]
            base = (
                900 + 300 * np.sin(rows / 1500.0) + 300 * np.cos(cols[None, :] / 2100.0)
            )  # (h, W)
            data = np.empty((bands, r1 - r0, size), np.uint16)
            srng = np.random.default_rng(seed + 1 + r0)
            hit = objects[
                (objects[:, 0] + objects[:, 2] >= r0) & (objects[:, 0] - objects[:, 2] < r1)
            ]
            shape_mask = np.zeros((r1 - r0, size), bool)
            for cr, cc, half, kind in hit:
                a, b = max(r0, cr - half), min(r1, cr + half)
                c0, c1 = max(0, cc - half), min(size, cc + half)
                if kind == 0:
                    shape_mask[a - r0 : b - r0, c0:c1] = True
                else:
                    yy, xx = np.ogrid[a:b, c0:c1]
                    shape_mask[a - r0 : b - r0, c0:c1] |= (yy - cr) ** 2 + (xx - cc) ** 2 <= half**2
            for band in range(bands):
                v = base * (1.0 + 0.15 * band) + srng.integers(0, 40, size=base.shape)
                v[shape_mask] = 3000 + 200 * band
                data[band] = np.clip(v, 1, 65535).astype(np.uint16)
            corner = (rows + cols[None, :]) < nodata_corner  # nodata triangle
            data[:, corner] = 0
            dst.write(data, window=Window(0, r0, size, r1 - r0))
    return {"objects": int(n_obj), "nodata_corner": nodata_corner}


def offline_vocab(work: Path, size: int = 30_522) -> Path:
    """A BERT-sized ``vocab.txt`` without the network: the package's small vocabulary padded
    with ``[unusedN]`` entries to BERT-base's 30,522, so the text embedding, and so the
    parameter count and memory, are those of the paper's model."""
    from entitwist.models.tokenizer import TINY_VOCAB

    tokens = TINY_VOCAB.read_text().splitlines()
    tokens += [f"[unused{i}]" for i in range(size - len(tokens))]
    path = work / "bert_sized_vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


def child(argv: list[str]) -> int:
    """Run ``entitwist segment`` in this process and print its peak RSS and the time of
    each network call (the whole-scene view: ``output_size="image"``; a tile: the
    network's own size) as JSON."""
    from entitwist.cli import main
    from entitwist.inference.predictor import Predictor

    calls: dict[str, list[float]] = {"view": [], "tile": []}
    plain = Predictor.predict_probability

    def timed(self, image, sentences, entities="auto", output_size="image"):
        t = time.perf_counter()
        out = plain(self, image, sentences, entities=entities, output_size=output_size)
        calls["view" if output_size == "image" else "tile"].append(time.perf_counter() - t)
        return out

    Predictor.predict_probability = timed
    start = time.perf_counter()
    rc = main(["segment", *argv])
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {"rc": rc, "seconds": seconds, "peak_rss_mb": peak_kb / 1024, "calls": calls}
    print("BENCH " + json.dumps(result))
    return rc


def baseline(model_dir: str, generator: str | None = None) -> int:
    """The fixed cost: imports, the loaded network and one forward on a 256 x 256 image."""
    from entitwist.inference.predictor import Predictor

    predictor = Predictor.from_pretrained(model_dir, device="cpu", entity_generator=generator)
    predictor.predict(np.zeros((256, 256, 3), np.uint8), SENTENCE)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("BENCH " + json.dumps({"rc": 0, "peak_rss_mb": peak_kb / 1024}))
    return 0


def run_child(argv: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    stop, sampled = threading.Event(), {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    thread = threading.Thread(target=sample_rss, args=(proc.pid, sampled, stop), daemon=True)
    thread.start()
    stdout, _ = proc.communicate()
    stop.set()
    print(stdout)
    result = json.loads(next(line for line in stdout.splitlines() if line.startswith("BENCH "))[6:])
    result.update(
        wall=time.perf_counter() - t0, sampled_mb=sampled.get("max", 0) / 2**20, stdout=stdout
    )
    return result


def sample_rss(pid: int, out: dict, stop: threading.Event) -> None:
    import psutil

    try:
        proc = psutil.Process(pid)
        while not stop.is_set():
            out["max"] = max(out.get("max", 0), proc.memory_info().rss)
            stop.wait(0.25)
    except psutil.Error:
        pass


def check_alignment(src_path: Path, outputs: list[Path], nodata_corner: int) -> list[str]:
    import rasterio
    from rasterio.windows import Window

    lines = []
    with rasterio.open(src_path) as src:
        ref = (src.crs, src.transform, src.width, src.height)
        for out in outputs:
            with rasterio.open(out) as ds:
                got = (ds.crs, ds.transform, ds.width, ds.height)
                ok = got == ref
                lines.append(
                    f"- `{out.name}`: CRS {ds.crs.to_string()}, transform "
                    f"({ds.transform.a}, {ds.transform.b}, {ds.transform.c}, {ds.transform.d}, "
                    f"{ds.transform.e}, {ds.transform.f}), {ds.width} x {ds.height}, {ds.dtypes[0]}, "
                    f"blocks {ds.block_shapes[0]}: {'same grid as the input' if ok else 'MISALIGNED'}"
                )
                if not ok:
                    raise SystemExit(f"{out} is not aligned with {src_path}: {got} != {ref}")
                if ds.dtypes[0] == "uint8":  # the mask: nothing inside the nodata triangle
                    n = min(nodata_corner, 2048)
                    corner = ds.read(1, window=Window(0, 0, n, n))
                    tri = np.add.outer(np.arange(n), np.arange(n)) < nodata_corner
                    assert not corner[tri].any(), "mask pixels in nodata"
                    lines.append(
                        f"  - mask is 0 on all {int(tri.sum())} checked nodata pixels of the corner"
                    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--bands", type=int, default=4)
    parser.add_argument(
        "--workdir", default=None, help="where the scene goes (default: a temp dir)"
    )
    parser.add_argument("--tile-size", type=int, default=4096)
    parser.add_argument("--overlap", type=int, default=512)
    parser.add_argument("--max-side", type=int, default=2048)
    parser.add_argument(
        "--reuse", action="store_true", help="reuse the scene in --workdir if present"
    )
    parser.add_argument("--model", default="entitwist_tiny", help="registry name (random weights)")
    parser.add_argument("--max-tiles", type=int, help="refine at most this many tiles")
    parser.add_argument("--entity-generator", help="generator for the entity maps")
    parser.add_argument("--report", default=str(REPO / "benchmarks" / "results" / "large_scene.md"))
    if sys.argv[1:2] == ["--child"]:  # the measured process: everything after "--child --"
        return child(sys.argv[3:])
    if sys.argv[1:2] == ["--baseline"]:
        return baseline(sys.argv[2], *(sys.argv[3:4] or [None]))
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="entitwist-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    scene = work / f"scene_{args.size}.tif"
    t0 = time.perf_counter()
    if args.reuse and scene.exists():  # a scene from an earlier run in the same --workdir
        facts, gen_s = {"objects": -1, "nodata_corner": args.size // 10}, float("nan")
    else:
        facts = generate_scene(scene, args.size, args.bands)
        gen_s = time.perf_counter() - t0
    gen_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    raw_gb = args.size * args.size * 2 * args.bands / 1e9
    print(
        f"generated {scene} ({scene.stat().st_size / 1e9:.2f} GB on disk, {raw_gb:.1f} GB raw) in {gen_s:.0f} s"
    )

    import torch

    import entitwist

    torch.manual_seed(0)
    model_dir = work / args.model
    overrides = {} if args.model.endswith("tiny") else {"text__vocab": str(offline_vocab(work))}
    model = entitwist.create_model(args.model, pretrained=False, **overrides)
    n_params = sum(p.numel() for p in model.parameters())
    if not (model_dir / "model.safetensors").is_file():
        model.save_pretrained(model_dir)
    del model

    out = work / "out"
    out.mkdir(exist_ok=True)
    cli_args = [
        str(scene),
        SENTENCE,
        "-m",
        str(model_dir),
        "--device",
        "cpu",
        "--overwrite",
        "-o",
        str(out / "mask.tif"),
        "-o",
        str(out / "probability.tif"),
        "-o",
        str(out / "overlay.png"),
        "--tile-size",
        str(args.tile_size),
        "--overlap",
        str(args.overlap),
        "--max-side",
        str(args.max_side),
    ]
    if args.max_tiles is not None:
        cli_args += ["--max-tiles", str(args.max_tiles)]
    if args.entity_generator:
        cli_args += ["--entity-generator", args.entity_generator]
    base = run_child(
        ["--baseline", str(model_dir), *([args.entity_generator] if args.entity_generator else [])]
    )
    result = run_child(["--child", "--", *cli_args])
    if result["rc"] != 0:
        raise SystemExit(f"segmentation failed (rc {result['rc']})")
    stdout, wall, sampled_mb = result["stdout"], result["wall"], result["sampled_mb"]
    summary = next((line for line in stdout.splitlines() if line.startswith("segmented ")), "")
    align = check_alignment(
        scene, [out / "mask.tif", out / "probability.tif"], facts["nodata_corner"]
    )
    found = re.search(r"(\d+)/(\d+) tiles refined(?: \(--max-tiles; (\d+) touch)?", summary)
    refined, grid, wanted = (
        (int(found[1]), int(found[2]), int(found[3] or found[1])) if found else (0, 0, 0)
    )
    tile_s = result["calls"]["tile"]
    per_tile = sum(tile_s) / len(tile_s) if tile_s else float("nan")
    view_s = sum(result["calls"]["view"])
    rest = result["seconds"] - view_s - sum(tile_s)  # reading, blending, writing, polygons
    whole = result["seconds"] + (wanted - refined) * per_tile
    every = result["seconds"] + (grid - refined) * per_tile

    shown = " ".join(a if " " not in a else f'"{a}"' for a in cli_args).replace(str(work), "$WORK")
    report = "\n".join(
        [
            "# Large scene: peak memory and grid alignment",
            "",
            f"Scene: generated {args.size:,} x {args.size:,} px, {args.bands} bands uint16 "
            f"({raw_gb:.1f} GB raw, {raw_gb / args.bands:.1f} GB a band; {scene.stat().st_size / 1e9:.2f} GB "
            "on disk), tiled 512 x 512, deflate, BigTIFF, EPSG:32616, 0.5 m affine transform, nodata 0 "
            "in a corner triangle; "
            + (
                f"written strip by strip in {gen_s:.0f} s (generator peak RSS {gen_peak:.0f} MB)."
                if gen_s == gen_s
                else "reused from an earlier run of this script (--reuse)."
            ),
            "",
            f"Model: `{args.model}` ({n_params / 1e6:.0f} M parameters), random weights (output "
            "quality is irrelevant to this benchmark), CPU, on a shared 2-core machine (absolute "
            "times are noisy)"
            + (f"; entity maps: {args.entity_generator}" if args.entity_generator else "")
            + (
                "; text vocabulary: the package's small one padded to BERT-base's 30,522 "
                "entries (no BERT vocabulary offline; same parameters and compute)."
                if overrides
                else "."
            ),
            "",
            "Command (run by `python benchmarks/bench_large_scene.py` in a child process):",
            "",
            "```",
            f"entitwist segment {shown}",
            "```",
            "",
            "| measure | value |",
            "|---|---|",
            f"| wall time of the segment run | {result['seconds']:.0f} s ({wall:.0f} s with process start) |",
            f"| peak RSS (ru_maxrss of the child) | {result['peak_rss_mb']:.0f} MB |",
            f"| peak RSS (psutil samples every 0.25 s) | {sampled_mb:.0f} MB |",
            f"| fixed cost: imports + network + one 256 x 256 prediction | {base['peak_rss_mb']:.0f} MB |",
            f"| tiles refined (measured) / touching the object / in the grid | {refined} / {wanted} / {grid} |",
            f"| network call on the whole-scene view (incl. entity map) | {view_s:.1f} s |",
            f"| network calls on tiles (incl. entity maps) | {sum(tile_s):.1f} s, {per_tile:.2f} s a tile, "
            f"{1 / per_tile if tile_s else float('nan'):.2f} tiles/s |",
            f"| everything else (reading the view, tiles, blending, writing {args.size:,}^2 outputs) | {rest:.0f} s |",
            f"| **extrapolated** whole run, all {wanted} object tiles refined | {whole:.0f} s ({whole / 60:.1f} min) |",
            f"| **extrapolated** whole run, all {grid} grid tiles refined | {every:.0f} s ({every / 60:.1f} min) |",
            f"| scene-dependent part (peak - fixed cost) | {result['peak_rss_mb'] - base['peak_rss_mb']:.0f} MB |",
            f"| raw scene size | {raw_gb * 1000:.0f} MB ({raw_gb * 1000 / args.bands:.0f} MB a band) |",
            f"| peak RSS / raw size | {result['peak_rss_mb'] / (raw_gb * 1000):.2f} |",
            f"| run summary | {summary} |",
            "",
            "Output grids (checked against the input):",
            "",
            *align,
            "",
            "How memory stays bounded: the whole-scene view is reduced strip by strip (block means of",
            "valid pixels; GDAL's average over the file's overviews when it has them), tiles are read",
            "as windows, each refined tile keeps only its probability at",
            "the network's resolution, and the output is assembled and written 256 rows at a time;",
            "GDAL's block cache is capped at 128 MB.",
            "",
        ]
    )
    if args.report == "-":
        print(report)
    else:
        Path(args.report).write_text(report)
        print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

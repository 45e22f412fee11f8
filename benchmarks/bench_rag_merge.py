"""The felzenszwalb-rag merge on arrays against scikit-image's region adjacency graph.

``merge_similar_neighbours`` replaces ``graph.cut_threshold(seg, graph.rag_mean_color(image,
seg), merge)`` in the ``felzenszwalb-rag`` generator. This script times both on the same
fine felzenszwalb cuts, interleaved round by round, checks that every output is identical,
and times the whole generator (``label_map``) per image.

    python benchmarks/bench_rag_merge.py [--images 40] [--size 128] [--rounds 3]

Images: the demo's synthetic scenes (``generate_scene`` with ``object_scale=2.5,
density=0.3``) at ``--size``. Numbers measured with it are in ``benchmarks/results/demo.md``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    from skimage import graph
    from skimage.segmentation import felzenszwalb

    from entitwist.data.synthetic_scene import generate_scene
    from entitwist.entities.generators import get_generator, merge_similar_neighbours

    gen = get_generator("felzenszwalb-rag")
    prm = gen.params
    images = [
        generate_scene(i, a.size, object_scale=2.5, density=0.3).image for i in range(a.images)
    ]
    work = [gen.work_image(im) for im in images]
    cuts = [
        felzenszwalb(w, scale=prm["scale"], sigma=prm["sigma"], min_size=prm["min_size"])
        for w in work
    ]

    def graph_merge() -> list[np.ndarray]:
        return [
            graph.cut_threshold(s, graph.rag_mean_color(w, s), prm["merge"])
            for w, s in zip(work, cuts)
        ]

    def array_merge() -> list[np.ndarray]:
        return [merge_similar_neighbours(w, s, prm["merge"]) for w, s in zip(work, cuts)]

    def whole_generator() -> list[np.ndarray]:
        return [gen.label_map(im, 40)[0] for im in images]

    runs = {
        "graph (scikit-image)": graph_merge,
        "arrays": array_merge,
        "generator": whole_generator,
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    outputs: dict[str, list[np.ndarray]] = {}
    for _ in range(a.rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(1000 * (time.perf_counter() - t0) / a.images)
    same = all(
        np.array_equal(x, y) for x, y in zip(outputs["graph (scikit-image)"], outputs["arrays"])
    )
    pieces = np.mean([int(s.max()) + 1 for s in cuts])
    merged = np.mean([int(m.max()) + 1 for m in outputs["arrays"]])
    print(
        f"{a.images} scenes at {a.size} px, {pieces:.0f} fine segments -> {merged:.0f} merged "
        f"on average; outputs identical: {same}"
    )
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    for name, v in times.items():
        print(f"{name:22s} ms per image {[round(x, 1) for x in v]}, median {med[name]:.1f}")
    print(f"merge speed-up (graph / arrays): {med['graph (scikit-image)'] / med['arrays']:.1f}x")
    if not same:
        raise SystemExit("the array merge differs from scikit-image's graph")


if __name__ == "__main__":
    main()

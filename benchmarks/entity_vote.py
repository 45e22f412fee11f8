"""How well do an entity generator's maps fit the referred objects? (entity-vote ceiling)

For each referring expression of a JSONL dataset (``entitwist synth`` output, or your own),
the image's K-entity label map is computed with the generator, and every entity is set to
the majority of the ground-truth mask inside it (unlabelled pixels stay background). The
mIoU of these "voted" masks against the ground truth is the best any model could do by
choosing whole entities: a generator that merges a car into the road, or leaves it out of
the K largest, caps it. Also printed: segments per image before the cap, the share of maps
the cap cut, CPU milliseconds per image.

    entitwist synth /tmp/s --scenes 100 --size 128 --object-scale 2.5 --density 0.3
    python benchmarks/entity_vote.py /tmp/s --generator felzenszwalb
    python benchmarks/entity_vote.py /tmp/s --generator felzenszwalb-rag --param merge=50

Numbers measured with it are in ``benchmarks/results/demo.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from entitwist.data import load_dataset
from entitwist.entities import get_generator
from entitwist.entities.cli import parse_param


def vote_iou(labels: np.ndarray, target: np.ndarray) -> float:
    """IoU of the entity vote: entities (labels > 0) whose majority is in ``target``."""
    labels = labels.astype(np.int64)
    k = int(labels.max()) + 1
    inside = np.bincount(labels.ravel(), weights=target.ravel().astype(float), minlength=k)
    area = np.bincount(labels.ravel(), minlength=k)
    share = inside / np.maximum(area, 1)
    share[0] = 0.0  # pixels of no entity are never chosen
    voted = share[labels] > 0.5
    union = (voted | target).sum()
    return float((voted & target).sum() / union) if union else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="JSONL dataset folder (annotations.jsonl, images, masks)")
    p.add_argument("--generator", default="felzenszwalb")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-entities", type=int, default=40)
    p.add_argument("--split", default="test")
    p.add_argument("--images", type=int, default=80, help="first N images of the split")
    a = p.parse_args()
    root = Path(a.root)
    gen = get_generator(a.generator, **dict(parse_param(t) for t in a.param))
    records = load_dataset("jsonl", root, a.split, entities=None).records
    by_image: dict[Path, list] = {}
    for r in records:
        by_image.setdefault(r.image_path, []).append(r)
    images = sorted(by_image)[: a.images]
    ious: list[float] = []
    segments: list[int] = []
    cpu = 0.0
    for name in images:
        image = np.asarray(Image.open(name).convert("RGB"))
        t0 = time.process_time()
        labels, n = gen.label_map(image, a.max_entities)
        cpu += time.process_time() - t0
        segments.append(n)
        for r in by_image[name]:
            target = r.mask() > 0
            ious.append(vote_iou(labels, target))
    seg = np.asarray(segments)
    print(
        f"{gen.name} {json.dumps(gen.params)}: entity-vote mIoU {100 * np.mean(ious):.1f} over "
        f"{len(ious)} expressions of {len(images)} {a.split} images; {seg.mean():.0f} segments "
        f"per image before the K={a.max_entities} cap ({100 * np.mean(seg > a.max_entities):.0f}% "
        f"of maps cut); {1000 * cpu / max(len(images), 1):.0f} ms CPU per image"
    )


if __name__ == "__main__":
    main()

"""Tiny fake datasets in each benchmark's real on-disk layout (the torchgeo way).

Every ``make_*`` function writes a complete, valid dataset under ``root`` and returns what
it wrote, so tests can compare the loaders' output with the truth::

    {"samples": {split: [{"sample_id", "expression", "ref_id", "image_key",
                          "image" (uint8 H,W,3 as written; JPEG: before compression),
                          "mask" (uint8 H,W 0/1 at the image's size)}, ...]},
     "images": {image_key: path}, ...}

Other helpers' tests reuse these (``from fake_layouts import make_jsonl``). All content is
drawn from ``numpy.random.default_rng(seed)``; sizes are tiny.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "make_refsegrs",
    "make_rrsisd",
    "make_risbench",
    "make_jsonl",
    "make_entities",
    "rect_mask",
    "rle_encode",
]

WORDS = ["red", "small", "large", "white", "left", "right", "top", "bottom"]
NOUNS = ["car", "building", "tank", "pond", "road", "field", "ship", "tree"]


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Flat 8x8 blocks of random colour: survives JPEG compression almost unchanged."""
    blocks = rng.integers(0, 256, size=(-(-h // 8), -(-w // 8), 3), dtype=np.uint8)
    return np.ascontiguousarray(blocks.repeat(8, 0).repeat(8, 1)[:h, :w])


def rect_mask(
    rng: np.random.Generator, h: int, w: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A 0/1 mask with one random axis-aligned rectangle; returns (mask, (x0, y0, x1, y1)).

    The rectangle covers pixels x0..x1-1, y0..y1-1 (COCO's continuous-coordinate box).
    """
    x0 = int(rng.integers(0, w // 2))
    y0 = int(rng.integers(0, h // 2))
    x1 = int(rng.integers(x0 + 2, w + 1))
    y1 = int(rng.integers(y0 + 2, h + 1))
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m, (x0, y0, x1, y1)


def _sentence(rng: np.random.Generator) -> str:
    return f"the {WORDS[int(rng.integers(len(WORDS)))]} {NOUNS[int(rng.integers(len(NOUNS)))]}"


def rle_encode(mask: np.ndarray, compressed: bool = True) -> dict[str, Any]:
    """COCO RLE of a 0/1 mask (column-major runs starting with zeros); a reference encoder."""
    h, w = mask.shape
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts: list[int] = []
    prev, run = 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    if not compressed:
        return {"size": [h, w], "counts": counts}
    chars = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            chars.append(chr(ch + 48))
    return {"size": [h, w], "counts": "".join(chars)}


def make_refsegrs(
    root: str | Path,
    n: dict[str, int] | int = 3,
    size: tuple[int, int] = (24, 32),
    seed: int = 0,
    repeat_first: bool = True,
) -> dict[str, Any]:
    """RefSegRS: images/<stem>.tif, masks/<stem>.tif (0/255 plus noise <= 50), phrase files.

    ``n`` samples per split (train/val/test). With ``repeat_first`` the first train stem gets
    a second sentence (two expressions, one ref).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = n if isinstance(n, dict) else {s: n for s in ("train", "val", "test")}
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    h, w = size
    out: dict[str, Any] = {"samples": {}, "images": {}}
    idx = 0
    for split, count in counts.items():
        samples = []
        lines = []
        for _ in range(count):
            stem = f"{idx:05d}"
            idx += 1
            img = _image(rng, h, w)
            mask, _ = rect_mask(rng, h, w)
            noise = (rng.random((h, w)) < 0.2) * 40  # below the > 50 threshold
            stored = np.where(mask == 1, 255, noise).astype(np.uint8)
            Image.fromarray(img).save(root / "images" / f"{stem}.tif")
            Image.fromarray(stored).save(root / "masks" / f"{stem}.tif")
            sentences = [_sentence(rng)]
            if repeat_first and split == "train" and not samples:
                sentences.append(_sentence(rng) + " again")
            for k, sentence in enumerate(sentences):
                lines.append(f"{stem} {sentence}")
                samples.append(
                    dict(
                        sample_id=stem if k == 0 else f"{stem}#{k}",
                        expression=sentence,
                        ref_id=stem,
                        image_id=stem,
                        image_key=f"images/{stem}",
                        image=img,
                        mask=mask,
                    )
                )
            out["images"][f"images/{stem}"] = root / "images" / f"{stem}.tif"
        (root / f"output_phrase_{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        out["samples"][split] = samples
    return out


def make_risbench(
    root: str | Path,
    n: dict[str, int] | int = 3,
    size: tuple[int, int] = (32, 32),
    seed: int = 1,
) -> dict[str, Any]:
    """RISBench: img_rgb/<file>.png, mask/<file>.png (0/255), phrase lines ``<file.png> <text>``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = n if isinstance(n, dict) else {s: n for s in ("train", "val", "test")}
    (root / "img_rgb").mkdir(parents=True, exist_ok=True)
    (root / "mask").mkdir(parents=True, exist_ok=True)
    h, w = size
    out: dict[str, Any] = {"samples": {}, "images": {}}
    idx = 0
    for split, count in counts.items():
        samples, lines = [], []
        for _ in range(count):
            name = f"{idx:04d}_{split}.png"
            idx += 1
            img = _image(rng, h, w)
            mask, _ = rect_mask(rng, h, w)
            Image.fromarray(img).save(root / "img_rgb" / name)
            Image.fromarray(mask * 255).save(root / "mask" / name)
            sentence = _sentence(rng)
            lines.append(f"{name} {sentence}")
            stem = name[:-4]
            samples.append(
                dict(
                    sample_id=stem,
                    expression=sentence,
                    ref_id=stem,
                    image_id=stem,
                    image_key=f"img_rgb/{stem}",
                    image=img,
                    mask=mask,
                )
            )
            out["images"][f"img_rgb/{stem}"] = root / "img_rgb" / name
        (root / f"output_phrase_{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        out["samples"][split] = samples
    return out


def make_rrsisd(
    root: str | Path,
    size: tuple[int, int] = (40, 40),
    seed: int = 2,
    mismatch: bool = True,
) -> dict[str, Any]:
    """RRSIS-D: rrsisd/refs(unc).p, rrsisd/instances.json, images/rrsisd/JPEGImages/*.jpg.

    Four images, one ref each in train (2 refs), val (1), test (1); each ref has 2 or 3
    sentences. Annotation 1 is a rectangle polygon, 2 a compressed RLE, 3 an uncompressed RLE,
    4 two polygons. With ``mismatch`` image 00002.jpg is one row taller than its annotation
    says (the real 800x801 case): the expected mask is the annotation's mask resized
    (PIL nearest) to the JPEG.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    img_dir = root / "images" / "rrsisd" / "JPEGImages"
    img_dir.mkdir(parents=True, exist_ok=True)
    (root / "rrsisd").mkdir(parents=True, exist_ok=True)
    h, w = size
    images, anns, refs = [], [], []
    out: dict[str, Any] = {"samples": {"train": [], "val": [], "test": []}, "images": {}}
    splits = ["train", "train", "val", "test"]
    sent_id = 100
    for i, split in enumerate(splits, start=1):
        file_name = f"{i:05d}.jpg"
        ann_mask, (x0, y0, x1, y1) = rect_mask(rng, h, w)
        if i == 1:
            seg: Any = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        elif i == 2:
            seg = rle_encode(ann_mask, compressed=True)
        elif i == 3:
            seg = rle_encode(ann_mask, compressed=False)
        else:  # two polygons: the rectangle and a 2x2 square in the corner
            seg = [[x0, y0, x1, y0, x1, y1, x0, y1], [w - 2, h - 2, w, h - 2, w, h, w - 2, h]]
            ann_mask = ann_mask.copy()
            ann_mask[h - 2 :, w - 2 :] = 1
        real_h = h + 1 if (mismatch and i == 2) else h
        img = _smooth_image(rng, real_h, w)
        Image.fromarray(img).save(img_dir / file_name, quality=95, subsampling=0)
        mask = ann_mask
        if real_h != h:
            mask = np.asarray(
                Image.fromarray(ann_mask).resize((w, real_h), Image.Resampling.NEAREST)
            )
        images.append({"id": i, "file_name": file_name, "height": h, "width": w})
        anns.append({"id": 10 + i, "image_id": i, "segmentation": seg, "category_id": 1})
        sentences = []
        for _ in range(2 if i % 2 else 3):
            text = _sentence(rng) + f" {sent_id}"
            sentences.append(
                {"raw": text.upper(), "sent": text, "tokens": text.split(), "sent_id": sent_id}
            )
            sent_id += 1
        ref = {
            "ref_id": 1000 + i,
            "ann_id": 10 + i,
            "image_id": i,
            "split": split,
            "sentences": sentences,
            "sent_ids": [s["sent_id"] for s in sentences],
            "file_name": file_name,
            "category_id": 1,
        }
        refs.append(ref)
        key = f"images/rrsisd/JPEGImages/{i:05d}"
        out["images"][key] = img_dir / file_name
        for s in sentences:
            out["samples"][split].append(
                dict(
                    sample_id=str(s["sent_id"]),
                    expression=s["raw"],
                    ref_id=str(ref["ref_id"]),
                    image_id=str(i),
                    image_key=key,
                    image=img,
                    mask=mask,
                )
            )
    (root / "rrsisd" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]})
    )
    with open(root / "rrsisd" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    out["refs"] = refs
    return out


def make_jsonl(
    root: str | Path,
    n_images: int = 3,
    size: tuple[int, int] = (32, 32),
    seed: int = 3,
    splits: tuple[str, ...] = ("train", "test"),
) -> dict[str, Any]:
    """JSONL folder: images/img_<i>.png shared by several lines, masks/<sample>.png (0/255).

    Each image has two objects; object 0 has two expressions (one ref, same mask file),
    object 1 has one. Images alternate between ``splits``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    h, w = size
    out: dict[str, Any] = {"samples": {s: [] for s in splits}, "images": {}}
    lines = []
    for i in range(n_images):
        split = splits[i % len(splits)]
        img = _image(rng, h, w)
        Image.fromarray(img).save(root / "images" / f"img_{i}.png")
        key = f"images/img_{i}"
        out["images"][key] = root / "images" / f"img_{i}.png"
        for obj in range(2):
            mask, _ = rect_mask(rng, h, w)
            mask_rel = f"masks/img_{i}_obj{obj}.png"
            Image.fromarray(mask * 255).save(root / mask_rel)
            for e in range(2 if obj == 0 else 1):
                sid = f"s{i}_{obj}_{e}"
                text = _sentence(rng)
                lines.append(
                    json.dumps(
                        {
                            "sample_id": sid,
                            "image": f"images/img_{i}.png",
                            "mask": mask_rel,
                            "expression": text,
                            "split": split,
                            "kind": "test",
                        }
                    )
                )
                out["samples"][split].append(
                    dict(
                        sample_id=sid,
                        expression=text,
                        ref_id=mask_rel,
                        image_id=key,
                        image_key=key,
                        image=img,
                        mask=mask,
                    )
                )
    (root / "annotations.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def make_entities(
    root: str | Path,
    images: dict[str, Path],
    tag: str = "felzenszwalb",
    k: int = 5,
    seed: int = 4,
) -> dict[str, np.ndarray]:
    """Write ``<root>/entities/<tag>/<key>.png`` label maps (values 0..k) at each image's size."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    maps = {}
    for key, path in images.items():
        with Image.open(path) as im:
            w, h = im.size
        labels = rng.integers(0, k + 1, size=(h, w), dtype=np.uint8)
        target = root / "entities" / tag / f"{key}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(target)
        maps[key] = labels
    manifest = root / "entities" / tag / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "format": "entitwist-entities/1",
                "generator": tag,
                "params": {},
                "checkpoint_sha256": None,
                "max_entities": k,
            }
        )
    )
    return maps

"""Synthetic referring datasets: the JSONL writer.

The scenes come from :func:`entitwist.data.synthetic_scene.generate_scene` (the painter) and
their sentences from :func:`entitwist.data.synthetic_expressions.generate_expressions`
(verified, unambiguous referring expressions of the
:data:`~entitwist.data.synthetic_expressions.EXPRESSION_TYPES`); import them from there.

:func:`write_dataset` writes the JSONL folder format (``images/``, ``masks/``,
``annotations.jsonl``) that :func:`entitwist.data.load_dataset` reads as ``"jsonl"``: one
image per scene, splits by scene, a ``swap_id`` partner per sentence, and per-scene records
so that a killed run restarts where it stopped. ``entitwist synth`` (:mod:`entitwist.data.cli`)
is its command.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from entitwist.data.synthetic_expressions import EXPRESSION_TYPES, generate_expressions
from entitwist.data.synthetic_scene import generate_scene
from entitwist.errors import DataError, InputError
from entitwist.utils.atomic import atomic_path, remove_entries

__all__ = ["scene_seed", "write_dataset"]

FORMAT_VERSION = 1
_STATE, _RECORDS = ".synth_state.json", ".synth_records"
_OURS = ("images", "masks", "entities", "annotations.jsonl", "synth.json", _STATE, _RECORDS)


def scene_seed(seed: int, index: int, attempt: int = 0) -> int:
    """The scene seed of scene ``index`` of a dataset drawn with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index), int(attempt)]).generate_state(1)[0])


def _split_names(n: int, splits: tuple[float, float, float], seed: int) -> list[str]:
    fr = np.asarray(splits, float)
    counts = np.floor(fr * n).astype(int)
    for i in np.argsort(-(fr * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    # every split asked for gets at least one scene when there are enough scenes
    for i in (2, 1):
        if fr[i] > 0 and counts[i] == 0 and counts[0] > 1:
            counts[i], counts[0] = 1, counts[0] - 1
    names = np.repeat(np.array(["train", "val", "test"]), counts)
    return names[np.random.default_rng([int(seed), 7]).permutation(n)].tolist()


def _swap_partners(lines: list[dict], rng: np.random.Generator) -> None:
    """Set ``swap_id``: a sample of the same image whose target set is disjoint (or None)."""
    for line in lines:
        tgt = set(line["target_ids"])
        partners = [m["sample_id"] for m in lines if not tgt & set(m["target_ids"])]
        line["swap_id"] = partners[int(rng.integers(len(partners)))] if partners else None


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=3)


def _scene_records(
    out: Path,
    index: int,
    split: str,
    size: int,
    seed: int,
    k: int,
    types: tuple[str, ...],
    scale: float = 1.0,
    density: float = 1.0,
) -> list[dict]:
    """Draw, write and describe one scene (image, masks); returns its annotation lines."""
    for attempt in range(20):
        scene = generate_scene(
            scene_seed(seed, index, attempt), size, object_scale=scale, density=density
        )
        rng = np.random.default_rng([scene_seed(seed, index, attempt), 1])
        refs = generate_expressions(scene, rng, k, types=types)
        sets = [set(r.target_ids) for r in refs]
        if k < 2 or any(not a & b for a in sets for b in sets):  # a swap partner exists
            break
    else:
        raise DataError(
            f"scene {index} has no two expressions with disjoint targets for types {types}; allow more types"
        )
    sid = f"scene_{index:05d}"
    _save_png(out / "images" / f"{sid}.png", scene.image)
    keys: dict[tuple[int, ...], str] = {}
    lines = []
    for j, r in enumerate(refs):
        ref_id = keys.setdefault(r.target_ids, f"{sid}_r{len(keys):02d}")
        sample = f"{sid}_{j:02d}"
        _save_png(out / "masks" / f"{sample}.png", r.mask.astype(np.uint8) * 255)
        lines.append(
            {
                "sample_id": sample,
                "image": f"images/{sid}.png",
                "mask": f"masks/{sample}.png",
                "expression": r.expression,
                "split": split,
                "image_id": sid,
                "ref_id": ref_id,
                "category": r.category,
                "expression_type": r.expression_type,
                "target_ids": list(r.target_ids),
            }
        )
    _swap_partners(lines, rng)
    return lines


def _prepare(out: Path, params: dict, overwrite: bool) -> bool:
    """Make ``out`` ready; returns True when resuming an unfinished run with the same params."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} is a file; give a folder path")
    state = out / _STATE
    if state.exists() and not (out / "annotations.jsonl").exists() and not overwrite:
        try:
            old = json.loads(state.read_text())
        except (OSError, ValueError):
            old = None
        if old == params:
            # a SIGKILL can leave atomic_path's temporary files behind; they are never reused
            for folder in (out, out / "images", out / "masks", out / _RECORDS):
                for tmp in folder.glob(".*.tmp*"):
                    tmp.unlink()
            return True
        raise DataError(
            f"{out} holds an unfinished synth run with other parameters; rerun with those or pass --overwrite"
        )
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(
                f"output folder {out} is not empty; choose an empty folder or pass --overwrite"
            )
        remove_entries(out, _OURS)
    (out / _RECORDS).mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    with atomic_path(state) as tmp:
        tmp.write_text(json.dumps(params))
    return False


def _scene_job(job: tuple) -> list[dict]:
    return _scene_records(*job)


@contextlib.contextmanager
def _scene_pool(workers: int, jobs: int) -> Iterator[Any]:
    """A process pool for :func:`write_dataset` (None: draw in this process)."""
    if workers <= 1 or jobs <= 1:
        yield None
        return
    from entitwist.utils.processes import pool_context

    with pool_context().Pool(min(workers, jobs)) as pool:
        yield pool


def write_dataset(
    out_dir: str | Path,
    n_scenes: int,
    size: int = 512,
    seed: int = 0,
    splits: tuple[float, float, float] = (0.7, 0.1, 0.2),
    expressions_per_scene: int = 8,
    overwrite: bool = False,
    *,
    types: tuple[str, ...] | list[str] | None = None,
    object_scale: float = 1.0,
    density: float = 1.0,
    progress: bool = True,
    workers: int = 1,
) -> dict:
    """Write ``n_scenes`` synthetic scenes in the JSONL folder format.

    Layout: ``<out>/images/scene_XXXXX.png``, ``<out>/masks/<sample_id>.png`` (0/255),
    ``<out>/annotations.jsonl`` (one line per expression: ``sample_id, image, mask,
    expression, split, image_id, ref_id, category, expression_type, target_ids, swap_id``)
    and ``<out>/synth.json`` (parameters and counts). Splits are by scene. ``ref_id`` is
    shared by the sentences of one target set; ``swap_id`` names a sentence of the same
    image whose targets are disjoint (for the sentence-swap test).

    Resumable: every file is written atomically and each finished scene is recorded; a run
    killed midway and restarted with the same arguments skips finished scenes.
    ``annotations.jsonl`` is written last. A non-empty ``out_dir`` is refused unless
    ``overwrite`` (which deletes the dataset's own entries: images, masks, entities,
    annotations).

    Args:
        out_dir: the dataset folder (created).
        n_scenes: number of scenes (images).
        size: image side in pixels.
        seed: dataset seed; scene ``i`` uses :func:`scene_seed` ``(seed, i)``.
        splits: (train, val, test) fractions of the scenes.
        expressions_per_scene: sentences per image (fewer where a scene allows fewer).
        overwrite: replace a dataset in a non-empty ``out_dir``.
        types: restrict to these :data:`EXPRESSION_TYPES` (default all).
        object_scale: object size multiplier, see :func:`generate_scene`.
        density: share of the usual object count in (0, 1], see :func:`generate_scene`.
        progress: show a tqdm bar.
        workers: processes drawing scenes; every scene is a function of ``(seed, index)``,
            so the files are the same for any number of workers.

    Returns:
        summary dict: root, scenes, samples, per-split and per-type counts, seconds.
    """
    import time

    from tqdm import tqdm

    if int(n_scenes) < 1:
        raise InputError(f"n_scenes={n_scenes}; ask for at least 1 scene")
    if int(expressions_per_scene) < 1:
        raise InputError(f"expressions_per_scene={expressions_per_scene}; use at least 1")
    if int(size) < 32:
        raise InputError(f"size={size} is too small; use a size of at least 32")
    if int(workers) < 1:
        raise InputError(f"workers={workers}; use at least 1 process")
    if not 0.5 <= float(object_scale) <= 2.5:
        raise InputError(f"object_scale={object_scale} is out of range; use a value in [0.5, 2.5]")
    if not 0.0 < float(density) <= 1.0:
        raise InputError(f"density={density} is out of range; use a value in (0, 1]")
    splits = tuple(float(v) for v in splits)  # type: ignore[assignment]
    if len(splits) != 3 or min(splits) < 0 or abs(sum(splits) - 1) > 1e-6:
        raise InputError(
            f"splits={splits} must be three non-negative fractions (train, val, test) summing to 1"
        )
    types = tuple(types or EXPRESSION_TYPES)
    unknown = sorted(set(types) - set(EXPRESSION_TYPES))
    if unknown:
        raise InputError(
            f"unknown expression type(s) {unknown}; choose from {', '.join(EXPRESSION_TYPES)}"
        )
    out = Path(out_dir)
    params = {
        "version": FORMAT_VERSION,
        "n_scenes": int(n_scenes),
        "size": int(size),
        "seed": int(seed),
        "splits": list(splits),
        "expressions_per_scene": int(expressions_per_scene),
        "types": list(types),
        "object_scale": float(object_scale),
        "density": float(density),
    }
    _prepare(out, params, overwrite)
    names = _split_names(int(n_scenes), splits, int(seed))
    t0 = time.perf_counter()
    records = out / _RECORDS
    per_scene: dict[int, list[dict]] = {}
    jobs = []
    for i in range(int(n_scenes)):
        rec = records / f"{i:05d}.json"
        if rec.exists():
            per_scene[i] = json.loads(rec.read_text())
        else:
            jobs.append(
                (
                    out,
                    i,
                    names[i],
                    int(size),
                    int(seed),
                    int(expressions_per_scene),
                    types,
                    float(object_scale),
                    float(density),
                )
            )
    bar = tqdm(
        total=int(n_scenes),
        initial=len(per_scene),
        desc="synth",
        unit="scene",
        disable=not progress,
    )
    with bar, _scene_pool(int(workers), len(jobs)) as pool:
        drawn = pool.imap(_scene_job, jobs, chunksize=4) if pool else map(_scene_job, jobs)
        for job, scene_lines in zip(jobs, drawn):  # in scene order, whatever the workers
            with atomic_path(records / f"{job[1]:05d}.json") as tmp:
                tmp.write_text(json.dumps(scene_lines))
            per_scene[job[1]] = scene_lines
            bar.update(1)
    lines = [line for i in range(int(n_scenes)) for line in per_scene[i]]
    summary = {
        "root": str(out),
        "scenes": int(n_scenes),
        "samples": len(lines),
        "splits": dict(Counter(line["split"] for line in lines)),
        "types": dict(Counter(line["expression_type"] for line in lines)),
        "seconds": round(time.perf_counter() - t0, 2),
        "params": params,
    }
    with atomic_path(out / "synth.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    with atomic_path(out / "annotations.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    shutil.rmtree(records, ignore_errors=True)
    (out / _STATE).unlink(missing_ok=True)
    return summary

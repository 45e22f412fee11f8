"""Many images in one call: a folder, a glob, or a CSV / JSONL list of (image, sentence[,
output]) rows, segmented with one loaded model.

- :func:`collect_items` turns the input into :class:`BatchItem` s (output stem per image).
- :func:`run_chunk` segments a chunk of ``batch_size`` items: their whole-scene views go
  through the network in one forward pass (:meth:`Predictor.predict_many`), then each
  image is refined and written like a single image (:func:`~entitwist.inference.pipeline.segment_source`).
- :func:`segment_batch` runs every chunk here, or on Lightning's predict loop in several
  processes / GPUs (:mod:`entitwist.inference.batch_ddp`). Chunks are fixed by position in
  the list, whatever the number of processes, so the outputs do not depend on it.

An image whose outputs all exist is skipped (``overwrite`` redoes it); an image that fails
is recorded (one line) in the report and the others go on.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from entitwist.errors import EntitwistError, InputError
from entitwist.inference.outputs import KINDS, OutputPlan, check_output_folder, stem_outputs
from entitwist.inference.pipeline import SegmentOptions, entity_mode, segment_source

__all__ = [
    "BatchItem",
    "BatchSettings",
    "REPORT_NAME",
    "is_batch_input",
    "collect_items",
    "chunks",
    "run_chunk",
    "segment_batch",
    "write_report",
]

REPORT_NAME = "failures.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class BatchItem:
    """One image to segment: its position in the list, file, sentence and output stem."""

    index: int
    image: Path
    sentence: str
    stem: Path

    def plan(self, kinds: list[str]) -> OutputPlan:
        return OutputPlan(stem_outputs(self.stem, kinds))


@dataclass
class BatchSettings:
    """What every image of a batch gets.

    Attributes:
        out_dir: the output folder (stems are inside it unless a row gives an absolute one).
        options: :class:`SegmentOptions` (``entities`` must be ``auto`` or ``none``).
        kinds: output kinds (:data:`~entitwist.inference.outputs.KINDS`).
        overwrite: redo images whose outputs exist.
        batch_size: images per forward pass of the whole-scene views.
        threads: torch's intra-op threads per process (None: torch's default here,
            cores / processes under Lightning). Floating-point sums depend on the thread
            count, so outputs are bit-identical across process counts at equal ``threads``.
    """

    out_dir: Path
    options: SegmentOptions = field(default_factory=SegmentOptions)
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    overwrite: bool = False
    batch_size: int = 4
    threads: int | None = None


def is_batch_input(spec: str | os.PathLike) -> bool:
    """A folder, a glob pattern, or a ``.csv`` / ``.jsonl`` list."""
    text = str(spec)
    path = Path(text)
    return (
        path.is_dir()
        or path.suffix.lower() in {".csv", ".jsonl"}
        or (any(ch in text for ch in "*?[") and not path.exists())
    )


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InputError(f"list {str(path)!r} does not exist; give a CSV or JSONL file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read list {str(path)!r} ({type(exc).__name__}); fix it") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or "image" not in reader.fieldnames:
            raise InputError(
                f"list {str(path)!r} has no 'image' column; its first line must name the columns "
                "image,sentence[,output]"
            )
        return [dict(row) for row in reader]
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(
                f"line {n} of {str(path)!r} is not JSON; write one object per line, e.g. "
                '{"image": "a.tif", "sentence": "the red roof"}'
            ) from None
        if not isinstance(row, dict) or "image" not in row:
            raise InputError(f"line {n} of {str(path)!r} has no 'image' key; add it")
        rows.append(row)
    return rows


def collect_items(
    spec: str | os.PathLike, sentence: str | None, out_dir: str | os.PathLike
) -> list[BatchItem]:
    """The images of a folder (its PNG / JPEG / TIFF files, sorted), a glob (sorted), or a
    CSV / JSONL list (rows ``image, sentence[, output]``, relative paths from the list's
    folder; a row without a sentence takes ``sentence``). The output stem is
    ``out_dir/<output>`` or ``out_dir/<image stem>`` (``_2``, ``_3`` ... for repeats)."""
    out = Path(out_dir)
    path = Path(spec)
    rows: list[tuple[Path, str, str | None]] = []
    if path.suffix.lower() in {".csv", ".jsonl"}:
        for row in _read_rows(path):
            image = Path(str(row.get("image") or "").strip())
            image = image if image.is_absolute() else path.parent / image
            text = row.get("sentence")
            text = sentence if text is None or not str(text).strip() else str(text)
            output = str(row.get("output") or "").strip() or None
            rows.append((image, text or "", output))
    else:
        if path.is_dir():
            if path.resolve() == out.resolve():
                raise InputError(
                    f"the output folder {str(out)!r} is the input folder; choose another one"
                )
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files = sorted(Path(p) for p in glob.glob(str(spec)))
            files = [p for p in files if p.is_file() and p.resolve().parent != out.resolve()]
        if not files:
            raise InputError(f"{str(spec)!r} holds no PNG, JPEG or TIFF image; check the path")
        if sentence is None or not sentence.strip():
            raise InputError(
                "the sentence is required for a folder or a glob; give it after the images"
            )
        rows = [(p, sentence, None) for p in files]
    if not rows:
        raise InputError(f"list {str(spec)!r} has no rows; add image,sentence lines")
    stems = [Path(o).with_suffix("") if o else Path(img.stem) for img, _, o in rows]
    counts: dict[Path, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    seen: dict[Path, int] = {}
    items = []
    for i, ((image, text, _), s) in enumerate(zip(rows, stems)):
        seen[s] = seen.get(s, 0) + 1
        if counts[s] > 1 and seen[s] > 1:
            s = s.with_name(f"{s.name}_{seen[s]}")
        items.append(BatchItem(i, image, text, s if s.is_absolute() else out / s))
    return items


def chunks(items: list[BatchItem], size: int) -> list[list[BatchItem]]:
    """Consecutive chunks of ``size`` items (the last one shorter)."""
    size = max(1, int(size))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _status(item: BatchItem, status: str, error: str | None = None) -> dict[str, Any]:
    return {
        "index": item.index,
        "image": str(item.image),
        "sentence": item.sentence,
        "output": str(item.stem),
        "status": status,
        "error": error,
    }


def _one_line(exc: BaseException) -> str:
    text = (str(exc).splitlines() or [""])[0]
    return text if isinstance(exc, EntitwistError) else f"{type(exc).__name__}: {text}"[:300]


def run_chunk(items: list[BatchItem], predictor: Any, settings: BatchSettings) -> list[dict]:
    """Segment a chunk: finished images are skipped, the whole-scene views of the others go
    through one forward pass, then each is refined and written. Returns one status dict
    per item (``status``: ``done``, ``skipped`` or ``failed`` with ``error``)."""
    from entitwist.imaging import read_options
    from entitwist.inference.raster import RasterSource, gdal_env
    from entitwist.inference.tiling import TilingOptions, scene_view

    opts = settings.options
    # --bands / --stretch when given, else what the model was trained with
    reading = read_options(opts.bands, opts.stretch, getattr(predictor, "read_options", None))
    tiling = opts.tiling or TilingOptions()
    mode = entity_mode(opts.entities)
    statuses: dict[int, dict[str, Any]] = {}
    todo: list[tuple[BatchItem, Any, Any]] = []  # (item, source, view)
    with contextlib.ExitStack() as stack:
        stack.enter_context(gdal_env())
        for item in items:
            plan = item.plan(settings.kinds)
            if plan.finished() and not settings.overwrite:
                statuses[item.index] = _status(item, "skipped")
                continue
            try:
                if not item.sentence.strip():
                    raise InputError("the sentence is empty; give a referring sentence")
                item.stem.parent.mkdir(parents=True, exist_ok=True)
                check_output_folder(item.stem.parent)
                source = stack.enter_context(
                    RasterSource(item.image, **reading, nodata=opts.nodata)
                )
                todo.append((item, source, scene_view(source, tiling.max_side)))
            except Exception as exc:
                statuses[item.index] = _status(item, "failed", _one_line(exc))
        coarse: list[np.ndarray | None] = [None] * len(todo)
        if todo:
            try:
                coarse = list(
                    predictor.predict_many(
                        [view.rgb for _, _, view in todo],
                        [item.sentence for item, _, _ in todo],
                        entities=None if mode == "none" else "auto",
                    )
                )
            except Exception as exc:
                for item, _, _ in todo:
                    statuses[item.index] = _status(item, "failed", _one_line(exc))
                todo = []
        for (item, source, view), prob in zip(todo, coarse):
            try:
                segment_source(
                    source,
                    item.sentence,
                    predictor,
                    item.plan(settings.kinds),
                    opts,
                    overwrite=True,  # finished images were skipped; partial outputs are ours
                    progress=False,
                    view=view,
                    coarse=prob,
                )
                statuses[item.index] = _status(item, "done")
            except Exception as exc:
                statuses[item.index] = _status(item, "failed", _one_line(exc))
    return [statuses[item.index] for item in items]


def run_items(
    items: list[BatchItem], predictor: Any, settings: BatchSettings, progress: bool = True
) -> list[dict[str, Any]]:
    """Every chunk in this process, with a progress bar."""
    import torch
    from tqdm.auto import tqdm

    statuses: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        with tqdm(total=len(items), desc="segmenting", unit="image", disable=not progress) as bar:
            for chunk in chunks(items, settings.batch_size):
                statuses += run_chunk(chunk, predictor, settings)
                bar.update(len(chunk))
    finally:
        torch.set_num_threads(threads)
    return statuses


def write_report(out_dir: Path, statuses: list[dict[str, Any]]) -> Path:
    """``out_dir/failures.jsonl``: one JSON line per failed image (empty when none failed),
    written atomically."""
    from entitwist.utils import atomic_write_bytes

    failed = sorted((s for s in statuses if s["status"] == "failed"), key=lambda s: s["index"])
    lines = "".join(
        json.dumps({k: s[k] for k in ("image", "sentence", "output", "error")}) + "\n"
        for s in failed
    )
    path = out_dir / REPORT_NAME
    atomic_write_bytes(path, lines.encode("utf-8"))
    return path


def segment_batch(
    items: list[BatchItem],
    predictor: Any,
    settings: BatchSettings,
    *,
    devices: int = 1,
    num_nodes: int = 1,
    accelerator: str = "cpu",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Segment ``items`` (here, or on Lightning's predict loop when ``devices * num_nodes >
    1``), write the report, and return the statuses in list order."""
    if entity_mode(settings.options.entities) not in {"auto", "none"}:
        raise InputError(
            "--entities takes auto or none for several images (a label-map file fits one image)"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no CRS.*")  # one line per image is noise
        if devices * num_nodes > 1:
            from entitwist.inference.batch_ddp import run_ddp

            merged = run_ddp(
                items,
                predictor,
                settings,
                devices=devices,
                num_nodes=num_nodes,
                accelerator=accelerator,
                progress=progress,
            )
            if merged is None:  # another machine of the run writes the report
                return []
            statuses = merged
        else:
            statuses = run_items(items, predictor, settings, progress)
    statuses.sort(key=lambda s: s["index"])
    write_report(settings.out_dir, statuses)
    return statuses

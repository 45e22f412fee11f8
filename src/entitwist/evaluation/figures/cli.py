"""The ``entitwist figures`` command: its parser and one function per figure kind.

The numbers come from the sibling modules (:mod:`~entitwist.evaluation.figures.prx`,
:mod:`~entitwist.evaluation.figures.ksweep`, :mod:`~entitwist.evaluation.figures.features`,
:mod:`~entitwist.evaluation.figures.overlays`), the models are loaded and run by
:mod:`~entitwist.evaluation.figures.model`, the drawing is :mod:`entitwist.evaluation.plots`'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from entitwist.errors import ConfigError, InputError
from entitwist.evaluation.evaluate import evaluate_defaults, load_model
from entitwist.evaluation.figures.features import dat_pca, stage_maps
from entitwist.evaluation.figures.ksweep import ksweep_points
from entitwist.evaluation.figures.model import describe_model, run_single
from entitwist.evaluation.figures.overlays import write_overlays
from entitwist.evaluation.figures.prx import prx_curve_of, thresholds
from entitwist.evaluation.figures.results import METRIC_KEYS, read_results
from entitwist.utils.cli_parser import (
    OneLineArgumentParser,
    add_device_option,
    add_model_option,
    add_quiet_option,
)

__all__ = ["build_parser", "main"]


def _add_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--dataset", default="jsonl", help="refsegrs, rrsisd, risbench or jsonl")
    p.add_argument("--root", required=required, help="dataset folder")
    p.add_argument("--split", default="test", help="split (default test)")
    p.add_argument(
        "--data-entities", default="auto", help="entity store: 'auto', a tag or folder, 'none'"
    )


def _add_model_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, help="image file (PNG, JPEG, GeoTIFF...)")
    p.add_argument("--sentence", required=True, help="the referring sentence")
    p.add_argument(
        "--entities",
        default="auto",
        help="'auto' (weight-free maps), 'none', or a label-map PNG of the image's size",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="entitwist figures",
        description="Figures of the paper: overlays, Pr@X curve, K sweep (Fig. 6), stage maps "
        "(Fig. 5), DAT PCA (Fig. 8).",
    )
    common = OneLineArgumentParser(add_help=False)
    add_device_option(common)
    sub = parser.add_subparsers(
        dest="kind", required=True, metavar="{overlays,prx,ksweep,stages,pca}"
    )

    p = sub.add_parser(
        "overlays", parents=[common], help="image, sentence, ground truth and prediction per sample"
    )
    add_model_option(p)
    _add_data_args(p, required=True)
    p.add_argument(
        "--ids", default=None, help="comma-separated sample ids (default: the first --n)"
    )
    p.add_argument("--n", type=int, default=8, help="number of samples when --ids is not given")
    p.add_argument("-o", "--out", required=True, help="output folder")

    p = sub.add_parser("prx", parents=[common], help="Pr@X against the IoU threshold X")
    p.add_argument("--results", nargs="+", default=None, help="results JSONs or per-sample CSVs")
    add_model_option(
        p,
        nargs="+",
        required=False,
        default=None,
        help="score these models (save_pretrained folders or .ckpt files) here instead",
    )
    _add_data_args(p, required=False)
    p.add_argument("--labels", nargs="+", default=None, help="legend labels, one per curve")
    p.add_argument("--protocol", choices=("lavt", "original"), default="lavt")
    p.add_argument("--step", type=float, default=0.01, help="threshold step (default 0.01)")
    batch = evaluate_defaults()["batch_size"]
    p.add_argument("--batch-size", type=int, default=batch, help=f"batch size (default {batch})")
    add_quiet_option(p)
    p.add_argument("-o", "--out", required=True, help="output picture (.png, .pdf, .svg)")

    p = sub.add_parser("ksweep", help="mIoU against the number of entity masks K (Fig. 6)")
    p.add_argument("--results", nargs="+", required=True, help="results JSONs or folders of runs")
    p.add_argument(
        "--k", nargs="+", type=int, default=None, help="K of each results file, in order"
    )
    p.add_argument("--metric", default="mIoU", choices=METRIC_KEYS)
    p.add_argument("--protocol", choices=("lavt", "original"), default="lavt")
    p.add_argument("--split", default="test", help="rows of this split only (default test)")
    p.add_argument("-o", "--out", required=True)

    p = sub.add_parser(
        "stages",
        parents=[common],
        help="language-referred feature maps of the four stages (Fig. 5)",
    )
    add_model_option(p)
    p.add_argument("--compare", nargs="+", default=[], help="further models, one row each")
    _add_model_input_args(p)
    p.add_argument(
        "--reduce", choices=("mean", "pca", "norm"), default="mean", help="channels -> one map"
    )
    p.add_argument(
        "--blend",
        type=float,
        default=0.0,
        help="draw the maps with this opacity (0..1) over the grey image (default 0: maps only)",
    )
    p.add_argument("-o", "--out", required=True)

    p = sub.add_parser(
        "pca",
        parents=[common],
        help="3D PCA of visual and textual features before/after DAT (Fig. 8)",
    )
    add_model_option(p)
    _add_model_input_args(p)
    p.add_argument("--stage", type=int, default=4, help="stage 1..4 (default 4)")
    p.add_argument("--points", type=int, default=2000, help="at most this many positions per cloud")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {
        "overlays": _cmd_overlays,
        "prx": _cmd_prx,
        "ksweep": _cmd_ksweep,
        "stages": _cmd_stages,
        "pca": _cmd_pca,
    }[args.kind](args)


def _dataset(args: argparse.Namespace, model: Any) -> Any:
    from entitwist.data import load_dataset
    from entitwist.entities.resolve import EntitySpec, resolve_store
    from entitwist.train.datamodule import check_data_args

    check_data_args(dataset=args.dataset, root=args.root)
    k = model.config.fusion.max_entities
    need = EntitySpec.of(model.config)  # the store must match the model's generator and K
    store = (
        None
        if need is None
        else resolve_store(Path(args.root), args.data_entities, need, option="--data-entities")
    )
    ent = None if store is None else str(store)
    return load_dataset(
        args.dataset,
        args.root,
        args.split,
        transform=None,
        entities=ent,
        one_expression_per_ref=False,
        max_entities=k,
    )


def _entities_arg(value: str | None) -> Any:
    if value is None or value.lower() == "none":
        return None
    if value.lower() == "auto":
        return "auto"
    from entitwist.imaging import read_label_map

    return read_label_map(value)  # (H, W) uint8; DataError when missing


def _cmd_overlays(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() in (".png", ".pdf", ".svg") or out.is_file():
        raise ConfigError(f"-o {str(out)!r} must be a folder for the overlays (one PNG per sample)")
    if args.ids is None and args.n < 1:
        raise ConfigError(f"--n {args.n} must be at least 1")
    model = load_model(args.model)
    ds = _dataset(args, model)
    ids = [r.sample_id for r in ds.records]
    if args.ids is not None:
        wanted = [s.strip() for s in args.ids.split(",") if s.strip()]
        where = {sid: i for i, sid in enumerate(ids)}
        missing = [s for s in wanted if s not in where]
        if not wanted or missing:
            raise InputError(
                f"sample id(s) {', '.join(missing) or '(none)'} not in the {args.split} split; "
                f"it has e.g. {', '.join(ids[:3])}"
            )
        indices = [where[s] for s in wanted]
    else:
        indices = list(range(min(args.n, len(ids))))
    written = write_overlays(model, ds, indices, out, device=args.device)
    for it in written["items"]:
        print(f"{it['sample_id']}: IoU {it['iou']:.3f}  {it['sentence']!r}")
    print(f"wrote {len(written['panels'])} overlays and {written['grid']} in {out}")
    return 0


def _cmd_prx(args: argparse.Namespace) -> int:
    from entitwist.evaluation.plots import check_output, plot_prx

    check_output(args.out)
    if not args.results and not args.model:
        raise ConfigError("give --results JSON... or -m MODEL with --root (to score it here)")
    if not 0 < args.step <= 0.4:
        raise ConfigError(f"--step {args.step} must be in (0, 0.4], e.g. 0.01")
    xs = thresholds(0.5, 0.9, args.step)
    results = [read_results(p, args.protocol) for p in args.results or []]
    for ckpt in args.model or []:
        if not args.root:
            raise ConfigError("-m/--model needs --root (and --dataset, --split) to score the model")
        from entitwist.data import ReferringTransform
        from entitwist.evaluation.evaluate import evaluate

        model = load_model(ckpt)
        raw = _dataset(args, model)
        raw.transform = ReferringTransform(model.config.visual.img_size, model.tokenizer)
        scores, per_sample = evaluate(
            model,
            raw,
            protocols=(args.protocol,),
            batch_size=max(1, args.batch_size),
            device=args.device,
            progress=not args.quiet,
        )
        ious = np.asarray([r[f"{args.protocol}_IoU"] for r in per_sample])
        label = f"{Path(ckpt).name} {args.dataset} {args.split}"
        results.append(
            {"row": scores[args.protocol], "ious": ious, "label": label, "source": str(ckpt)}
        )
    if args.labels:
        if len(args.labels) != len(results):
            raise ConfigError(f"--labels gives {len(args.labels)} names for {len(results)} curves")
        for r, name in zip(results, args.labels):
            r["label"] = name
    curves = [prx_curve_of(r, xs) for r in results]
    path = plot_prx(curves, args.out)
    for c in curves:
        pts = "  ".join(
            f"Pr@{x:g}={y:.2f}" for x, y in zip(c["x"], c["y"]) if round(x * 10, 6) == round(x * 10)
        )
        print(f"{c['label']}: {pts}" + ("" if c["fine"] else "  (Pr@ columns only)"))
    print(f"wrote {path}")
    return 0


def _cmd_ksweep(args: argparse.Namespace) -> int:
    from entitwist.evaluation.plots import check_output, plot_ksweep

    check_output(args.out)
    series = ksweep_points(
        args.results, ks=args.k, protocol=args.protocol, metric=args.metric, split=args.split
    )
    path = plot_ksweep(series, args.out, metric=args.metric)
    for name, points in series.items():
        print(f"{name}: " + "  ".join(f"K={k}: {v:.2f}" for k, v in points))
    print(f"wrote {path}")
    return 0


def _cmd_stages(args: argparse.Namespace) -> int:
    from entitwist.evaluation.plots import check_output, plot_stages
    from entitwist.imaging import read_image

    check_output(args.out)
    if not 0 <= args.blend <= 1:
        raise ConfigError(f"--blend {args.blend} must be between 0 and 1")
    models = [(p, load_model(p)) for p in [args.model, *args.compare]]
    image = read_image(args.image)
    entities = _entities_arg(args.entities)
    rows = []
    for path, model in models:
        _, out = run_single(model, image, args.sentence, entities, args.device)
        rows.append(
            {
                "label": f"{Path(path).name}: {describe_model(model)}",
                "maps": stage_maps(out["stages"], args.reduce),
            }
        )
    result = plot_stages(image, args.sentence, rows, args.out, blend=args.blend)
    for row in rows:
        print(
            f"{row['label']}: stages "
            + ", ".join(f"{m.shape[0]}x{m.shape[1]}" for m in row["maps"])  # type: ignore[attr-defined]
        )
    print(f"wrote {result}")
    return 0


def _cmd_pca(args: argparse.Namespace) -> int:
    from entitwist.evaluation.plots import check_output, plot_pca
    from entitwist.imaging import read_image

    check_output(args.out)
    if args.points < 3:
        raise ConfigError(f"--points {args.points} must be at least 3")
    model = load_model(args.model)
    if model.config.fusion.dat == "none":
        raise ConfigError(
            f"model {args.model!r} has DAT off (fusion.dat='none'): no F^cube / F^sem to "
            "project; give a model with DAT"
        )
    n_stages = len(model.fusions)
    if not 1 <= args.stage <= n_stages:
        raise ConfigError(f"--stage {args.stage} is out of range; use 1..{n_stages}")
    image = read_image(args.image)
    _, out = run_single(model, image, args.sentence, _entities_arg(args.entities), args.device)
    result = dat_pca(out["stages"][args.stage - 1], max_points=args.points, seed=args.seed)
    title = f'stage {args.stage}, {describe_model(model)}: "{args.sentence}"'
    path = plot_pca(result, args.out, title=title)
    if model.config.fusion.dat == "sa":
        print("note: the SA-only variant has no semantic propagation, so F^sem = F^cube")
    for phase in ("before", "after"):
        r = result[phase]
        print(
            f"{phase} DAT ({r['what']}): centroid distance {r['distance']:.4f}, "
            f"relative to the cloud radius {r['separation']:.4f}"
        )
    print(f"wrote {path}")
    return 0

"""``entitwist report RUNS_DIR -o report.md``: finished runs beside the paper's tables.

A *run* is a result file written by ``entitwist test`` or ``entitwist evaluate``
(``{"results": [rows], ...}``, see :mod:`entitwist.evaluation.tables`) together with the
model configuration that produced it: ``export/config.json`` or ``config.json`` beside the
file, the ``checkpoint`` folder the file names, or else the registry name in its rows. Each
test-split row (published protocol) is matched to the rows of the paper's Tables I-VI
(:mod:`entitwist.evaluation.paper_numbers`) by dataset and model settings, and printed under
the paper's numbers with the difference. Runs that sweep K (Fig. 6) or the channel
propagation (Fig. 7) are tabulated and plotted (PNG beside the report).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entitwist.errors import InputError
from entitwist.evaluation.paper_numbers import FIGURES, FULL, PAPER_ROWS, TABLES, PaperRow
from entitwist.metrics import metric_names
from entitwist.utils import atomic_path
from entitwist.utils.cli_parser import OneLineArgumentParser

__all__ = ["Run", "collect_runs", "render_report", "main"]


@dataclass(frozen=True)
class Run:
    """One finished evaluation: where, which model settings, which scores."""

    path: Path  # the result file
    model: str
    dataset: str
    settings: dict[str, Any]  # dotted config fields
    metrics: dict[str, float]
    mtime: float


def _settings(config: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in ("fusion", "text", "visual", "decoder"):
        section = getattr(config, part)
        for key, value in vars(section).items():
            out[f"{part}.{key}"] = value
    return out


def _config_for(result: Path, extra: dict[str, Any], model_name: str) -> Any:
    from entitwist.config import ModelConfig
    from entitwist.models.registry import get_config

    candidates = [result.parent / "export" / "config.json", result.parent / "config.json"]
    ckpt = extra.get("checkpoint")
    if isinstance(ckpt, str) and ckpt:
        candidates.append(Path(ckpt) / "config.json")
    for path in candidates:
        if path.is_file():
            return ModelConfig.from_json(path)
    return get_config(model_name, pretrained=False)


def collect_runs(runs_dir: str | Path, *, protocol: str = "lavt") -> list[Run]:
    """Every test-split result under ``runs_dir`` (recursively), with its model settings."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise InputError(f"runs folder {runs_dir} not found; pass the folder that holds the runs")
    runs = []
    for path in sorted(runs_dir.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            continue
        for row in data["results"]:
            if not isinstance(row, dict) or row.get("split") != "test":
                continue
            if row.get("protocol") != protocol:
                continue
            config = _config_for(path, data, str(row.get("model") or ""))
            metrics = {k: float(row[k]) for k in metric_names() if row.get(k) is not None}
            runs.append(
                Run(
                    path=path,
                    model=str(row.get("model") or config.name),
                    dataset=str(row.get("dataset")),
                    settings=_settings(config),
                    metrics=metrics,
                    mtime=path.stat().st_mtime,
                )
            )
    return runs


def _matches(run: Run, dataset: str, settings: dict[str, Any]) -> bool:
    return run.dataset == dataset and all(run.settings.get(k) == v for k, v in settings.items())


def _latest(runs: list[Run]) -> Run | None:
    return max(runs, key=lambda r: (r.mtime, str(r.path))) if runs else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(rows: list[PaperRow], runs: list[Run], root: Path) -> list[str]:
    cols = metric_names()
    lines = [
        "| row | | " + " | ".join(cols) + " |",
        "|---|---|" + "---:|" * len(cols),
    ]
    for prow in rows:
        lines.append(
            f"| {prow.label} | paper | "
            + " | ".join(_fmt(prow.numbers.get(c)) for c in cols)
            + " |"
        )
        matching = [r for r in runs if _matches(r, prow.dataset, prow.settings)]
        run = _latest(matching)
        if run is None:
            lines.append("| | no run | " + " | ".join("" for _ in cols) + " |")
            continue
        where = run.path.relative_to(root) if run.path.is_relative_to(root) else run.path
        more = f", latest of {len(matching)}" if len(matching) > 1 else ""
        lines.append(
            f"| | `{run.model}` ({where}{more}) | "
            + " | ".join(_fmt(run.metrics.get(c)) for c in cols)
            + " |"
        )
        diffs = []
        for c in cols:
            ours, theirs = run.metrics.get(c), prow.numbers.get(c)
            diffs.append("" if ours is None or theirs is None else f"{ours - theirs:+.2f}")
        lines.append("| | difference | " + " | ".join(diffs) + " |")
    return lines


def _figure(key: str, runs: list[Run], out: Path) -> tuple[list[str], Path | None]:
    field, title = FIGURES[key]
    fixed = {k: v for k, v in FULL.items() if k not in (field, "text.kind")}
    points: dict[str, dict[Any, float]] = {}
    for dataset in sorted({r.dataset for r in runs}):
        chosen: dict[Any, Any] = {}
        for run in runs:
            if _matches(run, dataset, fixed) and "mIoU" in run.metrics:
                value = run.settings.get(field)
                best = chosen.get(value)
                if best is None or run.mtime > best.mtime:
                    chosen[value] = run
        if len(chosen) >= 2:
            points[dataset] = {v: r.metrics["mIoU"] for v, r in chosen.items()}
    if not points:
        return [], None
    values = sorted({v for p in points.values() for v in p}, key=_order)
    lines = [f"### {title}", "", "| dataset | " + " | ".join(map(str, values)) + " |"]
    lines.append("|---|" + "---:|" * len(values))
    for dataset, p in points.items():
        lines.append(f"| {dataset} | " + " | ".join(_fmt(p.get(v)) for v in values) + " |")
    png = out.with_name(f"{out.stem}_fig{key}.png")
    if key == "6":
        from entitwist.evaluation.plots import plot_ksweep

        plot_ksweep({d: sorted(p.items()) for d, p in points.items()}, png)
    else:
        _bars(points, values, png, title)
    lines += ["", f"![{title}]({png.name})", ""]
    return lines, png


def _order(value: Any) -> tuple[int, float, str]:
    """Numbers in numeric order first (K = 5 before 10), then names alphabetically."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _bars(points: dict[str, dict[Any, float]], values: list[Any], png: Path, title: str) -> None:
    """Grouped bars: one group per dataset, one bar per swept value (Fig. 7)."""
    from entitwist.evaluation.plots import new_figure, save_figure

    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(values), 1)
    for i, value in enumerate(values):
        xs = [d + i * width for d in range(len(points))]
        ys = [p.get(value, 0.0) for p in points.values()]
        ax.bar(xs, ys, width=width, label=str(value))
    ax.set_xticks([d + 0.4 - width / 2 for d in range(len(points))])
    ax.set_xticklabels(list(points))
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, png)


def render_report(runs: list[Run], runs_dir: Path, out: Path) -> tuple[str, list[Path]]:
    """The report's Markdown and the figure files it wrote."""
    lines = [
        "# entitwist runs beside the paper",
        "",
        f"{len(runs)} test result(s) under `{runs_dir}` (published protocol: 480x480, "
        "nearest-resized masks). Paper numbers: Jia et al., Enti-TwistNet, Tables I-VI.",
        "",
    ]
    for key, title in TABLES.items():
        rows = [r for r in PAPER_ROWS if r.table == key]
        lines += [f"## {title}", "", *_table(rows, runs, runs_dir), ""]
    figures = []
    for key in FIGURES:
        fig_lines, png = _figure(key, runs, out)
        lines += fig_lines
        if png is not None:
            figures.append(png)
    unmatched = [
        r
        for r in runs
        if not any(_matches(r, p.dataset, p.settings) for p in PAPER_ROWS)
        and not any(
            _matches(r, r.dataset, {k: v for k, v in FULL.items() if k not in (f, "text.kind")})
            for f, _ in FIGURES.values()
        )
    ]
    if unmatched:
        lines += ["## Runs that match no row of the paper", ""]
        lines += [
            f"- `{r.model}` on {r.dataset}: mIoU {_fmt(r.metrics.get('mIoU'))} ({r.path})"
            for r in unmatched
        ]
        lines.append("")
    return "\n".join(lines), figures


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(
        prog="entitwist report",
        description="Collect finished runs into the paper's Tables I-VI (and Fig. 6/7).",
    )
    parser.add_argument("runs", help="folder searched recursively for test result files")
    parser.add_argument("-o", "--output", default="report.md", help="the Markdown file")
    parser.add_argument("--protocol", default="lavt", choices=["lavt", "original"])
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.output)
    if out.is_dir():
        raise InputError(f"--output {out} is a folder; give a file name such as report.md")
    runs = collect_runs(args.runs, protocol=args.protocol)
    if not runs:
        raise InputError(
            f"no test results under {args.runs}; run `entitwist test` or `entitwist evaluate` first"
        )
    text, figures = render_report(runs, Path(args.runs), out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    if not args.quiet:
        print(f"wrote {out} ({len(runs)} runs)" + "".join(f" and {p}" for p in figures))
    return 0

"""`entitwist report`: runs matched to the paper's table rows, differences, Fig. 6/7."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from entitwist.cli import main
from entitwist.evaluation.paper_numbers import PAPER_ROWS
from entitwist.evaluation.report import collect_runs, render_report
from entitwist.evaluation.tables import make_rows, write_reports
from entitwist.models.registry import get_config

SCORES = {"Pr@0.5": 70.0, "Pr@0.6": 60.0, "Pr@0.7": 50.0, "Pr@0.8": 40.0, "Pr@0.9": 20.0}


def _run(root: Path, name: str, dataset: str, miou: float, mtime: float = 0, **overrides) -> Path:
    """A run folder as `entitwist fit` + `test` leave it: test_results.json, export/config.json."""
    run = root / name
    config = get_config("entitwist_tiny", pretrained=False, **overrides)
    (run / "export").mkdir(parents=True)
    config.to_json(run / "export" / "config.json")
    results = {
        "lavt": {**SCORES, "oIoU": miou + 5, "mIoU": miou},
        "original": {**SCORES, "oIoU": 1.0, "mIoU": 1.0},
    }
    rows = make_rows(results, dataset=dataset, split="test", model=config.name, expressions=9)
    json_path, _ = write_reports(run, "test_results", rows, checkpoint=None)
    if mtime:
        os.utime(json_path, (mtime, mtime))
    # a validation result must be ignored
    write_reports(run, "val_results", make_rows(results, dataset=dataset, split="val"))
    return json_path


def _lines_after(text: str, label: str) -> list[str]:
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(f"| {label} |"))
    return lines[i : i + 3]


def test_runs_fill_their_rows_with_the_difference(tmp_path):
    _run(tmp_path, "full", "rrsisd", 60.0, fusion__max_entities=40)
    _run(tmp_path, "base", "rrsisd", 50.0, fusion__seg=False, fusion__dat="none")
    _run(tmp_path, "sa", "rrsisd", 55.5, fusion__dat="sa")
    runs = collect_runs(tmp_path)
    assert len(runs) == 3 and {r.dataset for r in runs} == {"rrsisd"}
    text, figures = render_report(runs, tmp_path, tmp_path / "report.md")
    assert figures == []
    paper, ours, diff = _lines_after(text, "baseline (no SEG, no DAT)")
    assert "| paper | 69.68 | - | 51.92 | - | 21.79 | - | 59.38 |" in paper
    assert "`entitwist_tiny` (base/test_results.json)" in ours and ours.endswith(
        "| 55.00 | 50.00 |"
    )
    assert diff.endswith("|  | -9.38 |") and "| +0.32 |" in diff  # 70.00 - 69.68 at Pr@0.5
    # the full model fills Table I (BERT), IV's full row, V's full row and VI's SP->SA row
    assert text.count("`entitwist_tiny` (full/test_results.json)") == 4
    _, ours, diff = _lines_after(text, "SA only")
    assert "sa/test_results.json" in ours and diff.endswith("| -16.72 | -9.95 |")
    # rows without a run say so; CLIP rows are not filled by a BERT run
    _, ours, _ = _lines_after(text, "Enti-TwistNet (CLIP)")
    assert "no run" in ours


def test_latest_run_wins_and_other_datasets_are_separate(tmp_path):
    _run(tmp_path, "old", "refsegrs", 10.0, mtime=1_000_000)
    _run(tmp_path, "new", "refsegrs", 20.0, mtime=2_000_000)
    text, _ = render_report(collect_runs(tmp_path), tmp_path, tmp_path / "r.md")
    table2 = text.split("## Table II")[1].split("## Table III")[0]
    assert "new/test_results.json, latest of 2" in table2 and "| 20.00 |" in table2
    assert "old/" not in table2
    assert "new/" not in text.split("## Table II")[0]  # not in Table I (RRSIS-D)


def test_fig6_and_fig7_from_sweeps(tmp_path):
    for k, miou in [(5, 35.0), (10, 40.0), (20, 45.0), (40, 50.0)]:
        _run(tmp_path, f"k{k}", "risbench", miou, fusion__max_entities=k)
    for prop, miou in [("none", 30.0), ("self_attention", 35.0)]:
        _run(tmp_path, prop, "risbench", miou, fusion__propagation=prop)
    out = tmp_path / "out" / "report.md"
    out.parent.mkdir()
    text, figures = render_report(collect_runs(tmp_path), tmp_path, out)
    assert [p.name for p in figures] == ["report_fig6.png", "report_fig7.png"]
    assert all(p.stat().st_size > 1000 for p in figures)
    assert "| risbench | 35.00 | 40.00 | 45.00 | 50.00 |" in text  # K = 5, 10, 20, 40
    assert "| risbench | 50.00 | 30.00 | 35.00 |" in text  # mamba, none, self_attention


def test_paper_numbers_are_the_papers():
    full = [r for r in PAPER_ROWS if r.label in {"SEG + DAT (full)", "w/ DAT, w/ SR", "SP -> SA"}]
    assert {r.numbers["mIoU"] for r in full} == {66.83}
    base = next(r for r in PAPER_ROWS if r.table == "IV" and r.settings["fusion.seg"] is False
                and r.settings["fusion.dat"] == "none")  # fmt: skip
    assert 66.83 - base.numbers["mIoU"] == pytest.approx(7.45)  # the paper's stated gain


def test_command_writes_the_report_and_refuses_bad_input(tmp_path, capsys):
    _run(tmp_path / "runs", "full", "rrsisd", 60.0)
    out = tmp_path / "report.md"
    assert main(["report", str(tmp_path / "runs"), "-o", str(out)]) == 0
    assert "## Table I: RRSIS-D, test" in out.read_text()
    assert main(["report", str(tmp_path / "nowhere"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "-o", str(tmp_path / "x.md")]) == 2
    assert not (tmp_path / "x.md").exists()
    assert main(["report", str(tmp_path / "runs"), "-o", str(tmp_path)]) == 2

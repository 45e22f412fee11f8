"""Enti-TwistNet's published results (Jia, Zhou, Gao, Wang: *Entity-Guided Attention Twisting
Network for Referring Remote Sensing Image Segmentation*, Tables I-VI), as data.

Each :class:`PaperRow` names a table, the row's label, the dataset, the model settings that
make a run belong to the row (compared with the run's :class:`~entitwist.config.ModelConfig`),
and the paper's numbers (percent; ``None`` where the paper prints none). Table V's printed
mIoU column is garbled except for the full model's 66.83; the other three are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["PAPER_ROWS", "TABLES", "PaperRow", "FIGURES"]


@dataclass(frozen=True)
class PaperRow:
    table: str
    label: str
    dataset: str
    settings: dict[str, Any]  # dotted config fields, e.g. {"fusion.seg": False}
    numbers: dict[str, float | None] = field(default_factory=dict)


_M = ("Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "oIoU", "mIoU")

#: The full model's settings (SEG with self-reasoning, DAT SP -> SA with the Mamba channel scan
#: and attention, K = 40); every row below states only what it changes.
FULL: dict[str, Any] = {
    "fusion.seg": True,
    "fusion.self_reasoning": True,
    "fusion.dat": "sp_sa",
    "fusion.propagation": "mamba",
    "fusion.spatial": "attention",
    "fusion.max_entities": 40,
    "text.kind": "bert",
}


def _row(table: str, label: str, dataset: str, change: dict[str, Any], values: tuple) -> PaperRow:
    metrics: tuple[str, ...] = (
        _M if len(values) == 7 else ("Pr@0.5", "Pr@0.7", "Pr@0.9", "oIoU", "mIoU")
    )
    if len(values) == 4:  # Table IV prints Pr@0.5, Pr@0.7, Pr@0.9, mIoU
        metrics = ("Pr@0.5", "Pr@0.7", "Pr@0.9", "mIoU")
    return PaperRow(table, label, dataset, {**FULL, **change}, dict(zip(metrics, values)))


_CLIP = {"text.kind": "clip"}

PAPER_ROWS: list[PaperRow] = [
    _row("I", "Enti-TwistNet (CLIP)", "rrsisd", _CLIP, (78.15, 68.96, 57.24, 43.93, 24.04, 78.21, 66.10)),
    _row("I", "Enti-TwistNet (BERT)", "rrsisd", {}, (77.94, 68.81, 57.07, 44.63, 24.80, 78.16, 66.83)),
    _row("II", "Enti-TwistNet (CLIP)", "refsegrs", _CLIP, (77.92, 69.29, 44.82, 26.83, 7.58, 78.85, 64.02)),
    _row("II", "Enti-TwistNet (BERT)", "refsegrs", {}, (77.72, 69.30, 45.01, 26.66, 8.49, 78.98, 63.82)),
    _row("III", "Enti-TwistNet (CLIP)", "risbench", _CLIP, (76.84, 71.36, 63.50, 52.44, 27.59, 74.40, 67.64)),
    _row("III", "Enti-TwistNet (BERT)", "risbench", {}, (76.13, 71.47, 63.48, 52.38, 27.46, 74.07, 67.50)),
    _row("IV", "baseline (no SEG, no DAT)", "rrsisd", {"fusion.seg": False, "fusion.dat": "none"}, (69.68, 51.92, 21.79, 59.38)),
    _row("IV", "SEG only", "rrsisd", {"fusion.dat": "none"}, (72.66, 53.29, 22.46, 62.54)),
    _row("IV", "DAT only", "rrsisd", {"fusion.seg": False}, (75.68, 55.98, 23.23, 65.02)),
    _row("IV", "SEG + DAT (full)", "rrsisd", {}, (77.94, 57.07, 24.80, 66.83)),
    _row("V", "w/o DAT, w/o SR", "rrsisd", {"fusion.dat": "none", "fusion.self_reasoning": False}, (70.25, 52.40, 22.16, 74.89, None)),
    _row("V", "w/o DAT, w/ SR", "rrsisd", {"fusion.dat": "none"}, (72.66, 53.29, 22.46, 75.92, None)),
    _row("V", "w/ DAT, w/o SR", "rrsisd", {"fusion.self_reasoning": False}, (76.39, 56.64, 23.39, 77.36, None)),
    _row("V", "w/ DAT, w/ SR", "rrsisd", {}, (77.94, 57.07, 24.80, 78.16, 66.83)),
    _row("VI", "SP only", "rrsisd", {"fusion.dat": "sp"}, (70.2, 46.33, 11.42, 68.53, 53.67)),
    _row("VI", "SA only", "rrsisd", {"fusion.dat": "sa"}, (75.71, 56.21, 23.31, 77.22, 65.45)),
    _row("VI", "parallel", "rrsisd", {"fusion.dat": "parallel"}, (77.25, 57.02, 23.79, 77.90, 66.47)),
    _row("VI", "SA -> SP", "rrsisd", {"fusion.dat": "sa_sp"}, (77.62, 57.16, 24.31, 77.85, 66.23)),
    _row("VI", "SP -> SA", "rrsisd", {}, (77.94, 57.07, 24.80, 78.16, 66.83)),
    _row("VI", "ReMamber-V", "rrsisd", {"fusion.spatial": "mamba"}, (76.49, 56.23, 23.26, 77.61, 65.12)),
]  # fmt: skip

TABLES: dict[str, str] = {
    "I": "Table I: RRSIS-D, test",
    "II": "Table II: RefSegRS, test",
    "III": "Table III: RISBench, test",
    "IV": "Table IV: core components, RRSIS-D",
    "V": "Table V: self-reasoning in SEG, RRSIS-D",
    "VI": "Table VI: DAT designs, RRSIS-D",
}

#: Figures the paper shows as plots only (no printed numbers): the swept config field.
FIGURES: dict[str, tuple[str, str]] = {
    "6": ("fusion.max_entities", "Fig. 6: number of entities K (mIoU)"),
    "7": ("fusion.propagation", "Fig. 7: channel propagation (mIoU)"),
}

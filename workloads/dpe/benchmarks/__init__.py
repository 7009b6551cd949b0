"""Benchmark adapters and official metrics: one module per public benchmark family.

Each family reads its public layouts (`adapt`: a row as an `Item`) and, except `generic`, scores
by its official rule (`correct`: one response, True/False, or None for the judge) and metric
(`metrics`, where it is more than accuracy). `detect_family` tells the family of a file from its
columns (and a VLMEvalKit TSV's name) where the benchmark does not declare it.

- generic: any common layout, the rule grading, plain accuracy;
- mmstar: options inside the question, VLMEvalKit's exact matching, accuracy;
- mathvista: `query` with its hint, `decoded_image`, MathVista's normalisation and comparison;
- mmmu: `image_1`..`image_7` placed by `<image N>`, MMMU's answer parsing;
- hallusionbench: `gt_answer`, yes/no reading, aAcc/fAcc/qAcc;
- chartqa: `label` lists or `answer`, relaxed accuracy at 5%.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Any

from dpe.benchmarks import chartqa, generic, hallusionbench, mathvista, mmmu, mmstar
from dpe.benchmarks.common import Item

FAMILIES: dict[str, ModuleType] = {
    module.FAMILY: module for module in (generic, mmstar, mathvista, mmmu, hallusionbench, chartqa)
}
AUTO = "auto"

_STEMS = (
    ("hallusionbench", "hallusionbench"), ("chartqa", "chartqa"), ("mathvista", "mathvista"),
    ("mmmu", "mmmu"), ("mmstar", "mmstar"),
)
"""VLMEvalKit's file names (HallusionBench.tsv, ChartQA_TEST.tsv, MathVista_MINI.tsv,
MMMU_DEV_VAL.tsv, MMStar.tsv), lower-cased prefixes."""


def detect_family(columns: Iterable[str], stem: str = "", first: dict[str, Any] | None = None) -> str:
    """The family of a file, from its columns, its first row and (for VLMEvalKit TSVs) its name."""
    names = {c for c in columns if isinstance(c, str)}
    first = first or {}
    if "gt_answer" in names or {"set_id", "figure_id", "question_id"} <= names:
        return hallusionbench.FAMILY
    if "human_or_machine" in names or ("label" in names and "query" in names):
        return chartqa.FAMILY
    kind = first.get("type")
    if isinstance(kind, str) and kind.lower() in ("human_test", "augmented_test"):
        return chartqa.FAMILY
    if "decoded_image" in names or {"question_type", "answer_type"} <= names or {"pid", "query"} <= names:
        return mathvista.FAMILY
    if "image_1" in names or {"subfield", "topic_difficulty"} & names:
        return mmmu.FAMILY
    if "meta_info" in names:
        return mmstar.FAMILY
    lowered = stem.lower()
    for prefix, family in _STEMS:
        if lowered.startswith(prefix):
            return family
    return generic.FAMILY


def adapt(row: dict[str, Any], family: str) -> Item:
    """A row as an item of `family` (raises ValueError naming what is wrong with it)."""
    if family == AUTO:
        family = detect_family(row.keys())
    return FAMILIES[family].adapt(row)


__all__ = ["AUTO", "FAMILIES", "Item", "adapt", "detect_family"]

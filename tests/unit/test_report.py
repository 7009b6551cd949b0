"""The run report: overall score per model in the first table's last column, weak types (below the
top threshold, above the blind floor) marked, and each type's change from M0 with a 95% interval from the stored counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dpe import layout
from dpe.intervals import proportion_change
from dpe.records import SampleRecord, png_bytes, records_to_parquet
from dpe.report import type_changes, write_report
from dpe.spec import StageName, Storage
from dpe.spec.storage import LocalStorage
from dpe.store import LocalStore
from dpe.taxonomy import CapabilityType, QuestionFormat

NS, RUN = "default", "spiral"
ACCURACY = {0: {"map": 0.25, "medical": 0.5}, 1: {"map": 0.5, "medical": 0.5}, 2: {"map": 0.75, "medical": 0.45}}
OVERALL = {0: 0.31, 1: 0.42, 2: 0.53}
THRESHOLDS = [0.3, 0.5]


def benchmark_items(counts: dict[CapabilityType, int]) -> bytes:
    image = png_bytes(Image.new("RGB", (4, 4)))
    records = [
        SampleRecord(
            id=f"{t.value}-{i}", image=image, question="q", answer="a", capability_type=t,
            question_format=QuestionFormat.free_text, difficulty=0, source="benchmark:world",
        )
        for t, n in counts.items()
        for i in range(n)
    ]  # fmt: skip
    return records_to_parquet(records)


def stored_run(tmp_path: Path, *, items: bool, unsettled: int = 0) -> tuple[LocalStore, Storage]:
    store = LocalStore(tmp_path / "store")
    if items:
        store.put_bytes(layout.run_key(NS, RUN, "benchmarks", "world.parquet"), benchmark_items({CapabilityType.map: 40, CapabilityType.medical: 20}))
    for k in (0, 1, 2):
        store.put_json(layout.iteration_key(NS, RUN, k), {"index": k})
        bench = {"score": OVERALL[k], "unsettled": unsettled, "by_capability_type": ACCURACY[k]}
        evaluation = {"scores": {"overall": OVERALL[k], "world": OVERALL[k]}, "benchmarks": {"world": bench}}
        store.put_json(layout.result_key(NS, RUN, k, StageName.evaluate), evaluation)
    weights = {1: {"map": 0.6, "medical": 0.4}, 2: {"map": 0.5, "medical": 0.5}}
    for k, mixture in weights.items():
        diagnosis = {"probe_accuracy": 0.4, "capability_accuracy": ACCURACY[k - 1], "mixture_weights": mixture}
        store.put_json(layout.result_key(NS, RUN, k, StageName.diagnose), diagnosis)
    return store, Storage(local=LocalStorage(path=str(tmp_path / "store")))


def report_lines(store: LocalStore) -> list[str]:
    return store.get_bytes(layout.report_prefix(NS, RUN) + "report.md").decode().splitlines()


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_first_table_ends_with_each_models_overall_score(tmp_path: Path) -> None:
    store, storage = stored_run(tmp_path, items=True)
    assert write_report(store, storage, NS, RUN, THRESHOLDS).endswith("report.md")
    lines = report_lines(store)
    first = next(i for i, line in enumerate(lines) if line.startswith("| iteration"))
    assert cells(lines[first])[-1] == "overall score of M(k)"
    rows = [cells(line) for line in lines[first + 2 : first + 5]]
    assert [row[0] for row in rows] == ["0", "1", "2"]
    assert [row[-1] for row in rows] == [f"{OVERALL[k]:.3f}" for k in (0, 1, 2)]
    assert [row[2] for row in rows] == ["", "map", ""]


def test_the_type_table_marks_weak_types_and_gives_changes_with_intervals(tmp_path: Path) -> None:
    store, storage = stored_run(tmp_path, items=True, unsettled=4)
    write_report(store, storage, NS, RUN, THRESHOLDS)
    lines = report_lines(store)
    header = next(line for line in lines if line.startswith("| type | M0"))
    assert cells(header) == ["type", "M0", "M1", "M2", "M2 - M0 [95% interval]"]
    by_name = {cells(line)[0]: cells(line) for line in lines[lines.index(header) + 2 :][:2]}
    assert list(by_name) == ["**map** (weak)", "medical"]
    low, high = proportion_change(0.75, 40 - 4, 0.25, 40 - 4)
    assert by_name["**map** (weak)"][-1] == f"+0.500 [{low:+.3f}, {high:+.3f}]"
    low, high = proportion_change(0.45, 20 - 4, 0.5, 20 - 4)
    assert by_name["medical"][-1] == f"-0.050 [{low:+.3f}, {high:+.3f}]"
    for name in ("accuracy_by_type", "change_by_type", "probe_accuracy", "mixture", "rewards", "scores"):
        assert store.get_bytes(layout.report_prefix(NS, RUN) + f"{name}.png").startswith(b"\x89PNG")


def test_without_stored_items_the_change_has_no_interval_and_says_so(tmp_path: Path) -> None:
    store, storage = stored_run(tmp_path, items=False)
    write_report(store, storage, NS, RUN, THRESHOLDS)
    lines = report_lines(store)
    assert "| **map** (weak) | 0.25 | 0.50 | 0.75 | +0.500 |" in lines
    assert any("No interval where the items cannot be counted" in line for line in lines)


def test_an_iteration_not_yet_evaluated_leaves_the_change_on_the_last_evaluated_model(tmp_path: Path) -> None:
    store, storage = stored_run(tmp_path, items=True)
    store.put_json(layout.iteration_key(NS, RUN, 3), {"index": 3})
    write_report(store, storage, NS, RUN, THRESHOLDS)
    header = next(line for line in report_lines(store) if line.startswith("| type | M0"))
    assert cells(header) == ["type", "M0", "M1", "M2", "M3", "M2 - M0 [95% interval]"]


def test_type_changes_skip_missing_models_and_unknown_or_empty_counts() -> None:
    by_type = {"map": {0: 0.2, 2: 0.4}, "medical": {2: 0.5}, "mixed": {0: 0.5, 2: 0.5}}
    counts = {"map": {0: 10, 2: 10}, "mixed": {0: 0, 2: 10}}
    changes = type_changes(by_type, counts, 0, 2)
    assert set(changes) == {"map", "mixed"}
    assert changes["map"] == (pytest.approx(0.2), proportion_change(0.4, 10, 0.2, 10))
    assert changes["mixed"] == (0.0, None)

"""Public benchmark layouts (HF parquet and VLMEvalKit TSV) load with no row refused, ask the question
the benchmark asks, and score by the benchmark's official metric in the evaluate result."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dpe.benchmarks.images import GAP
from dpe.records import SampleRecord, read_records, records_to_parquet
from dpe.sources import Loaded, load_records
from dpe.spec import Benchmark, LocalStorage, Storage
from dpe.stages.evaluate import BenchmarkItems, score
from dpe.store import LocalStore
from dpe.taxonomy import CapabilityType, QuestionFormat
from PIL import Image

W, H = 120, 90


def png(colour: tuple[int, int, int], size: tuple[int, int] = (W, H)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def hf(colour: tuple[int, int, int]) -> dict[str, Any]:
    """An HF `Image` feature cell."""
    return {"bytes": png(colour), "path": None}


def b64(colour: tuple[int, int, int]) -> str:
    return base64.b64encode(png(colour)).decode()


@pytest.fixture
def where(tmp_path: Path) -> tuple[Storage, LocalStore]:
    return Storage(local=LocalStorage(path=str(tmp_path / "store"))), LocalStore(tmp_path / "store")


def load(path: Path, where: tuple[Storage, LocalStore], **kwargs: Any) -> Loaded:
    return load_records(str(path), storage=where[0], store=where[1], source="benchmark:b", **kwargs)


def parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.table({key: [row[key] for row in rows] for key in rows[0]}), path)
    return path


def tsv(path: Path, rows: list[dict[str, str]]) -> Path:
    """A TSV as pandas writes VLMEvalKit's (fields holding a newline quoted)."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


def scored(records: list[SampleRecord], responses: dict[str, str], name: str = "b") -> dict[str, Any]:
    result = score([BenchmarkItems(Benchmark(name=name, uri="builtin:world"), records, 0)], {name: responses}, None)
    return {"score": result["scores"][name], **result["benchmarks"][name]}


def pixel(record: SampleRecord, xy: tuple[int, int]) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(record.image)) as image:
        return image.convert("RGB").getpixel(xy)


# MMStar -----------------------------------------------------------------------------------------

MMSTAR_QUESTION = (
    "Which option describe the object relationship in the image correctly?\n"
    "Options: A: The suitcase is on the book., B: The suitcase is beneath the cat., "
    "C: The suitcase is beneath the bed., D: The suitcase is beneath the book."
)


def test_mmstar_hf_layout_lists_the_options_once(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    path = parquet(tmp_path / "val.parquet", [
        {"index": 0, "question": MMSTAR_QUESTION, "image": hf((200, 0, 0)), "answer": "A",
         "category": "coarse perception", "l2_category": "image scene and topic",
         "meta_info": {"source": "MMBench", "split": "val", "image_path": "images/0.jpg"}},
        {"index": 1, "question": "How many apples are there?\nOptions: A: 1, B: 2, C: 3, D: 4", "image": hf((0, 200, 0)),
         "answer": "C", "category": "instance reasoning", "l2_category": "counting",
         "meta_info": {"source": "SEEDBench", "split": "val", "image_path": "images/1.jpg"}},
    ])
    loaded = load(path, where)
    assert loaded.rejected == []
    first, second = loaded.records
    assert first.options == [
        "The suitcase is on the book.", "The suitcase is beneath the cat.",
        "The suitcase is beneath the bed.", "The suitcase is beneath the book.",
    ]
    assert first.question == (
        "Which option describe the object relationship in the image correctly?\nOptions:\n"
        "A. The suitcase is on the book.\nB. The suitcase is beneath the cat.\n"
        "C. The suitcase is beneath the bed.\nD. The suitcase is beneath the book."
    )
    assert all(first.question.count(option) == 1 for option in first.options[:3])
    assert second.question == "How many apples are there?\nOptions:\nA. 1\nB. 2\nC. 3\nD. 4" and second.answer == "C"
    assert first.provenance["benchmark"] == {"family": "mmstar"}

    # VLMEvalKit's exact matching: a letter, or the one option whose text the answer holds; else the
    # judge, and without one the item counts as wrong in the score (not in the settled accuracy).
    result = scored(loaded.records, {"0": "<think>look</think> \\boxed{A}", "1": "I cannot tell."})
    assert result["score"] == 0.5 and result["accuracy"] == 1.0 and result["unsettled"] == 1
    assert result["metric"] == "accuracy" and result["family"] == "mmstar"
    assert scored(loaded.records, {"0": "The correct option is A", "1": "\\boxed{3}"})["score"] == 1.0


def test_mmstar_vlmevalkit_tsv_with_letter_columns_and_inline_options(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    path = tsv(tmp_path / "MMStar.tsv", [
        {"index": "0", "question": "Which colour is the square?\nOptions: A: red, B: blue", "A": "red", "B": "blue",
         "answer": "B", "category": "coarse perception", "l2-category": "color", "image": b64((0, 0, 220))},
    ])
    loaded = load(path, where)
    (record,) = loaded.records
    assert loaded.rejected == [] and record.question == "Which colour is the square?\nOptions:\nA. red\nB. blue"
    assert record.provenance["benchmark"]["family"] == "mmstar"


# MathVista --------------------------------------------------------------------------------------

def mathvista_rows() -> list[dict[str, Any]]:
    def row(pid: str, question: str, query: str, answer: str, question_type: str, answer_type: str,
            choices: list[str] | None = None, precision: float | None = None, unit: str | None = None) -> dict[str, Any]:
        return {
            "pid": pid, "question": question, "image": f"images/{pid}.jpg", "decoded_image": hf((int(pid) * 40, 10, 10)),
            "choices": choices, "unit": unit, "precision": precision, "answer": answer, "question_type": question_type,
            "answer_type": answer_type, "query": query,
            "metadata": {"split": "testmini", "language": "english", "task": "figure question answering",
                         "skills": ["arithmetic reasoning"], "img_width": W, "img_height": H},
        }

    return [
        row("1", "What fraction of the shape is blue?",
            "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
            "Question: What fraction of the shape is blue?\nChoices:\n(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5",
            "8/11", "multi_choice", "text", choices=["3/11", "8/11", "6/11", "3/5"]),
        row("2", "How much money does Luca need to buy a sour apple candy and a butterscotch candy?",
            "Hint: Please answer the question requiring a floating-point number with two decimal places and provide "
            "the final value, e.g., 1.23, 1.34, 1.45, at the end.\nQuestion: How much money does Luca need to buy a "
            "sour apple candy and a butterscotch candy? (Unit: $)",
            "1.45", "free_form", "float", precision=2.0, unit="$"),
        row("3", "Which number is missing?",
            "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
            "at the end.\nQuestion: Which number is missing?",
            "14", "free_form", "integer"),
    ]


def test_mathvista_testmini_layout_asks_the_query_with_its_hint(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    loaded = load(parquet(tmp_path / "testmini.parquet", mathvista_rows()), where)
    assert loaded.rejected == []
    choice, money, count = loaded.records
    assert choice.question == (
        "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
        "Question: What fraction of the shape is blue?\nChoices:\nA. 3/11\nB. 8/11\nC. 6/11\nD. 3/5"
    )
    assert choice.answer == "B" and choice.question_format is QuestionFormat.multiple_choice
    assert "two decimal places" in money.question and money.question_format is QuestionFormat.numerical
    assert "requiring an integer answer" in count.question
    assert pixel(money, (5, 5)) == (80, 10, 10)  # decoded_image, not the path in `image`
    assert money.provenance["benchmark"] == {
        "family": "mathvista", "question_type": "free_form", "answer_type": "float", "precision": 2, "unit": "$", "gold": "1.45",
    }
    assert choice.provenance["category"] == "figure question answering"


@pytest.mark.parametrize(("responses", "expected"), [
    ({"1": "\\boxed{B}", "2": "\\boxed{1.449}", "3": "\\boxed{14.0}"}, 1.0),
    ({"1": "The answer is (B) 8/11. \\boxed{8/11}", "2": 'The answer is "1.45".', "3": "14"}, 1.0),
    ({"1": "\\boxed{(C) 6/11}", "2": "\\boxed{1.5}", "3": "\\boxed{15}"}, 0.0),
    ({"1": "\\boxed{8/12}", "2": "\\boxed{$1.45}", "3": "\\boxed{13}"}, 2 / 3),
])
def test_mathvista_scores_by_its_normalisation(
    tmp_path: Path, where: tuple[Storage, LocalStore], responses: dict[str, str], expected: float
) -> None:
    """Multiple choice: a letter or the most similar option; floats rounded to the precision; integers
    truncated, as MathVista's `normalize_extracted_answer` does."""
    records = load(parquet(tmp_path / "testmini.parquet", mathvista_rows()), where).records
    result = scored(records, responses)
    assert result["score"] == round(expected, 6) and result["family"] == "mathvista"


# MMMU -------------------------------------------------------------------------------------------

def mmmu_row(id: str, question: str, options: str, answer: str, images: list[tuple[int, int, int] | None], kind: str) -> dict[str, Any]:
    row: dict[str, Any] = {"id": id, "question": question, "options": options, "explanation": "", "answer": answer,
                           "question_type": kind, "subfield": "Art History", "topic_difficulty": "Easy", "img_type": "['Paintings']"}
    for n in range(1, 8):
        colour = images[n - 1] if n <= len(images) else None
        row[f"image_{n}"] = hf(colour) if colour else None
    return row


RED, GREEN, BLUE = (220, 0, 0), (0, 220, 0), (0, 0, 220)


def test_mmmu_multi_image_items_keep_each_image_at_its_place(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    path = parquet(tmp_path / "validation.parquet", [
        mmmu_row("validation_Art_1", "Compare <image 1> with <image 2>. Which was painted first?",
                 "['The first', 'The second', 'Both at once']", "B", [RED, GREEN], "multiple-choice"),
        mmmu_row("validation_Art_2", "Which picture matches <image 1>?", "['<image 2>', '<image 3>']", "A",
                 [RED, GREEN, BLUE], "multiple-choice"),
        mmmu_row("validation_Math_3", "What is x in <image 1>?", "[]", "3.5", [BLUE], "open"),
        mmmu_row("validation_Math_4", "How many hours are in <image 1>?", "[]", "['24/7', '3.429']", [GREEN], "open"),
    ])
    loaded = load(path, where)
    assert loaded.rejected == []
    two, three, single, listed = loaded.records
    assert two.question == (
        "The picture shows <image 1>, <image 2> side by side, each under its label.\n"
        "Compare <image 1> with <image 2>. Which was painted first?\nA. The first\nB. The second\nC. Both at once"
    )
    assert two.provenance["images"] == ["<image 1>", "<image 2>"] and two.answer == "B"
    assert three.options == ["<image 2>", "<image 3>"] and "A. <image 2>\nB. <image 3>" in three.question
    with Image.open(io.BytesIO(three.image)) as sheet:
        assert sheet.width == 3 * W + 4 * GAP
    label = 18
    centre = GAP + label + H // 2
    assert [pixel(three, (GAP + k * (W + GAP) + W // 2, centre)) for k in range(3)] == [RED, GREEN, BLUE]
    assert pixel(single, (5, 5)) == BLUE and single.question == "What is x in <image 1>?"
    assert single.question_format is QuestionFormat.numerical and single.provenance["benchmark"]["golds"] == ["3.5"]
    assert listed.answer == "24/7" and listed.provenance["benchmark"]["golds"] == ["24/7", "3.429"]

    right = {"validation_Art_1": "\\boxed{B}", "validation_Art_2": "The answer is (A).",
             "validation_Math_3": "\\boxed{x = 3.50}", "validation_Math_4": "\\boxed{3.43}"}
    assert scored(loaded.records, right)["score"] == 1.0
    wrong = {"validation_Art_1": "\\boxed{The first}", "validation_Art_2": "\\boxed{B}",
             "validation_Math_3": "\\boxed{3.6}", "validation_Math_4": "\\boxed{3.44}"}
    result = scored(loaded.records, wrong)
    # "The first" is too short for MMMU to read an option's text: MMMU guesses, here the judge would decide.
    assert result["score"] == 0.0 and result["unsettled"] == 1


def test_vlmevalkit_tsv_image_references_and_image_lists(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    """VLMEvalKit rows whose `image` is another row's index, and multi-image rows (a list of base64)."""
    pair = str([b64(RED), b64(GREEN)])
    path = tsv(tmp_path / "MMMU_DEV_VAL.tsv", [
        {"index": "10", "question": "What colour is <image 1>?", "A": "red", "B": "green", "answer": "A",
         "image": b64(RED), "image_path": "a.png", "category": "Art"},
        {"index": "11", "question": "Is <image 1> darker than it looks?", "A": "yes", "B": "no", "answer": "B",
         "image": "10", "image_path": "a.png", "category": "Art"},
        {"index": "12", "question": "Which is green, <image 1> or <image 2>?", "A": "<image 1>", "B": "<image 2>",
         "answer": "B", "image": pair, "image_path": "['b1.png', 'b2.png']", "category": "Art"},
    ])
    loaded = load(path, where)
    assert loaded.rejected == []
    first, reference, several = loaded.records
    assert reference.image == first.image and reference.id == "11"
    assert several.provenance["images"] == ["<image 1>", "<image 2>"]
    centre = GAP + 18 + H // 2
    assert [pixel(several, (GAP + k * (W + GAP) + W // 2, centre)) for k in range(2)] == [RED, GREEN]
    assert several.provenance["benchmark"]["family"] == "mmmu"

    other = tmp_path / "other"
    other.mkdir()
    broken = load(tsv(other / "bench.tsv", [{"index": "1", "question": "Q?", "answer": "x", "image": "7"}]), where)
    assert "neither an image nor the index of a row" in broken.rejected[0].reason


# HallusionBench ---------------------------------------------------------------------------------

HALLUSION = [  # category, subcategory, set, figure, question, gold, answered right
    ("VD", "chart", "0", "0", "0", "1", True),
    ("VD", "chart", "0", "0", "1", "0", True),
    ("VD", "chart", "0", "1", "0", "0", False),
    ("VD", "chart", "0", "1", "1", "0", True),
    ("VS", "map", "1", "1", "0", "1", True),
]


def test_hallusionbench_lmms_lab_layout_scores_aacc_facc_qacc(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    rows = [
        {"category": c, "subcategory": s, "visual_input": "1", "set_id": set_id, "figure_id": f, "sample_note": "note",
         "question_id": q, "question": f"Is the value in figure {f} above {q}?", "gt_answer_details": "details",
         "gt_answer": gold, "filename": f"./{c}/{s}/{set_id}_{f}.png", "image": hf((10 * i, 50, 50))}
        for i, (c, s, set_id, f, q, gold, _) in enumerate(HALLUSION)
    ]
    loaded = load(parquet(tmp_path / "image.parquet", rows), where)
    assert loaded.rejected == []
    records = loaded.records
    assert [r.answer for r in records] == ["Yes", "No", "No", "No", "Yes"]
    assert records[0].question == "Is the value in figure 0 above 0? Please answer yes or no."
    assert records[0].capability_type is CapabilityType.chart_graph and records[4].capability_type is CapabilityType.map

    def said(record: SampleRecord, right: bool) -> str:
        return f"<think>...</think> \\boxed{{{record.answer if right else ('No' if record.answer == 'Yes' else 'Yes')}}}"

    result = scored(records, {r.id: said(r, row[6]) for r, row in zip(records, HALLUSION, strict=True)})
    assert result["metrics"]["aAcc"] == 0.8
    assert result["metrics"]["fAcc"] == round(2 / 3, 6)  # figure (VD, chart, 0, 1) has a wrong answer
    assert result["metrics"]["qAcc"] == round(2 / 3, 6)  # question 0 of set (VD, chart, 0) is wrong on figure 1
    assert result["score"] == round((0.8 + 2 / 3 + 2 / 3) / 3, 6)
    assert (result["metrics"]["figures"], result["metrics"]["question_sets"]) == (3, 3)
    # The evaluate stage stores the items once per run and reads them back in every shard and the merge.
    stored = read_records(records_to_parquet(records)).records
    assert scored(stored, {r.id: said(r, row[6]) for r, row in zip(stored, HALLUSION, strict=True)}) == result


def test_hallusionbench_vlmevalkit_tsv_places_questions_by_index(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    rows = [
        {"index": f"{c}_{s}_1_{set_id}_{f}_{q}", "image": b64((10 * i, 5, 5)), "question": f"Question {i}?",
         "answer": "Yes" if gold == "1" else "No", "category": c, "l2-category": s}
        for i, (c, s, set_id, f, q, gold, _) in enumerate(HALLUSION)
    ]
    loaded = load(tsv(tmp_path / "HallusionBench.tsv", rows), where)
    assert loaded.rejected == []
    place = loaded.records[2].provenance["benchmark"]
    assert (place["set_id"], place["figure_id"], place["question_id"], place["subcategory"]) == ("0", "1", "0", "chart")
    responses = {r.id: ("yes" if row[5] == "1" else "no") if row[6] else "Yes and no." for r, row in zip(loaded.records, HALLUSION, strict=True)}
    result = scored(loaded.records, responses)
    assert result["metrics"]["aAcc"] == 0.8 and result["unsettled"] == 1


# ChartQA ----------------------------------------------------------------------------------------

def test_chartqa_huggingfacem4_layout_scores_relaxed_accuracy(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    path = parquet(tmp_path / "test.parquet", [
        {"image": hf((1, 2, 3)), "query": "What is the highest value?", "label": ["14"], "human_or_machine": 0},
        {"image": hf((4, 5, 6)), "query": "Which country is first?", "label": ["Brazil"], "human_or_machine": 1},
        {"image": hf((7, 8, 9)), "query": "What share voted yes?", "label": ["57", "0.57"], "human_or_machine": 1},
        {"image": hf((9, 8, 7)), "query": "What is the lowest value?", "label": ["0"], "human_or_machine": 0},
    ])
    loaded = load(path, where)
    assert loaded.rejected == []
    records = loaded.records
    assert records[0].question == "What is the highest value?" and records[0].answer == "14"
    assert records[0].capability_type is CapabilityType.chart_graph
    assert records[2].provenance["benchmark"] == {"family": "chartqa", "golds": ["57", "0.57"], "split": "augmented"}
    right = {"test-0": "\\boxed{14.6}", "test-1": "\\boxed{brazil}", "test-2": "\\boxed{58%}", "test-3": "\\boxed{0}"}
    result = scored(records, right)
    assert result["score"] == 1.0 and result["metric"] == "relaxed accuracy"
    wrong = {"test-0": "\\boxed{14.8}", "test-1": "\\boxed{Brazil.}", "test-2": "\\boxed{60}", "test-3": "\\boxed{0.0}"}
    result = scored(records, wrong)
    # 14.8 is 5.7% off; "Brazil." is read without its full stop; 60 is 5.3% off 57; a zero gold needs the same text.
    assert result["metrics"] == {"relaxed_accuracy": 0.25, "relaxed_augmented": 0.5, "relaxed_human": 0.0}


def test_chartqa_lmms_lab_layout(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    path = parquet(tmp_path / "test.parquet", [
        {"type": "human_test", "question": "How many bars are there?", "answer": "5", "image": hf((1, 1, 1))},
        {"type": "augmented_test", "question": "What is the value of Peru?", "answer": "2.5", "image": hf((2, 2, 2))},
    ])
    loaded = load(path, where)
    assert loaded.rejected == [] and [r.provenance["benchmark"]["split"] for r in loaded.records] == ["human", "augmented"]
    result = scored(loaded.records, {"test-0": "\\boxed{5}", "test-1": "\\boxed{2.4}"})
    assert result["metrics"] == {"relaxed_accuracy": 1.0, "relaxed_augmented": 1.0, "relaxed_human": 1.0}


def test_a_declared_family_overrides_detection(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    path = parquet(tmp_path / "bench.parquet", [
        {"question": "What is the value?", "answer": "100", "image": hf((3, 3, 3))},
    ])
    assert "benchmark" not in load(path, where).records[0].provenance
    (record,) = load(path, where, family="chartqa").records
    assert scored([record], {"bench-0": "\\boxed{104}"})["score"] == 1.0
    assert Benchmark(name="c", uri=str(path), family="chartqa").family == "chartqa"


def test_world_benchmark_keeps_plain_accuracy(where: tuple[Storage, LocalStore]) -> None:
    records = load_records("builtin:world", storage=where[0], store=where[1], source="w", world_count=6, world_seed=1, world_image_size=56).records
    result = scored(records, {r.id: f"\\boxed{{{r.answer}}}" for r in records})
    assert result["score"] == result["accuracy"] == 1.0 and result["metric"] == "accuracy" and "metrics" not in result

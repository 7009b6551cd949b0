"""Where the benchmarks report: a marked section of benchmarks/RESULTS.md, and JSON under benchmarks/results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_FILE = HERE / "RESULTS.md"
RESULTS_DIR = HERE / "results"


def markers(name: str) -> tuple[str, str]:
    """The comments that fence a benchmark's section of the results file."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(path: Path, start: str, end: str, block: str) -> None:
    """Put `block` (it begins with `start` and ends with `end`) into the Markdown file at `path`,
    in place of the block between those markers when there is one, else at its end."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def write_section(name: str, markdown: str, path: Path = RESULTS_FILE) -> None:
    """A benchmark's section, fenced by its markers."""
    start, end = markers(name)
    replace_section(path, start, end, f"{start}\n{markdown.rstrip()}\n{end}")


def write_json(name: str, data: Any, directory: Path = RESULTS_DIR) -> Path:
    """The machine-readable results of a benchmark, as benchmarks/results/NAME.json."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path

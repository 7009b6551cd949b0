"""VLMEvalKit's TSV conventions (`ImageBaseDataset.__init__`), applied to a whole file.

A row's `image` cell is base64, or the text of a list of base64 strings (several pictures, with
their names in `image_path`), or, to save room, the `index` of another row whose picture it
shares: a cell of at most 64 characters is such a reference. References are resolved here, before
rows are adapted one by one; one naming no row with a picture is left for the adapter to refuse
with that reason.
"""

from __future__ import annotations

from typing import Any

from dpe.benchmarks.common import REFERENCE_CHARS


def resolve_image_references(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows, each `image` that names another row's index replaced by that row's picture."""
    pictures = {
        str(row.get("index")).strip(): row["image"]
        for row in rows
        if isinstance(row.get("image"), str) and len(row["image"].strip()) > REFERENCE_CHARS
    }
    for row in rows:
        value = row.get("image")
        if isinstance(value, str) and 0 < len(value.strip()) <= REFERENCE_CHARS and value.strip() in pictures:
            row["image"] = pictures[value.strip()]
    return rows

"""The steps of the per-sample pipeline, as the `stage` of a `dpe.generation.Failed`.

The scheduler counts rejections by stage, so these names are what its result files report: where
the money of failed samples went (planning, finding pictures, editing, writing questions, validation).
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """The step a failure belongs to; the values are the `Failed.stage` strings."""

    planner = "planner"
    search = "search"
    image_selector = "image_selector"
    edit_planner = "edit_planner"
    editor = "editor"
    question_generator = "question_generator"
    validator = "validator"
    record = "record"

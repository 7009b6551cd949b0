"""The trace of one sample through the pipeline, which becomes the record's provenance.

A training sample can be traced to its seed, its plan, the searches and every candidate with its
score, the image chosen and how it was edited, every question the validator saw with the verdict,
the model of each role, and what it all cost, from the record alone, without the run's logs.
The trace also remembers the step in progress, so an unexpected error is reported against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dpe.agents.replies import Plan
from dpe.agents.steps import Stage
from dpe.generation import SampleTask


@dataclass
class SampleTrace:
    """What happened to one task so far."""

    task: SampleTask
    stage: Stage = Stage.planner
    """The step in progress."""
    seed_image: str = "none"
    """"used", "unreadable" or "none"."""
    plan: Plan | None = None
    threshold: float | None = None
    """The selector score the assigned type requires."""
    searches: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    edit: dict[str, Any] | None = None
    image: dict[str, Any] | None = None
    """The chosen picture: its key, origin and location."""
    observation: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    """Each generated question with the validator's verdict, in order."""

    def enter(self, stage: Stage) -> None:
        self.stage = stage

    def as_dict(self, *, models: dict[str, str], usage: dict[str, Any]) -> dict[str, Any]:
        """JSON-ready provenance."""
        task = self.task
        return {
            "task_id": task.task_id,
            "seed_id": task.seed.id if task.seed is not None else None,
            "divergent": task.divergent,
            "seed_image": self.seed_image,
            "plan": self.plan.model_dump(mode="json") if self.plan is not None else None,
            "usable_score": self.threshold,
            "searches": self.searches,
            "candidates": self.candidates,
            "edit": self.edit,
            "image": self.image,
            "observation": self.observation,
            "attempts": self.attempts,
            "regenerations": max(len(self.attempts) - 1, 0),
            "models": models,
            "usage": usage,
        }

"""The offline provider: with no agent endpoint configured, the capability world writes the samples.

It honours the same contract as the agents (an assigned type per task, a record with provenance),
so quotas, quality control, storage and resume are exercised exactly as with real agents. Each task
maps to a distinct world sample (its own seed stream per run, or per `generate.seed`, iteration and shard), so samples never
repeat across iterations.
"""

from __future__ import annotations

from collections.abc import Sequence

from dpe.generation import Failed, Produced, SampleTask, parse_task_id, stable_seed
from dpe.taxonomy import QuestionFormat
from dpe.world import sample_at


class WorldProvider:
    """Draws each task's sample from the capability world."""

    def __init__(
        self, stream_root: str, image_size: int, difficulties: Sequence[int] | None = None, formats: Sequence[str] | None = None
    ):
        self.stream_root = stream_root
        self.image_size = image_size
        self.difficulties = difficulties
        self.formats = None if formats is None else [QuestionFormat(f) for f in formats]

    async def produce(self, task: SampleTask) -> Produced | Failed:
        iteration, shard, capability, number = parse_task_id(task.task_id)
        if capability is not task.capability_type:
            return Failed(f"task id {task.task_id} names another type", "plan")
        seed = stable_seed(self.stream_root, "generate", iteration, shard) % (2**31)
        try:
            record = sample_at(capability, seed, number, image_size=self.image_size, difficulties=self.difficulties, formats=self.formats)
        except ValueError as error:
            return Failed(str(error), "world")
        provenance = {**record.provenance, "task_id": task.task_id, "provider": "world", "world_id": record.id}
        return Produced(record.model_copy(update={"id": task.task_id, "source": "generated:world", "provenance": provenance}))

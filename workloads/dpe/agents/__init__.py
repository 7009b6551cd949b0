"""The generation agents: one task in, one validated sample (or one explained failure) out.

The scheduler (`dpe.generation.Generation`) assigns each task its capability type, seed and the
weakness brief, and calls `produce` for many tasks at once; the task and outcome types are those of
`dpe.generation`, re-exported here. `AgentProvider` is the provider backed by the agent roles
(planner, image selector, edit planner, question generator, validator) and the search and edit
tools; `build_agent_provider` wires it from a run's spec. Inside: `pipeline` holds the steps,
`replies` the schema of each role's reply, `selection` the image choice rules, `messages` the
filling of the prompt files, `roles` the clients, `metering` the per-sample cost, `provenance` the
trace that becomes the record's provenance, `steps` the names failures are reported under.
"""

from dpe.agents.factory import build_agent_provider
from dpe.agents.pipeline import AgentProvider
from dpe.agents.steps import Stage
from dpe.generation import Failed, Produced, SampleProvider, SampleTask, SeedItem

__all__ = [
    "AgentProvider",
    "Failed",
    "Produced",
    "SampleProvider",
    "SampleTask",
    "SeedItem",
    "Stage",
    "build_agent_provider",
]

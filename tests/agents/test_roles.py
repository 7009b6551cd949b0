"""The role clients: each role's calls carry their place in the sample's pipeline to the endpoint's queue."""

from __future__ import annotations

from dpe.agents.roles import PIPELINE_STEP, Role, RoleClients
from dpe.llm import CHAT_RETRY, UsageLedger
from dpe.spec import AgentRoles, ModelEndpoint


def test_each_role_client_queues_its_calls_by_its_pipeline_step() -> None:
    roles = AgentRoles(planner=ModelEndpoint(base_url="http://127.0.0.1:9/v1", model="m"))
    clients = RoleClients.build(roles, api_keys={}, ledger=UsageLedger(), budget=None, limiters=None, retry=CHAT_RETRY)
    progress = [clients[role].progress for role in (Role.planner, Role.image_selector, Role.edit_planner, Role.question_generator, Role.validator)]
    assert progress == [0, 1, 2, 3, 4], "later steps of the pipeline move further ahead"
    assert set(PIPELINE_STEP) == set(Role)
    limiters = {id(clients[role].limiter) for role in Role}
    assert len(limiters) == 1, "every role on one endpoint shares its queue"

"""Fixture of the agents' tests: the scripted world of `support.agent_world`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dpe_testkit.agent_script import NEW_QUERY, RELATED_QUERY, AgentScript
from dpe_testkit.agent_world import RESULTS_PER_QUERY, AgentWorld, picture
from dpe_testkit.openai_server import FakeOpenAIServer
from dpe_testkit.search_server import SearchServer

SEED_PICTURE = 99


@pytest.fixture
def world(openai_server: FakeOpenAIServer, search_server: SearchServer) -> Iterator[AgentWorld]:
    """Two pictures per query on the search service, a seed picture, and the scripted agents."""
    script = AgentScript()
    openai_server.responder = script
    openai_server.latency = script.delay
    for prefix, query, first in (("related", RELATED_QUERY, 1), ("new_element", NEW_QUERY, 11)):
        results = []
        for rank in range(1, RESULTS_PER_QUERY + 1):
            data, digest = picture(first + rank)
            name = f"{prefix}-{rank}"
            script.register(name, digest)
            results.append((search_server.image(f"{name}.png", data), f"{name} title"))
        search_server.answer(query, *results)
    seed_image, seed_digest = picture(SEED_PICTURE)
    script.register("seed", seed_digest)
    yield AgentWorld(openai_server, search_server, script, seed_image)

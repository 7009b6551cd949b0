"""The whole per-sample pipeline with the real `openai` client, the fake search service and the
local editor: direct samples, edits, regenerations, repairs, concurrency, budget and accounting."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from dpe.agents import AgentProvider, Failed, Produced, Stage
from dpe.agents.selection import USABLE_SCORE
from dpe.generation import SAMPLE_AT_RISK
from dpe.llm import MAX_REPLY_BYTES, BudgetExceeded, SpendLimit
from dpe.records import SampleRecord
from dpe.spec import GenerateSettings
from dpe.taxonomy import CapabilityType, QuestionFormat
from dpe.tools.edit import EditInstruction, EditResult, ImageEditor, LocalEditor, OpenAIImageEditor
from dpe.tools.retry import ToolError
from dpe.tools.search import Candidate, ImageSearch
from dpe_testkit.agent_script import EMPTY_SEED, LOCAL_EDIT, RELATED_QUERY, first_text, requests_of
from dpe_testkit.agent_world import BRIEF, MAX_REGENERATIONS, RESULTS_PER_QUERY, AgentWorld, make_task
from dpe_testkit.images_server import ImagesServer
from dpe_testkit.openai_server import huge_reply, image_parts, rate_limited, server_error

pytestmark = pytest.mark.slow

PROVENANCE_KEYS = {
    "task_id",
    "seed_id",
    "divergent",
    "seed_image",
    "plan",
    "usable_score",
    "searches",
    "candidates",
    "edit",
    "image",
    "observation",
    "attempts",
    "regenerations",
    "models",
    "usage",
}


def produced(outcome: Produced | Failed) -> SampleRecord:
    assert isinstance(outcome, Produced), outcome
    return outcome.record


def test_a_sample_from_a_found_picture(world: AgentWorld) -> None:
    world.script.rate("new_element-1", True, 9.0)
    world.script.rate("seed", True, 10.0)
    [outcome] = world.run(make_task(seed_image=world.seed_image))
    assert "seed" not in world.script.rated, "the seed picture is never rated: it is only an edit source"

    record = produced(outcome)
    assert record.id == "t-1"
    assert record.source == "generated:agents"
    assert record.capability_type is CapabilityType.chart_graph
    assert record.question_format is QuestionFormat.multiple_choice
    assert record.answer == "B"
    assert record.options == ["January", "March", "May", "April"]
    provenance = record.provenance
    assert set(provenance) == PROVENANCE_KEYS
    assert provenance["image"]["key"] == "new_element-1", "the best-rated found picture, never the seed"
    assert provenance["edit"] is None
    assert provenance["seed_id"] == "seed-7"
    assert provenance["seed_image"] == "used"
    assert provenance["plan"]["question_format"] == "multiple_choice"
    assert [s["query"] for s in provenance["searches"]] == [
        provenance["plan"]["related_query"],
        provenance["plan"]["new_element_query"],
    ]
    keys = {c["key"]: c for c in provenance["candidates"]}
    assert set(keys) == {"related-1", "related-2", "new_element-1", "new_element-2", "seed"}
    assert keys["related-1"]["location"].endswith("/img/related-1.png")
    assert keys["seed"]["score"] is None and keys["seed"]["reason"].startswith("not rated")
    assert provenance["attempts"] == [
        {
            "question": record.question,
            "answer": "B",
            "difficulty": 2,
            "validator_answer": "B",
            "valid": True,
            "accepted": True,
            "reason": "every detail is visible",
        }
    ]
    assert provenance["models"] == {role: f"model-{role}" for role in provenance["models"]}
    assert len(provenance["models"]) == 5
    assert provenance["usage"]["cost_usd"] == pytest.approx(outcome.cost_usd)
    assert outcome.cost_usd == pytest.approx(world.ledger.total_cost_usd) and outcome.cost_usd > 0
    assert world.script.calls["edit_planner"] == 0
    for role in ("planner", "question_generator"):
        [request] = requests_of(world.server, role)
        assert BRIEF in first_text(request.body or {}), f"the brief reaches the {role}"


def test_rejected_search_results_lead_to_a_recorded_edit(world: AgentWorld) -> None:
    for name in ("related-1", "related-2", "new_element-1", "new_element-2"):
        world.script.rate(name, True, 5.0)
    world.script.rate("related-2", False, 6.0)
    [outcome] = world.run(make_task())

    record = produced(outcome)
    edit = record.provenance["edit"]
    assert edit["provider"] == "local"
    assert edit["attempts"][0]["selected"] == [edit["shortlist"][0]]
    assert edit["attempts"][0]["operations"][0]["op"] == "circle"
    assert [op["op"] for op in edit["operations"]] == ["circle", "label"]
    assert edit["operations"][0]["pixels"]["radius"] > 0, "the operations as applied, with pixel geometry"
    assert record.provenance["image"]["key"] == "edit-1"
    assert record.provenance["image"]["edited_from"] == [edit["shortlist"][0]]
    assert world.script.rated["unknown"] == 1, "the edited output was rated before use"
    for role in ("question_generator", "validator"):
        [request] = requests_of(world.server, role)
        assert '"op": "label"' in first_text(request.body or {}), f"the {role} sees the edit operations"


def test_usable_below_the_type_threshold_is_not_used_directly(world: AgentWorld) -> None:
    threshold = USABLE_SCORE[CapabilityType.geometric]
    world.script.default_rating = (True, threshold - 0.5)
    world.script.rate("unknown", True, threshold)
    [outcome] = world.run(make_task(capability=CapabilityType.geometric))

    record = produced(outcome)
    assert record.provenance["usable_score"] == threshold
    assert record.provenance["image"]["origin"] == "edit"
    assert not any(c["passes"] for c in record.provenance["candidates"])


def test_the_seed_picture_is_used_only_after_editing(world: AgentWorld) -> None:
    world.script.rate("seed", True, 10.0)
    [outcome] = world.run(make_task(seed_question=f"{EMPTY_SEED}: how many bars?", seed_image=world.seed_image))

    record = produced(outcome)
    assert [c["key"] for c in record.provenance["candidates"]] == ["seed"]
    assert record.provenance["image"]["origin"] == "edit"
    assert record.provenance["image"]["edited_from"] == ["seed"]
    assert world.script.calls["image_selector"] == 1, "no rating of the lone seed picture; one of the edit's outputs"


def test_search_results_that_copy_the_seed_picture_are_dropped(world: AgentWorld) -> None:
    copy = world.search_server.image("copy.png", world.seed_image)
    world.search_server.answer(RELATED_QUERY, (copy, "the seed picture again"))
    [outcome] = world.run(make_task(seed_image=world.seed_image))

    keys = [c["key"] for c in produced(outcome).provenance["candidates"]]
    assert keys == ["new_element-1", "new_element-2", "seed"]


def test_no_pictures_at_all_fails_the_search(world: AgentWorld) -> None:
    [outcome] = world.run(make_task(seed_question=f"{EMPTY_SEED}: count them"))

    assert isinstance(outcome, Failed)
    assert outcome.stage == Stage.search
    assert "no candidate pictures" in outcome.reason
    assert outcome.cost_usd > 0


def test_validator_rejections_are_regenerated(world: AgentWorld) -> None:
    world.script.verdicts.extend([False, False, True])
    [outcome] = world.run(make_task())

    record = produced(outcome)
    attempts = record.provenance["attempts"]
    assert [a["accepted"] for a in attempts] == [False, False, True]
    assert record.provenance["regenerations"] == 2
    assert world.script.calls["observer"] == 1, "the picture is observed once"
    generator_requests = requests_of(world.server, "question_generator")
    assert len(generator_requests) == 3
    assert "not legible" in first_text(generator_requests[2].body or {}), "the rejection reason is passed on"


def test_a_sample_down_to_its_last_question_reports_itself_at_risk(world: AgentWorld) -> None:
    reports: list[int] = []
    world.script.verdicts.extend([False, False, True, False, True])
    token = SAMPLE_AT_RISK.set(lambda: reports.append(world.script.calls["validator"]))
    try:
        outcomes = world.run(make_task("rejected-twice"))
        assert reports == [MAX_REGENERATIONS], "reported once, after the rejection that left one question"
        reports.clear()
        outcomes += world.run(make_task("rejected-once"))
    finally:
        SAMPLE_AT_RISK.reset(token)

    assert all(isinstance(outcome, Produced) for outcome in outcomes)
    assert reports == [], "one rejection with two questions left is no alarm"


def test_validator_that_always_rejects_fails_after_the_regenerations(world: AgentWorld) -> None:
    world.script.verdicts.extend([False] * 10)
    [outcome] = world.run(make_task())

    assert isinstance(outcome, Failed)
    assert outcome.stage == Stage.validator
    assert world.script.calls["validator"] == MAX_REGENERATIONS + 1
    assert "rejected 3 questions" in outcome.reason


def test_a_validator_answer_that_disagrees_rejects_the_question(world: AgentWorld) -> None:
    world.script.queue("validator", json.dumps({"answer": "C", "valid": True, "reason": "looks fine"}))
    [outcome] = world.run(make_task())

    attempts = produced(outcome).provenance["attempts"]
    assert [a["accepted"] for a in attempts] == [False, True]
    assert "'C'" in attempts[0]["reason"]


def test_a_validator_echoing_a_verdict_from_the_question_is_read_by_its_final_object(world: AgentWorld) -> None:
    echo = json.dumps({"answer": "B", "valid": True})
    verdict = json.dumps({"answer": "B", "valid": False, "reason": "the bars carry no values to compare"})
    world.script.queue("validator", f"The question ends with {echo}, which is not my verdict.\nVerdict: {verdict}")
    [outcome] = world.run(make_task())

    attempts = produced(outcome).provenance["attempts"]
    assert [(a["valid"], a["accepted"]) for a in attempts] == [(False, False), (True, True)]
    assert attempts[0]["reason"] == "the bars carry no values to compare"


def test_one_poisoned_reply_never_fails_the_batch(world: AgentWorld) -> None:
    """A reply nested 100,000 deep is re-asked; a 60 MB one fails its own sample, at the cap."""
    world.script.queue("observer", '{"description": ' + "[" * 100_000 + "]" * 100_000 + "}")
    world.script.queue("planner", huge_reply(60 * 1024 * 1024, chunked=True))
    outcomes = world.run(*(make_task(f"t-{n}") for n in range(3)))

    failed = [o for o in outcomes if isinstance(o, Failed)]
    assert len(failed) == 1 and sum(isinstance(o, Produced) for o in outcomes) == 2
    assert failed[0].stage == Stage.planner and f"over the cap of {MAX_REPLY_BYTES} bytes" in failed[0].reason
    assert world.ledger.role("planner").failures == {"oversized": 1}
    assert world.ledger.role("question_generator").invalid_reasons == {"too_deep": 1}


def test_malformed_planner_replies_are_repaired(world: AgentWorld) -> None:
    world.script.queue("planner", "Let me think about a good plan first.", '{"question_format": "numerical",}')
    world.script.question_format = "numerical"
    [outcome] = world.run(make_task())

    record = produced(outcome)
    assert record.question_format is QuestionFormat.numerical
    assert record.answer == "42"
    planner = world.ledger.role("planner")
    assert planner.calls == 3
    assert planner.invalid_reasons == {"no_json": 1, "schema: plan_summary": 1}


def test_a_planner_that_never_replies_usably_fails_the_planner_step(world: AgentWorld) -> None:
    world.script.queue("planner", "no", "still no", "never")
    [outcome] = world.run(make_task())

    assert isinstance(outcome, Failed)
    assert outcome.stage == Stage.planner
    assert world.script.calls["image_selector"] == 0


def test_multiple_choice_format_is_enforced(world: AgentWorld) -> None:
    world.script.queue(
        "question_generator",
        json.dumps({"question": "Which month is tallest?\nA. March\nB. May", "answer": "A"}),
        json.dumps({"question": "Which month is tallest? (A) January (B) March (C) May", "answer": "(b)"}),
    )
    [outcome] = world.run(make_task())

    record = produced(outcome)
    assert record.question == "Which month is tallest?\nA. January\nB. March\nC. May"
    assert record.answer == "B"
    assert record.options == ["January", "March", "May"]
    assert world.ledger.role("question_generator").invalid_reasons == {"schema: <root>": 1}


class TimedSearch(ImageSearch):
    """The real searcher, with the start and end of every search noted."""

    provider = "serper"

    def __init__(self, inner: ImageSearch):
        super().__init__()
        self.inner = inner
        self.spans: list[tuple[float, float]] = []

    async def search(self, query: str, limit: int) -> list[Candidate]:
        started = time.monotonic()
        try:
            return await self.inner.search(query, limit)
        finally:
            self.spans.append((started, time.monotonic()))


def test_searches_run_concurrently_and_one_call_rates_every_candidate(world: AgentWorld) -> None:
    delay = 0.3
    for name in ("related-1", "related-2", "new_element-1", "new_element-2"):
        world.search_server.images[f"{name}.png"].delay = delay
    world.script.latency["image_selector"] = delay
    search = TimedSearch(world.searcher())
    [outcome] = world.run(make_task(seed_image=world.seed_image), provider=world.provider(search=search))

    produced(outcome)
    first, second = search.spans
    assert min(first[1], second[1]) - max(first[0], second[0]) > delay / 2, "the two searches overlapped"
    assert world.script.calls["image_selector"] == 1
    [request] = requests_of(world.server, "image_selector")
    assert len(image_parts(request.body or {})) == 2 * RESULTS_PER_QUERY, "the found pictures, not the seed's"
    for name in ("related-1", "related-2", "new_element-1", "new_element-2"):
        assert world.script.rated[name] == 1
    assert {c["key"] for c in produced(outcome).provenance["candidates"]} >= {"related-1", "seed"}, "each keeps its own entry"


def test_a_selector_reply_leaving_a_picture_out_is_asked_again(world: AgentWorld) -> None:
    partial = {"ratings": [{"picture": 1, "usable": True, "score": 9}]}
    world.script.queue("image_selector", json.dumps(partial))

    [outcome] = world.run(make_task())

    produced(outcome)
    first, second = requests_of(world.server, "image_selector")
    assert "exactly once" in json.dumps(second.body), "the second request states what was wrong"
    assert all(c["score"] is not None for c in produced(outcome).provenance["candidates"])


def test_transient_failures_are_retried_and_costs_add_up(world: AgentWorld) -> None:
    world.server.fail_next(2, rate_limited(0.0))
    world.server.fail_every(9, server_error(503))
    world.script.rate("related-1", False, 2.0)
    world.script.rate("related-2", False, 2.0)
    world.script.rate("new_element-1", False, 2.0)
    world.script.rate("new_element-2", False, 2.0)
    tasks = [make_task(f"t-{n}") for n in range(3)] + [make_task("t-empty", seed_question=f"{EMPTY_SEED}?")]
    outcomes = world.run(*tasks)

    assert [type(o).__name__ for o in outcomes] == ["Produced", "Produced", "Produced", "Failed"]
    assert sum(o.cost_usd for o in outcomes) == pytest.approx(world.ledger.total_cost_usd)
    for outcome in outcomes[:3]:
        assert produced(outcome).provenance["usage"]["cost_usd"] == pytest.approx(outcome.cost_usd)
    assert world.server.statuses().count(429) == 2
    assert world.server.statuses().count(503) >= 1
    snapshot = world.ledger.snapshot()
    assert snapshot["total"]["failures"] >= 3


def test_budget_exceeded_propagates(world: AgentWorld) -> None:
    budget = SpendLimit(1e-9)
    with pytest.raises(BudgetExceeded):
        world.run(make_task(), provider=world.provider(budget=budget))
    assert world.script.calls["planner"] == 1
    assert world.script.calls["observer"] == 0


def test_unconfigured_roles_use_the_planners_endpoint_and_key(world: AgentWorld) -> None:
    keys = {"planner": "sk-planner-key", "validator": "sk-validator-key"}
    provider = world.provider(roles=("planner", "validator"), api_keys=keys)
    [outcome] = world.run(make_task(), provider=provider)

    models = produced(outcome).provenance["models"]
    assert models == {
        "planner": "model-planner",
        "image_selector": "model-planner",
        "edit_planner": "model-planner",
        "question_generator": "model-planner",
        "validator": "model-validator",
    }
    for request in world.server.chat_requests:
        body = request.body or {}
        expected = keys["validator"] if body["model"] == "model-validator" else keys["planner"]
        assert request.headers["authorization"] == f"Bearer {expected}"


def test_a_generative_editor_gets_one_instruction_and_several_outputs(
    world: AgentWorld, images_server: ImagesServer
) -> None:
    world.script.default_rating = (False, 3.0)
    world.script.rate("unknown", True, 8.0)
    editor = OpenAIImageEditor(images_server.base_url, "edit-model")
    [outcome] = world.run(make_task(), provider=world.provider(editor=editor))

    edit = produced(outcome).provenance["edit"]
    assert edit["provider"] == "openai"
    assert len(edit["attempts"][0]["selected"]) == 2
    assert edit["operations"][0]["op"] == "generative"
    assert len(edit["outputs"]) == 3
    [request] = images_server.requests
    assert request.fields["n"] == "3"
    assert len(request.files) == 2


def test_a_refused_local_edit_is_planned_again(world: AgentWorld) -> None:
    world.script.default_rating = (False, 3.0)
    world.script.rate("unknown", True, 8.0)
    forbidden = {**LOCAL_EDIT, "operations": [{"op": "rotate", "degrees": 15}]}
    world.script.queue("edit_planner", json.dumps(forbidden))
    [outcome] = world.run(make_task(capability=CapabilityType.geometric))

    edit = produced(outcome).provenance["edit"]
    assert "not allowed for geometric" in edit["attempts"][0]["refused"]
    assert [op["op"] for op in edit["operations"]] == ["circle", "label"]
    [_, second] = requests_of(world.server, "edit_planner")
    assert "not allowed for geometric" in first_text(second.body or {})


class BrokenEditor(ImageEditor):
    """An editor that fails with the exception it was given."""

    provider = "local"

    def __init__(self, error: Exception):
        self.error = error

    async def edit(self, images: list[bytes], instruction: EditInstruction) -> EditResult:
        raise self.error


class DownSearch(ImageSearch):
    """A search service that is down."""

    provider = "serper"

    async def search(self, query: str, limit: int) -> list[Candidate]:
        raise ToolError(f"search for {query!r} is unavailable")


def test_tool_failures_become_failed_outcomes(world: AgentWorld) -> None:
    world.script.default_rating = (False, 2.0)
    down = world.provider(editor=BrokenEditor(ToolError("editor is down")))
    broken = world.provider(editor=BrokenEditor(RuntimeError("bug in the editor")))
    no_search = world.provider(search=DownSearch())
    [editor_down] = world.run(make_task("t-down"), provider=down)
    [editor_bug] = world.run(make_task("t-bug"), provider=broken)
    [search_down] = world.run(make_task("t-search"), provider=no_search)

    assert isinstance(editor_down, Failed) and editor_down.stage == Stage.editor
    assert "editor is down" in editor_down.reason
    assert isinstance(editor_bug, Failed) and editor_bug.stage == Stage.editor
    assert editor_bug.reason == "unexpected RuntimeError: bug in the editor"
    assert isinstance(search_down, Failed) and search_down.stage == Stage.search
    assert "unavailable" in search_down.reason


def test_an_unreadable_seed_picture_is_left_out(world: AgentWorld) -> None:
    [outcome] = world.run(make_task(seed_image=b"not a picture"))

    record = produced(outcome)
    assert record.provenance["seed_image"] == "unreadable"
    assert "seed" not in {c["key"] for c in record.provenance["candidates"]}
    [planner] = requests_of(world.server, "planner")
    assert isinstance((planner.body or {})["messages"][0]["content"], str), "no picture attached"


def test_the_provider_needs_agent_endpoints(world: AgentWorld) -> None:
    with pytest.raises(ValueError, match="generate.agents"):
        AgentProvider(
            GenerateSettings(),
            api_keys={},
            search=world.searcher(),
            editor=LocalEditor(),
            ledger=world.ledger,
            budget=None,
            limiters=None,
        )


def test_a_cancelled_sample_reports_what_it_spent(world: AgentWorld) -> None:
    world.script.latency["image_selector"] = 5.0
    provider = world.provider()
    task = make_task()

    async def cancelled_while_rating() -> None:
        async with provider:
            job = asyncio.ensure_future(provider.produce(task))
            while world.ledger.role("planner").calls == 0:
                await asyncio.sleep(0.01)
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job

    asyncio.run(cancelled_while_rating())
    spent = world.ledger.total_cost_usd
    assert spent > 0 and provider.cancelled_cost(task.task_id) == pytest.approx(spent)
    assert provider.cancelled_cost(task.task_id) == 0.0, "reported once"

"""The agents' sample provider: plan, search, select, edit when needed, ask, validate, record.

One `produce` call makes one sample of the type the scheduler assigned, in six to twelve remote
calls. A sample's time is mostly spent waiting on them, so every step whose inputs are ready runs at
once (both searches together), within the endpoint limits the role clients share, and what one call
can do is not spread over several: one selector call rates every candidate. The steps that must wait
for each other (plan before search, image before question, question before validation) still do.

Failures never escape as exceptions: each step that cannot go on raises `StepFailed` internally,
which becomes `Failed(reason, stage, cost)`. The one exception that does propagate is
`BudgetExceeded`, so the scheduler stops cleanly instead of counting failures until the end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dpe.agents import messages
from dpe.agents.messages import ImagePart
from dpe.agents.metering import SampleMeter, metering
from dpe.agents.provenance import SampleTrace
from dpe.agents.replies import (
    QUESTION_SCHEMAS,
    GenerativeEditPlan,
    LocalEditPlan,
    Observation,
    Plan,
    QuestionAnswer,
    Verdict,
    ratings_for,
)
from dpe.agents.roles import Role, RoleClients, agent_prompt
from dpe.agents.selection import (
    USABLE_SCORE,
    ImageOption,
    Origin,
    Rated,
    best_usable,
    distinct,
    edit_shortlist,
    search_options,
)
from dpe.agents.steps import Stage
from dpe.cpu_work import run_ranked
from dpe.generation import Failed, Produced, SampleTask, report_at_risk
from dpe.grading import grade_extracted
from dpe.image_quality import decode, phash
from dpe.llm import (
    CHAT_RETRY,
    BudgetExceeded,
    LimiterRegistry,
    LLMError,
    Message,
    SpendLimit,
    UsageLedger,
    ask_json,
    image_part,
)
from dpe.records import SampleRecord, png_bytes
from dpe.retry import Backoff
from dpe.spec import GenerateSettings
from dpe.taxonomy import CapabilityType, QuestionFormat
from dpe.tools.edit import EditInstruction, EditResult, ImageEditor, InvalidEdit, LocalEditor
from dpe.tools.retry import ToolError
from dpe.tools.search import ImageSearch

log = logging.getLogger(__name__)

SOURCE = "generated:agents"
"""The records' `source` (the offline provider's is "generated:world")."""
JSON_ATTEMPTS = 3
"""Replies per agent call; each unusable one is re-asked with the problem stated."""
EDIT_ATTEMPTS = 2
"""Edits the edit planner may write when the editor refuses one as invalid."""
PICTURES_PER_RATING = 8
"""Pictures one selector call rates. One call for all of a sample's candidates spends the endpoint's
slots and the plan's prompt tokens once instead of once per picture; past this many, a reply
judging each picture on its own gets long and error-prone, so larger sets are split."""
GENERATIVE_OUTPUTS = 3
"""Pictures asked of a generative editor per edit; the selector picks among them."""
AGREEMENT_FORMATS = frozenset({QuestionFormat.multiple_choice, QuestionFormat.numerical})
"""Formats whose gold answer must also match the validator's own answer under `dpe.grading`
(free text is left to the validator's judgement, since paraphrases do not grade as equal)."""
PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA"})
SEED_NOT_RATED = "not rated: the seed picture is only ever a source for an edit"
"""Why the seed picture has no rating. It is never used unedited, so a rating would only order it
among the edit planner's pictures, and the edit planner looks at every picture itself: rating it
would cost a picture's tokens and seconds in every sample's selector call for that alone."""

SchemaT = TypeVar("SchemaT", bound=BaseModel)
T = TypeVar("T")


class StepFailed(Exception):
    """A step cannot go on; `produce` turns it into `Failed`."""

    def __init__(self, stage: Stage, reason: str):
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


async def all_of(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Runs them concurrently; the first exception cancels the others and propagates unchanged."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def as_png(data: bytes) -> bytes:
    """The picture as PNG, the only image encoding records hold."""
    image = decode(data)
    if image.mode not in PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return png_bytes(image)


class Attachments:
    """The message parts of one sample's pictures, each encoded once, in a worker thread (`dpe.cpu_work`).

    Encoding a large picture takes tens of milliseconds: done on the event loop it would stall every
    other sample in flight, and a chosen picture is attached to several calls.
    """

    def __init__(self) -> None:
        self._parts: dict[str, ImagePart] = {}

    async def part(self, option: ImageOption) -> ImagePart:
        if option.key not in self._parts:
            self._parts[option.key] = await run_ranked(image_part, option.data)
        return self._parts[option.key]


@dataclass
class SampleRun:
    """The state of one `produce` call, handed from step to step."""

    task: SampleTask
    meter: SampleMeter
    trace: SampleTrace = field(init=False)
    threshold: float = field(init=False)
    """The selector score the assigned type requires."""
    attachments: Attachments = field(default_factory=Attachments)

    def __post_init__(self) -> None:
        self.trace = SampleTrace(self.task)
        self.threshold = USABLE_SCORE[self.task.capability_type]
        self.trace.threshold = self.threshold

    @property
    def capability(self) -> CapabilityType:
        return self.task.capability_type


class AgentProvider:
    """The `SampleProvider` backed by the agent roles and the search and edit tools.

    One instance serves every sample of a generation stage, concurrently; close it with `aclose`.
    `api_keys` maps role names to resolved keys (a role without its own endpoint uses the planner's).
    """

    def __init__(
        self,
        settings: GenerateSettings,
        *,
        api_keys: Mapping[str, str | None],
        search: ImageSearch,
        editor: ImageEditor,
        ledger: UsageLedger,
        budget: SpendLimit | None,
        limiters: LimiterRegistry | None,
        retry: Backoff | None = None,
    ):
        if settings.agents is None:
            raise ValueError("generate.agents is not set: the agent provider needs at least a planner endpoint")
        self.search = search
        self.editor = editor
        self.budget = budget
        """The shard's spend limit; the scheduler charges it with spend restored after a crash."""
        self.ledger = ledger
        """Calls, failures, tokens and cost per role over every sample, for the stage's results."""
        self._cancelled: dict[str, float] = {}
        self.results_per_query = settings.tools.search.results_per_query
        self.max_regenerations = settings.max_regenerations
        self.clients = RoleClients.build(
            settings.agents,
            api_keys=api_keys,
            ledger=ledger,
            budget=budget,
            limiters=limiters,
            retry=retry if retry is not None else CHAT_RETRY,
        )

    async def __aenter__(self) -> AgentProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.clients.aclose()
        await self.search.aclose()

    def cancelled_cost(self, task_id: str) -> float:
        """What a sample cancelled before it finished had spent (once; 0 for any other task)."""
        return self._cancelled.pop(task_id, 0.0)

    async def produce(self, task: SampleTask) -> Produced | Failed:
        """One sample for `task`, or the reason there is none; raises only `BudgetExceeded`."""
        with metering() as meter:
            run = SampleRun(task, meter)
            try:
                record = await self._sample(run)
            except asyncio.CancelledError:
                log.info("sample %s cancelled during %s at $%.4f", task.task_id, run.trace.stage.value, meter.cost_usd)
                self._cancelled[task.task_id] = meter.cost_usd
                raise
            except BudgetExceeded:
                raise
            except StepFailed as failure:
                return self._failed(run, failure.stage, failure.reason)
            except Exception as error:  # the contract: a broken sample is a failure, not a crash
                log.exception("sample %s: unexpected error during %s", task.task_id, run.trace.stage.value)
                return self._failed(run, run.trace.stage, f"unexpected {type(error).__name__}: {error}")
        log.info("sample %s produced at $%.4f", task.task_id, meter.cost_usd)
        return Produced(record, meter.cost_usd)

    @staticmethod
    def _failed(run: SampleRun, stage: Stage, reason: str) -> Failed:
        log.info("sample %s failed at %s: %s", run.task.task_id, stage.value, reason)
        return Failed(reason, stage.value, run.meter.cost_usd)

    async def _sample(self, run: SampleRun) -> SampleRecord:
        task, trace = run.task, run.trace
        seed = await self._seed_option(run)
        seed_part = None if seed is None else await run.attachments.part(seed)
        plan = await self._ask(Role.planner, Stage.planner, messages.planner(task, seed_part), Plan)
        trace.plan = plan

        trace.enter(Stage.search)
        found = await self._candidates(run, plan, seed)
        trace.enter(Stage.image_selector)
        rated = await self._rate(run, plan, found) if found else []
        selector_failed = bool(rated) and all(item.rating is None for item in rated)
        if seed is not None:
            rated.append(Rated(seed, None, SEED_NOT_RATED))
        trace.candidates = [item.provenance(run.threshold) for item in rated]
        if selector_failed:
            raise StepFailed(Stage.image_selector, f"no candidate could be rated: {rated[0].error}")
        chosen = best_usable(rated, run.threshold)
        operations: list[dict[str, Any]] = []
        if chosen is None:
            chosen, operations = await self._edit(run, plan, rated)
        trace.image = {"key": chosen.option.key, "origin": chosen.option.origin.value, **chosen.option.details}
        image = await run_ranked(as_png, chosen.option.data)
        part = await run.attachments.part(chosen.option)

        trace.enter(Stage.question_generator)
        request = messages.observer(part)
        observation = await self._ask(Role.question_generator, Stage.question_generator, request, Observation)
        trace.observation = observation.description
        qa = await self._question(run, plan, part, observation.description, operations)

        trace.enter(Stage.record)
        try:
            return SampleRecord(
                id=task.task_id,
                image=image,
                question=qa.question,
                answer=qa.answer,
                capability_type=task.capability_type,
                question_format=plan.question_format,
                options=qa.options,
                difficulty=qa.difficulty,
                source=SOURCE,
                provenance=trace.as_dict(models=self.clients.models(), usage=run.meter.as_dict()),
            )
        except ValidationError as error:
            raise StepFailed(Stage.record, f"the sample does not make a valid record: {error}") from None

    async def _ask(self, role: Role, stage: Stage, request: Sequence[Message], schema: type[SchemaT]) -> SchemaT:
        """One typed reply of `role`; a call that fails for good fails `stage`."""
        try:
            return await ask_json(self.clients[role], request, schema, attempts=JSON_ATTEMPTS)
        except LLMError as error:
            raise StepFailed(stage, f"{role.value}: {error}") from None

    async def _seed_option(self, run: SampleRun) -> ImageOption | None:
        """The seed's picture as a candidate when it decodes; a broken one is noted and left out."""
        seed = run.task.seed
        if seed is None or seed.image is None:
            return None
        try:
            seed_hash = await run_ranked(phash, seed.image)
        except ValueError:
            run.trace.seed_image = "unreadable"
            return None
        run.trace.seed_image = "used"
        return ImageOption("seed", Origin.seed, seed.image, seed_hash, {"location": f"seed:{seed.id}"})

    # -- images --------------------------------------------------------------------------------

    async def _candidates(self, run: SampleRun, plan: Plan, seed: ImageOption | None) -> list[ImageOption]:
        """Both searches at once, merged without repeats and without near-copies of the seed picture;
        empty only when there is a seed picture to edit instead."""
        (related, related_log), (new, new_log) = await all_of(
            [self._search(Origin.related, plan.related_query), self._search(Origin.new_element, plan.new_element_query)]
        )
        run.trace.searches = [related_log, new_log]
        options = distinct([*related, *new], None if seed is None else seed.phash)
        if not options and seed is None:
            problems = "; ".join(entry["error"] for entry in run.trace.searches if entry.get("error")) or "no results"
            raise StepFailed(Stage.search, f"no candidate pictures ({problems})")
        return options

    async def _search(self, origin: Origin, query: str) -> tuple[list[ImageOption], dict[str, Any]]:
        """One search; a failed one yields no candidates and says why."""
        entry: dict[str, Any] = {"origin": origin.value, "query": query, "provider": self.search.provider}
        try:
            found = await self.search.search(query, self.results_per_query)
        except (ToolError, ValueError) as error:
            entry.update(found=0, error=str(error))
            return [], entry
        entry["found"] = len(found)
        return search_options(origin, found), entry

    async def _rate(self, run: SampleRun, plan: Plan, options: Sequence[ImageOption]) -> list[Rated]:
        """Every candidate rated, each on its own, in one selector call (calls of at most
        `PICTURES_PER_RATING` pictures, all at once, when there are more)."""
        batches = [options[start : start + PICTURES_PER_RATING] for start in range(0, len(options), PICTURES_PER_RATING)]
        rated = await all_of([self._rate_batch(run, plan, batch) for batch in batches])
        return [item for batch in rated for item in batch]

    async def _rate_batch(self, run: SampleRun, plan: Plan, options: Sequence[ImageOption]) -> list[Rated]:
        parts = await all_of([run.attachments.part(option) for option in options])
        request = messages.selector(plan, run.capability, run.threshold, parts)
        try:
            reply = await ask_json(self.clients[Role.image_selector], request, ratings_for(len(options)), attempts=JSON_ATTEMPTS)
        except LLMError as error:
            return [Rated(option, None, str(error)) for option in options]
        ratings = reply.by_picture()
        return [Rated(option, ratings[number]) for number, option in enumerate(options, start=1)]

    async def _edit(self, run: SampleRun, plan: Plan, rated: Sequence[Rated]) -> tuple[Rated, list[dict[str, Any]]]:
        """Edit the best candidates, then keep the best edited picture that passes the threshold."""
        shortlist = edit_shortlist(rated)
        log_entry: dict[str, Any] = {
            "provider": self.editor.provider,
            "shortlist": [item.option.key for item in shortlist],
            "attempts": [],
        }
        run.trace.edit = log_entry
        inputs, result = await self._run_edit(run, plan, shortlist, log_entry["attempts"])
        log_entry["operations"] = result.operations
        sources = [item.option.key for item in inputs]
        outputs = [
            ImageOption(f"edit-{number}", Origin.edit, data, details={"edited_from": sources})
            for number, data in enumerate(result.images, start=1)
        ]
        run.trace.enter(Stage.image_selector)
        rated_outputs = await self._rate(run, plan, outputs)
        log_entry["outputs"] = [item.provenance(run.threshold) for item in rated_outputs]
        best = best_usable(rated_outputs, run.threshold)
        if best is None:
            raise StepFailed(
                Stage.image_selector,
                f"no edited picture reached the usability score {run.threshold:g} of {run.capability.value}",
            )
        return best, result.operations

    async def _run_edit(
        self, run: SampleRun, plan: Plan, shortlist: Sequence[Rated], attempts: list[dict[str, Any]]
    ) -> tuple[list[Rated], EditResult]:
        """Plan and run an edit; an edit the editor refuses is re-planned with the refusal shown."""
        local = self.editor.provider == LocalEditor.provider
        shown = [(item, await run.attachments.part(item.option)) for item in shortlist]
        refusal: str | None = None
        for _ in range(EDIT_ATTEMPTS):
            run.trace.enter(Stage.edit_planner)
            request = messages.edit_planner(plan, run.capability, shown, local=local, refusal=refusal)
            choice = await self._edit_choice(run, plan, request, local=local)
            inputs = [shortlist[index] for index in choice.indices(len(shortlist))]
            attempt: dict[str, Any] = {
                "selected": [item.option.key for item in inputs],
                "reasoning": choice.reasoning,
                **self._requested(choice),
            }
            attempts.append(attempt)
            run.trace.enter(Stage.editor)
            instruction = self._instruction(run, choice)
            try:
                return inputs, await self.editor.edit([item.option.data for item in inputs], instruction)
            except InvalidEdit as error:
                refusal = str(error)
                attempt["refused"] = refusal
            except ToolError as error:
                raise StepFailed(Stage.editor, f"{self.editor.provider} editor failed: {error}") from None
        raise StepFailed(Stage.editor, f"the editor refused {EDIT_ATTEMPTS} edits; last: {refusal}")

    async def _edit_choice(
        self, run: SampleRun, plan: Plan, request: Sequence[Message], *, local: bool
    ) -> LocalEditPlan | GenerativeEditPlan:
        """The edit planner's choice; for a generative editor, the plan's goal when the planner fails.

        Typed operations cannot be guessed, so the local editor has no such fallback.
        """
        if local:
            return await self._ask(Role.edit_planner, Stage.edit_planner, request, LocalEditPlan)
        try:
            return await ask_json(self.clients[Role.edit_planner], request, GenerativeEditPlan, attempts=JSON_ATTEMPTS)
        except LLMError as error:
            log.warning("sample %s: edit planner failed (%s); editing towards the plan's goal", run.task.task_id, error)
            goal = plan.edit_goal or plan.plan_summary
            instruction = agent_prompt("parts/edit_fallback").format(goal=goal).strip()
            return GenerativeEditPlan(selected=[1], reasoning=f"fallback after: {error}", instruction=instruction)

    @staticmethod
    def _requested(choice: LocalEditPlan | GenerativeEditPlan) -> dict[str, Any]:
        """The edit as the planner wrote it, for provenance."""
        if isinstance(choice, LocalEditPlan):
            return {"operations": [operation.model_dump(mode="json") for operation in choice.operations]}
        return {"instruction": choice.instruction}

    @staticmethod
    def _instruction(run: SampleRun, choice: LocalEditPlan | GenerativeEditPlan) -> EditInstruction:
        if isinstance(choice, LocalEditPlan):
            return EditInstruction(capability_type=run.capability, operations=choice.operations)
        return EditInstruction(capability_type=run.capability, prompt=choice.instruction, outputs=GENERATIVE_OUTPUTS)

    # -- question and validation ---------------------------------------------------------------

    async def _question(
        self, run: SampleRun, plan: Plan, image: ImagePart, observation: str, operations: Sequence[dict[str, Any]]
    ) -> QuestionAnswer:
        """Questions until the validator accepts one, at most `1 + max_regenerations`."""
        schema = QUESTION_SCHEMAS[plan.question_format]
        rejections: list[tuple[QuestionAnswer, str]] = []
        for _ in range(self.max_regenerations + 1):
            run.trace.enter(Stage.question_generator)
            request = messages.generator(run.task, plan, observation, operations, rejections)
            qa = await self._ask(Role.question_generator, Stage.question_generator, request, schema)
            run.trace.enter(Stage.validator)
            request = messages.validator(image, plan.question_format, qa, operations)
            verdict = await self._ask(Role.validator, Stage.validator, request, Verdict)
            accepted, reason = judge(plan.question_format, qa, verdict)
            run.trace.attempts.append(
                {
                    "question": qa.question,
                    "answer": qa.answer,
                    "difficulty": qa.difficulty,
                    "validator_answer": verdict.answer,
                    "valid": verdict.valid,
                    "accepted": accepted,
                    "reason": reason,
                }
            )
            if accepted:
                return qa
            rejections.append((qa, reason))
            if len(rejections) == self.max_regenerations:
                report_at_risk()  # one question left: a picture rejected this often often fails
        raise StepFailed(
            Stage.validator, f"the validator rejected {len(rejections)} questions; last: {rejections[-1][1]}"
        )


def judge(question_format: QuestionFormat, qa: QuestionAnswer, verdict: Verdict) -> tuple[bool, str]:
    """Accept a question when the validator does and, where grading is exact, its own answer agrees.

    The gold answer comes from a generator that only read a description of the picture; the
    validator looked at the picture itself, so its answer is an independent check of the gold.
    """
    if not verdict.valid:
        return False, verdict.reason or "the validator rejected the question"
    if question_format in AGREEMENT_FORMATS:
        if not verdict.answer:
            return False, "the validator could not answer the question from the picture"
        grade = grade_extracted(verdict.answer, qa.answer, question_format, qa.options or None)
        if not grade.correct:
            return False, f"answered from the picture, the question gives {verdict.answer!r}, not {qa.answer!r}"
    return True, verdict.reason

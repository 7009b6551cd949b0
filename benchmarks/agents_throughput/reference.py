"""The reference side: its structure re-created from its documented behaviour (ten threads, one call
at a time per sample, blind retries, quotas checked when a sample comes back), run in a child process."""

from __future__ import annotations

import json
import multiprocessing
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import httpx2
import openai
from pydantic import BaseModel

from benchmarks.agents_throughput.measures import SideResult, occupancy, slot_seconds
from benchmarks.agents_throughput.scenario import EDIT_S, SMALL_PICTURES, Scenario
from benchmarks.agents_throughput.world import PictureBook, World
from dpe.agents import SampleTask, SeedItem
from dpe.agents import messages as prompts
from dpe.agents.replies import QUESTION_SCHEMAS, LocalEditPlan, Observation, Plan, Rating, Verdict, ratings_for
from dpe.agents.roles import agent_prompt
from dpe.agents.selection import USABLE_SCORE, ImageOption, Origin, Rated
from dpe.llm import image_part
from dpe.taxonomy import CapabilityType
from dpe.tools.edit import EditInstruction, apply_operations

REFERENCE_TIMEOUT_S = 60.0
REFERENCE_DOWNLOAD_TIMEOUT_S = 10.0
REFERENCE_ATTEMPTS = 5
REFERENCE_BACKOFF_CAP_S = 30.0
REFERENCE_MAX_TOKENS = 8192
REFERENCE_RESULTS_PER_QUERY = 3
REFERENCE_MAX_EDIT_CANDIDATES = 6
REFERENCE_PICTURES_PER_DESCRIPTION = 3
"""The reference's edit planner describes its candidates in calls of three pictures before choosing."""
DESCRIBER_PROMPT = (
    "Role: picture describer\n\n"
    "Describe each numbered picture above in 3-5 sentences: its subject, colours, composition, style and quality, "
    "and the details a question could be asked about. Reply with JSON: {\"descriptions\": [one string per picture, in order]}."
)
REFERENCE_WINDOW_PER_WORKER = 2
"""The reference keeps twice as many samples submitted as it has worker threads (20 for its 10)."""
ReplyT = TypeVar("ReplyT")
FREE_TYPE_MARKER = "Image type: choose it yourself"
ASSIGNED_TYPE_LINE = "Image type (assigned; the sample must be of this type): {capability_type}, that is {capability_description}."


class ReferenceQuotaManager:
    """The reference's quota manager: quotas are caps checked when a finished sample comes back."""

    def __init__(self, quotas: Mapping[CapabilityType, int]):
        self.targets = dict(quotas)
        self.counts: Counter[CapabilityType] = Counter()
        self.flexible_quota = 0
        self.flexible_used = 0

    def can_generate(self, capability: CapabilityType) -> bool:
        if capability in self.targets:
            return self.counts[capability] < self.targets[capability]
        return self.flexible_used < self.flexible_quota

    def record(self, capability: CapabilityType) -> None:
        if capability in self.targets:
            self.counts[capability] += 1
        else:
            self.flexible_used += 1

    def is_complete(self) -> bool:
        met = all(self.counts[t] >= q for t, q in self.targets.items())
        return met and self.flexible_used >= self.flexible_quota


@dataclass(frozen=True)
class ReferenceSample:
    image_type: CapabilityType
    question: str
    answer: str


@dataclass
class Candidate:
    """A picture in one reference sample, encoded once for the calls that attach it."""

    option: ImageOption
    part: dict[str, Any]
    rating: Rating | None = None

    @property
    def score(self) -> float:
        return self.rating.score if self.rating is not None else 0.0

    @property
    def usable(self) -> bool:
        return self.rating is not None and self.rating.usable


class Descriptions(BaseModel):
    descriptions: list[str]


class ReplyUnusable(Exception):
    """A reply the reference could not parse; retried like any other failure."""


def parsed(schema: type[BaseModel]) -> Callable[[str], Any]:
    """The reference's parsing: the first {...} block, trailing commas removed, then the fields."""

    def parse(text: str) -> Any:
        match = re.search(r"\{.*\}", text, re.DOTALL)
        if match is None:
            raise ReplyUnusable("no JSON object")
        return schema.model_validate(json.loads(re.sub(r",\s*([}\]])", r"\1", match[0])))

    return parse


class ReferencePipeline:
    """One sample's agent calls, strictly one at a time, with the reference's retry rule."""

    def __init__(self, scenario: Scenario, endpoint_url: str, search_url: str, brief: str):
        self.scenario = scenario
        self.brief = brief
        self.client = openai.OpenAI(
            base_url=endpoint_url, api_key="reference", max_retries=0, timeout=REFERENCE_TIMEOUT_S
        )
        self.http = httpx2.Client(timeout=REFERENCE_DOWNLOAD_TIMEOUT_S)
        self.search_url = search_url

    def close(self) -> None:
        self.client.close()
        self.http.close()

    def ask(self, role: str, request: Sequence[Mapping[str, Any]], parse: Callable[[str], ReplyT]) -> ReplyT:
        """One call: 5 attempts, any failure (429, 400, 5xx, timeout, bad reply) waits
        min(2^attempt * 2, 30) s before the next."""
        attempt = 1
        while True:
            try:
                completion = self.client.chat.completions.create(
                    model=f"model-{role}", messages=list(request), max_completion_tokens=REFERENCE_MAX_TOKENS  # type: ignore[arg-type]
                )
                return parse(completion.choices[0].message.content or "")
            except Exception:  # the reference's rule: every failure is retried the same way
                if attempt == REFERENCE_ATTEMPTS:
                    raise
            time.sleep(self.scenario.seconds(min(2**attempt * 2, REFERENCE_BACKOFF_CAP_S)))
            attempt += 1

    def search(self, query: str) -> list[bytes]:
        """The search API, then each result downloaded in turn; the first three that pass the gate."""
        try:
            hits = self.http.post(f"{self.search_url}/images", json={"q": query, "num": 10}).json()["images"]
        except (httpx2.HTTPError, ValueError, KeyError):
            return []
        kept: list[bytes] = []
        for hit in hits:
            try:
                response = self.http.get(hit["imageUrl"])
            except httpx2.HTTPError:
                continue
            if response.status_code == httpx2.codes.OK and SMALL_PICTURES.check(response.content).ok:
                kept.append(response.content)
            if len(kept) == REFERENCE_RESULTS_PER_QUERY:
                break
        return kept

    def sample(self, number: int, seed: SeedItem) -> ReferenceSample | str:
        """The reference's per-sample flow: the sample, or why it failed."""
        try:
            return self._sample(number, seed)
        except Exception as error:  # a failed sample is recorded and the worker moves on, as in the reference
            return f"error: {type(error).__name__}"

    def _sample(self, number: int, seed: SeedItem) -> ReferenceSample | str:
        seed_option = None if seed.image is None else ImageOption("seed", Origin.seed, seed.image)
        seed_part = None if seed.image is None else image_part(seed.image)
        chosen_type, plan = self.ask("planner", self._planner_request(seed, seed_part), parse_free_plan)
        task = SampleTask(f"reference-{number}", chosen_type, seed, self.brief)

        candidates = [] if seed_option is None or seed_part is None else [Candidate(seed_option, seed_part)]
        for origin, query in ((Origin.related, plan.related_query), (Origin.new_element, plan.new_element_query)):
            for rank, data in enumerate(self.search(query), start=1):
                candidates.append(Candidate(ImageOption(f"{origin.value}-{rank}", origin, data), image_part(data)))
        if not candidates:
            return "no candidates"
        threshold = USABLE_SCORE[chosen_type]
        for candidate in candidates:
            candidate.rating = self._rate(plan, chosen_type, threshold, candidate)
        chosen, needs_edit = reference_choice(candidates)
        operations: list[dict[str, Any]] = []
        if needs_edit:
            chosen, operations = self._edit(plan, chosen_type, threshold, candidates, chosen)

        schema = QUESTION_SCHEMAS[plan.question_format]
        for _ in range(self.scenario.max_regenerations + 1):
            observation = self.ask("question_generator", prompts.observer(chosen.part), parsed(Observation))
            request = prompts.generator(task, plan, observation.description, operations, [])
            qa = self.ask("question_generator", request, parsed(schema))
            verdict = self.ask("validator", prompts.validator(chosen.part, plan.question_format, qa, operations), parsed(Verdict))
            if verdict.valid:
                return ReferenceSample(chosen_type, qa.question, qa.answer)
        return "validator"

    def _planner_request(self, seed: SeedItem, seed_part: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Our planner prompt with the type left to the planner, as the reference's prompt did."""
        template = agent_prompt("planner")
        if ASSIGNED_TYPE_LINE not in template:
            raise RuntimeError("the planner prompt no longer has the assigned-type line this benchmark replaces")
        types = ", ".join(t.value for t in CapabilityType)
        free = f"{FREE_TYPE_MARKER} from: {types}; name it in your reply as \"image_type\"."
        seed_format = seed.question_format.value if seed.question_format is not None else "unknown"
        seed_section = agent_prompt("parts/seed_related").format(question=seed.question, answer=seed.answer, question_format=seed_format)
        text = template.replace(ASSIGNED_TYPE_LINE, free).format(seed_section=seed_section.strip(), brief=self.brief)
        content: list[dict[str, Any]] = [] if seed_part is None else [seed_part]
        return [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]

    def _rate(self, plan: Plan, capability: CapabilityType, threshold: float, candidate: Candidate) -> Rating:
        """One rating; if every attempt fails, the reference's fallback verdict (unusable, score 0)."""
        try:
            reply = self.ask("image_selector", prompts.selector(plan, capability, threshold, [candidate.part]), parsed(ratings_for(1)))
            return reply.ratings[0]
        except Exception:  # the reference falls back to a failing verdict whatever went wrong
            return Rating.model_construct(usable=False, score=0.0, reason="selection failed")

    def _edit(
        self, plan: Plan, capability: CapabilityType, threshold: float, candidates: list[Candidate], fallback: Candidate
    ) -> tuple[Candidate, list[dict[str, Any]]]:
        """Edit plan, edit, then re-rate the output; the step-4 picture when any of it fails."""
        shortlist = sorted(candidates, key=lambda c: -c.score)[:REFERENCE_MAX_EDIT_CANDIDATES]
        shown = [(Rated(c.option, c.rating), c.part) for c in shortlist]
        request = prompts.edit_planner(plan, capability, shown, local=True, refusal=None)
        try:
            described = self._describe(shortlist)
            request[-1]["content"].append({"type": "text", "text": "Descriptions of the pictures:\n" + "\n".join(described)})
            choice = self.ask("edit_planner", request, parsed(LocalEditPlan))
            time.sleep(self.scenario.seconds(EDIT_S))
            inputs = [shortlist[index].option.data for index in choice.indices(len(shortlist))]
            result = apply_operations(inputs, EditInstruction(capability_type=capability, operations=choice.operations))
        except Exception:  # the reference falls back to the step-4 picture whatever failed
            return fallback, []
        outputs = [Candidate(ImageOption(f"edit-{n}", Origin.edit, data), image_part(data)) for n, data in enumerate(result.images, 1)]
        for output in outputs:
            output.rating = self._rate(plan, capability, threshold, output)
        best = max(outputs, key=lambda c: c.score)
        return (best, result.operations) if best.rating is not None and best.score > 0 else (fallback, [])

    def _describe(self, shortlist: Sequence[Candidate]) -> list[str]:
        """The reference's first step of edit planning: every candidate described, three to a call."""
        described: list[str] = []
        for first in range(0, len(shortlist), REFERENCE_PICTURES_PER_DESCRIPTION):
            parts = [c.part for c in shortlist[first : first + REFERENCE_PICTURES_PER_DESCRIPTION]]
            request = [{"role": "user", "content": [*parts, {"type": "text", "text": DESCRIBER_PROMPT}]}]
            described += self.ask("picture_describer", request, parsed(Descriptions)).descriptions
        return described


def parse_free_plan(text: str) -> tuple[CapabilityType, Plan]:
    """The plan and the image type the planner chose."""
    plan = parsed(Plan)(text)
    match = re.search(r"\{.*\}", text, re.DOTALL)
    assert match is not None
    return CapabilityType(json.loads(match[0])["image_type"]), plan


def reference_choice(candidates: list[Candidate]) -> tuple[Candidate, bool]:
    """The reference's choice rule: (picture, whether it must be edited)."""
    if len(candidates) == 1:
        return candidates[0], not candidates[0].usable
    found = [c for c in candidates if c.option.origin is not Origin.seed]
    usable = [c for c in found if c.usable]
    if usable:
        return max(usable, key=lambda c: c.score), False
    if found:
        return max(found, key=lambda c: c.score), True
    return candidates[0], True


def run_reference(scenario: Scenario, quotas: Mapping[CapabilityType, int], book: PictureBook, brief: str, workers: int) -> SideResult:
    """The reference's batch loop: `workers` threads (10 as shipped), a window of twice as many
    futures (20 as shipped), quota checked on return."""
    manager = ReferenceQuotaManager(quotas)
    discarded = 0
    failures: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    accepted_at: list[float] = []
    submission_limit = 10 * scenario.samples + 50
    seeds = book.seeds
    with World(scenario, book) as services:
        pipeline = ReferencePipeline(scenario, services.address.endpoint_url, services.address.search_url, brief)
        cpu, started = time.process_time(), time.monotonic()
        pending: set[Future[ReferenceSample | str]] = set()
        submitted = 0
        with ThreadPoolExecutor(max_workers=workers) as pool:
            while not manager.is_complete():
                while len(pending) < REFERENCE_WINDOW_PER_WORKER * workers and submitted < submission_limit:
                    pending.add(pool.submit(pipeline.sample, submitted, seeds[submitted % len(seeds)]))
                    submitted += 1
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    if isinstance(result, str):
                        failures[result] += 1
                    elif manager.can_generate(result.image_type):
                        manager.record(result.image_type)
                        accepted[result.image_type.value] += 1
                        accepted_at.append(time.monotonic() - started)
                    else:
                        discarded += 1
            seconds, cpu = time.monotonic() - started, time.process_time() - cpu
            counts = services.counts()
            unfinished = sum(1 for future in pending if not future.cancel() and not future.done())
        pipeline.close()
    return SideResult(
        name=f"reference, {workers} workers",
        accepted=sum(accepted.values()),
        seconds=seconds,
        cpu_seconds=cpu,
        requests=counts.requests,
        statuses=counts.statuses,
        tokens=counts.tokens,
        discarded=discarded,
        failures=dict(sorted(failures.items())),
        unfinished=unfinished,
        by_type=dict(sorted(accepted.items())),
        time_scale=scenario.time_scale,
        accepted_at=accepted_at,
        slot_seconds=slot_seconds(counts.in_flight_changes, started, started + seconds),
        occupancy=occupancy(counts.in_flight_changes, started, started + seconds),
        workers=workers,
    )


class ReferenceRun:
    """The reference side in a child process of its own: its threads, client pools and imports share
    nothing with ours but the machine."""

    def __init__(self, scenario: Scenario, quotas: Mapping[CapabilityType, int], book: PictureBook, brief: str, workers: int):
        processes = multiprocessing.get_context("fork")
        self._receive, send = processes.Pipe(duplex=False)
        self._process = processes.Process(target=self._run, args=(scenario, quotas, book, brief, workers, send), name="reference")
        self._process.start()
        send.close()

    @staticmethod
    def _run(scenario: Scenario, quotas: Mapping[CapabilityType, int], book: PictureBook, brief: str, workers: int, send: Connection) -> None:
        try:
            send.send(run_reference(scenario, quotas, book, brief, workers))
        except BaseException as error:  # whatever stops the child must reach the parent as a failure
            send.send(RuntimeError(f"the reference side failed: {type(error).__name__}: {error}"))
            raise

    def stop(self) -> None:
        """Ends the reference side early (its services notice their parent is gone and stop)."""
        self._process.terminate()
        self._process.join()

    def result(self) -> SideResult:
        outcome = self._receive.recv()
        self._process.join()
        if isinstance(outcome, Exception):
            raise outcome
        result: SideResult = outcome
        return result

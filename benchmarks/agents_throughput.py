"""Generation throughput: our scheduler and agents against the reference's structure, same endpoint.

Both sides produce the same per-type quota mix of N accepted samples against a simulated
OpenAI-compatible endpoint on 127.0.0.1 that imposes what real providers impose: requests and tokens
per minute and a cap on requests in flight (429 with Retry-After beyond them), a steady trickle of
503s, and a latency per role (the planner, edit planner, question generator and validator are slow
reasoning models; the selector is quick). The scripted models of `testkit/dpe_testkit/agent_script.py`
answer both sides alike, and a fake Serper service gives every query pictures of its own, so what
differs between the sides is how they schedule the same calls:

- OURS is the real generate-stage loop (`dpe.stages.generate.Generation`, quotas as plans) driving
  the real `AgentProvider` (both searches at once, every candidate rated at once, one limiter per
  endpoint set to the endpoint's published limits, retries that honour Retry-After).
- REFERENCE re-creates the reference implementation's structure from its documented behaviour: a
  pool of 10 threads fed through a window of 20 futures, every call of a sample made one after
  another with the synchronous `openai` client, any failure retried 5 times after
  min(2^attempt * 2, 30) s whatever it was, the planner choosing the image type, and a quota manager
  that throws away a finished sample whose type is already full. It borrows our prompt builders,
  reply models, image encoding and local editor only so that requests and replies are the same.

The measure is accepted samples per minute: a sample counts when it lands within its type's quota.

Durations are compressed by --time-scale: every latency, backoff and quota window is multiplied by
it (HTTP timeouts are not, since no simulated latency comes near them). Rates are reported per
wall-clock minute and per simulated minute (a minute at the real latencies). The two sides run at
the same time, each against its own copy of the services in a child process, the reference in a
child process of its own. Pictures are small (128x96) and made before the clock starts, so that
CPU work, which is not compressed, stays a small part of the run.

Run: python benchmarks/agents_throughput.py [--samples N] [--time-scale S] [--seed K] [--repeats R] [--results FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import math
import multiprocessing
import os
import platform
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx  # noqa: E402
from reporting import replace_section  # noqa: E402
import openai  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from dpe_testkit.agent_script import (  # noqa: E402
    NEW_QUERY,
    RELATED_QUERY,
    AgentScript,
    attached_digest,
    first_text,
    role_of,
    url_digest,
)
from dpe_testkit.openai_server import IMAGE_TOKENS as FAKE_IMAGE_TOKENS  # noqa: E402
from dpe_testkit.openai_server import (  # noqa: E402
    FakeOpenAIServer,
    ServerLimits,
    default_usage,
    image_parts,
    rate_limited,
    server_error,
)
from dpe_testkit.pictures import encode, scene  # noqa: E402
from dpe_testkit.runs import context, write_run  # noqa: E402
from dpe_testkit.search_server import SearchServer  # noqa: E402

from dpe.agents import AgentProvider, SampleTask, SeedItem  # noqa: E402
from dpe.agents import messages as prompts  # noqa: E402
from dpe.agents.models import QUESTION_SCHEMAS, LocalEditPlan, Observation, Plan, Rating, Verdict  # noqa: E402
from dpe.agents.roles import SAMPLES_PER_ENDPOINT_SLOT, agent_prompt, samples_in_flight  # noqa: E402
from dpe.agents.selection import USABLE_SCORE, ImageOption, Origin, Rated  # noqa: E402
from dpe.generation import stable_seed  # noqa: E402
from dpe.llm import BURST_SECONDS, RetryPolicy, UsageLedger, image_part  # noqa: E402
from dpe.spec import AgentRoles, GenerateSettings, ModelEndpoint, SearchTool, StageName, Tools  # noqa: E402
from dpe.stages.generate import PERCEPTUAL, Generation  # noqa: E402
from dpe.taxonomy import CapabilityType, QuestionFormat  # noqa: E402
from dpe.tools.edit import EditInstruction, EditResult, LocalEditor, apply_operations  # noqa: E402
from dpe.tools.quality import Thresholds  # noqa: E402
from dpe.tools.search import SerperSearch  # noqa: E402

RESULTS_FILE = ROOT / "benchmarks" / "RESULTS.md"
SECTION_START = "<!-- agents_throughput:start -->"
SECTION_END = "<!-- agents_throughput:end -->"
COMMAND = "python benchmarks/agents_throughput.py"

# -- the simulated world, in real seconds and tokens (scaled by --time-scale at run time) -------


@dataclass(frozen=True)
class RoleProfile:
    """How one role's model behaves: seconds per reply and hidden reasoning tokens billed per reply."""

    latency_s: float
    reasoning_tokens: int


ROLE_PROFILES: dict[str, RoleProfile] = {
    "planner": RoleProfile(20.0, 1500),
    "image_selector": RoleProfile(4.0, 0),
    "edit_planner": RoleProfile(20.0, 1500),
    "observer": RoleProfile(12.0, 600),
    "question_generator": RoleProfile(18.0, 1500),
    "validator": RoleProfile(15.0, 1200),
}
"""The reference's models: thinking Claude (planner, validator), Gemini 2.5 Pro (edit planner), o3
(observer and generator), qwen3-vl-plus (selector); latencies typical of such models' replies."""
IMAGE_TOKENS = 765
"""Prompt tokens billed per attached picture (a 512-px tile at high detail)."""
SEARCH_API_S = 1.5
DOWNLOAD_S = 0.5
EDIT_S = 15.0
"""An image-edit model's time per edit (the reference's qwen-image-edit-plus takes this order)."""
REFERENCE_TIMEOUT_S = 60.0
REFERENCE_DOWNLOAD_TIMEOUT_S = 10.0
OUR_TIMEOUT_S = 300.0

PICTURE_SIZE = (128, 96)
SMALL_PICTURES = Thresholds(min_side=128, min_bytes=2_000)
"""The download gate for the benchmark's small pictures (the real gate wants 512 px and 20 KB)."""
USABLE_SCORE_GIVEN = 8.0
UNUSABLE_SCORE_GIVEN = 4.0
VALIDATOR_REJECTIONS = ((0.04, 3), (0.10, 2), (0.25, 1))
"""(cumulative share of pictures, rejections before the validator accepts a question about it):
4% of pictures never get a valid question within three tries, 6% need three, 15% need two."""
SMALL_EDIT = [
    {"op": "circle", "center": [0.6, 0.5], "radius": 0.08, "colour": "red", "width": 1},
    {"op": "label", "text": "peak?", "position": [0.05, 0.05], "size": 8, "background": None},
]
LISTEN_BACKLOG = 256
"""Pending connections the fake endpoint accepts; the standard library's 5 drops bursts of SYNs.
Both fakes also set TCP_NODELAY: `http.server` writes headers and body separately, and Nagle's
algorithm against the client's delayed ACK adds 40 ms to every answer."""


@dataclass(frozen=True)
class EndpointLimits:
    """The endpoint's published limits, enforced by the server and configured in our clients."""

    requests_per_minute: int = 500
    tokens_per_minute: int = 800_000
    max_concurrency: int = 64
    server_error_every: int = 50
    """Every n-th admitted request fails with 503 (2%)."""
    window_s: float = 10.0
    """Span over which the server enforces the per-minute quotas (bursts up to this much). Never
    less than our limiter's one-second bucket in wall-clock time: that bucket is not time-scaled,
    and a server window compressed below it would refuse bursts a real one accepts."""


@dataclass(frozen=True)
class Scenario:
    """One benchmark configuration; everything a run depends on."""

    samples: int = 150
    time_scale: float = 0.08
    seed: int = 7
    limits: EndpointLimits = field(default_factory=EndpointLimits)
    usable_share: float = 0.3
    """Share of found pictures the selector calls usable (the rest need an edit)."""
    edited_usable_share: float = 0.9
    """Share of edited pictures the selector calls usable."""
    results_per_query: int = 2
    max_regenerations: int = 2
    reference_workers: int = 10
    reference_window: int = 20

    def seconds(self, real_seconds: float) -> float:
        """A real duration on the compressed clock."""
        return real_seconds * self.time_scale

    def per_scaled_minute(self, per_minute: int) -> int:
        """A per-minute quota on the compressed clock."""
        return max(1, round(per_minute / self.time_scale))


MIX: dict[CapabilityType, float] = {
    CapabilityType.chart_graph: 0.35,
    CapabilityType.geometric: 0.25,
    CapabilityType.text_dense: 0.20,
    CapabilityType.diagram: 0.12,
    CapabilityType.map: 0.08,
}
"""Mixture weights as a diagnosis would give them."""


def quotas_for(samples: int) -> dict[CapabilityType, int]:
    """Per-type quotas summing to exactly `samples` (largest remainders get the rounding); a type
    whose share rounds to nothing gets no quota, as in the reference's quota manager."""
    raw = {t: samples * w for t, w in MIX.items()}
    quotas = {t: math.floor(v) for t, v in raw.items()}
    by_remainder = sorted(raw, key=lambda t: (quotas[t] - raw[t], list(MIX).index(t)))
    for capability in by_remainder[: samples - sum(quotas.values())]:
        quotas[capability] += 1
    return {t: q for t, q in quotas.items() if q > 0}


def weakness_brief(quotas: Mapping[CapabilityType, int]) -> str:
    """The weakness prompt both sides hand to the planner and generator."""
    total = sum(quotas.values())
    lines = ["[Model Weakness Analysis]"]
    for capability, quota in sorted(quotas.items(), key=lambda item: -item[1]):
        lines.append(f"PRIORITY [{capability.value}] ({quota / total:.0%} of the samples): {capability.description}")
    return "\n".join(lines)


def fraction(*parts: object) -> float:
    """A deterministic number in [0, 1) from names and numbers."""
    return stable_seed(*parts) / 2**63


# -- the scripted models -----------------------------------------------------------------------

SEED_TAG = re.compile(r"\(seed (\d+)\)")
FREE_TYPE_MARKER = "Image type: choose it yourself"
ASSIGNED_TYPE_LINE = "Image type (assigned; the sample must be of this type): {capability_type}, that is {capability_description}."


class ScriptedModels(AgentScript):
    """The agent script with the benchmark's deterministic variety, identical for both sides.

    Each seed leads to its own search queries, so pictures never repeat; the planner names an image
    type drawn from the mixture (what the reference's planner is asked to do, at its best); ratings
    and validator verdicts depend only on the picture, so the same picture fares the same on both
    sides.
    """

    def __init__(self, scenario: Scenario):
        super().__init__()
        self.scenario = scenario
        self.latency = {role: scenario.seconds(profile.latency_s) for role, profile in ROLE_PROFILES.items()}
        self.originals: set[str] = set()
        """Digests of found and seed pictures; any other picture is an edit output."""
        self.validations: Counter[str] = Counter()
        self._fresh = itertools.count(1)

    def usage(self, request: dict[str, Any], content: str) -> tuple[int, int]:
        """Tokens as a provider bills them: pictures at full price, reasoning tokens included."""
        prompt, completion = default_usage(request, content)
        pictures = len(image_parts(request))
        prompt += pictures * (IMAGE_TOKENS - FAKE_IMAGE_TOKENS)
        return prompt, completion + ROLE_PROFILES[role_of(request)].reasoning_tokens

    def _topic(self, body: dict[str, Any]) -> str:
        match = SEED_TAG.search(first_text(body))
        return f"seed {match[1]}" if match else f"fresh {next(self._fresh)}"

    def _planner(self, body: dict[str, Any]) -> dict[str, Any]:
        topic = self._topic(body)
        rng = random.Random(stable_seed(self.scenario.seed, "type", topic))
        image_type = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        related, new_element = queries_for(topic)
        return {**super()._planner(body), "image_type": image_type.value, "related_query": related, "new_element_query": new_element}

    def _image_selector(self, body: dict[str, Any]) -> dict[str, Any]:
        digest = attached_digest_of(body)
        share = self.scenario.usable_share if digest in self.originals else self.scenario.edited_usable_share
        usable = fraction(self.scenario.seed, "rating", digest) < share
        score = USABLE_SCORE_GIVEN if usable else UNUSABLE_SCORE_GIVEN
        return {"usable": usable, "score": score, "reason": "clear and on topic" if usable else "lacks the detail the plan needs"}

    def _edit_planner(self, body: dict[str, Any]) -> dict[str, Any]:
        """The script's edit, drawn to the scale of the small pictures: its 28-pixel label on a
        white box would cover much of a 128x96 picture and make edits of different pictures look
        alike to the near-duplicate check."""
        plan = super()._edit_planner(body)
        return {**plan, "operations": SMALL_EDIT} if "operations" in plan else plan

    def _validator(self, body: dict[str, Any]) -> dict[str, Any]:
        digest = attached_digest_of(body)
        with self._lock:
            seen = self.validations[digest]
            self.validations[digest] += 1
        draw = fraction(self.scenario.seed, "validator", digest)
        rejections = next((count for share, count in VALIDATOR_REJECTIONS if draw < share), 0)
        verdict = super()._validator(body)
        if seen < rejections:
            verdict.update(valid=False, reason="the detail the question asks about is not legible")
        return verdict


def attached_digest_of(body: dict[str, Any]) -> str:
    """The digest of the request's single attached picture (as `attached_digest` names it)."""
    return url_digest(image_parts(body)[0])


# -- the endpoint and the search service --------------------------------------------------------


class TokenWindow:
    """A tokens-per-window quota: admission needs the prompt's tokens, the reply's are billed after."""

    def __init__(self, limit: int, window_s: float):
        self._capacity = float(limit)
        self._rate = limit / window_s
        self._level = self._capacity
        self._updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self._capacity, self._level + (now - self._updated) * self._rate)
        self._updated = now

    def admit(self, tokens: int) -> float:
        """Takes `tokens` and returns 0, or returns the seconds until they would fit."""
        self._refill()
        if self._level >= min(tokens, self._capacity):
            self._level -= tokens
            return 0.0
        return (min(tokens, self._capacity) - self._level) / self._rate

    def bill(self, tokens: int) -> None:
        self._refill()
        self._level -= tokens


class QuotaEndpoint(FakeOpenAIServer):
    """The fake OpenAI server with the limits real providers enforce: request rate and concurrency
    (the fake's own `ServerLimits`) plus a token rate, and a 503 every n-th request."""

    def __init__(self, script: ScriptedModels, scenario: Scenario):
        limits = scenario.limits
        window = max(scenario.seconds(limits.window_s), BURST_SECONDS)
        minutes = window / scenario.time_scale / 60
        super().__init__(
            script,
            latency=script.delay,
            usage=script.usage,
            limits=ServerLimits(
                max_concurrency=limits.max_concurrency,
                requests_per_window=max(1, round(limits.requests_per_minute * minutes)),
                window_seconds=window,
            ),
            models=tuple(f"model-{role}" for role in ROLE_PROFILES),
        )
        self._httpd.socket.listen(LISTEN_BACKLOG)
        self._httpd.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
        self._tokens = TokenWindow(round(limits.tokens_per_minute * minutes), window)
        self._token_lock = threading.Lock()
        self._billed = 0
        self.fail_every(limits.server_error_every, server_error(503))

    @property
    def tokens_billed(self) -> int:
        """Prompt and completion tokens of every answered request so far."""
        with self._token_lock:
            return self._billed

    def _chat(self, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        prompt, _ = self.usage(body, "")
        with self._token_lock:
            wait_s = self._tokens.admit(prompt)
        if wait_s > 0:
            return self._render(body, rate_limited(round(wait_s, 3)))
        status, headers, payload = super()._chat(body)
        with self._token_lock:
            if status == 200:
                usage = json.loads(payload)["usage"]
                self._tokens.bill(usage["completion_tokens"])
                self._billed += usage["total_tokens"]
            else:
                self._tokens.bill(-prompt)
        return status, headers, payload


class InventedResults(dict[str, list[tuple[str, str]]]):
    """The search service's results table: a query not in the picture book gets fresh pictures."""

    def __init__(self, service: PictureSearch):
        super().__init__()
        self._service = service
        self._lock = threading.Lock()

    def get(self, query: str, default: Any = None) -> list[tuple[str, str]]:  # type: ignore[override]
        with self._lock:
            if query not in self:
                self[query] = self._service.publish(query, [drawn(number) for number in result_numbers(self._service.scenario, query)])
            return self[query]


class PictureSearch(SearchServer):
    """The fake Serper service: every query gets `results_per_query` pictures of its own, after the
    API's latency; each download takes the download latency."""

    def __init__(self, script: ScriptedModels, scenario: Scenario, book: PictureBook):
        super().__init__()
        self.script = script
        self.scenario = scenario
        self.results = InventedResults(self)
        for query, found in book.results.items():
            self.results[query] = self.publish(query, found)

    def publish(self, query: str, found: Sequence[tuple[bytes, str]]) -> list[tuple[str, str]]:
        """Serves the pictures and returns them as the query's (url, title) results."""
        listed = []
        for rank, (data, digest) in enumerate(found, start=1):
            self.script.originals.add(digest)
            url = self.image(f"{stable_seed(query, rank):x}.png", data, delay=self.scenario.seconds(DOWNLOAD_S))
            listed.append((url, f"{query} {rank}"))
        return listed

    def _handler(self) -> type[Any]:
        base = super()._handler()
        service = self

        class Handler(base):  # type: ignore[misc, valid-type]
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                service._closing.wait(service.scenario.seconds(SEARCH_API_S))
                super().do_POST()

        return Handler


def picture(number: int) -> bytes:
    """A small seeded scene as PNG."""
    return encode(scene(number % 2**32, PICTURE_SIZE))


def drawn(number: int) -> tuple[bytes, str]:
    """A picture and the digest under which the scripted models recognise it."""
    data = picture(number)
    return data, attached_digest(data)


def queries_for(topic: str) -> tuple[str, str]:
    """The planner's two search queries for a topic (a seed, or a fresh one)."""
    return f"{RELATED_QUERY} ({topic})", f"{NEW_QUERY} ({topic})"


def result_numbers(scenario: Scenario, query: str) -> list[int]:
    return [stable_seed(scenario.seed, query, rank) for rank in range(1, scenario.results_per_query + 1)]


@dataclass(frozen=True)
class PictureBook:
    """The pictures a run needs, made once before either side starts (drawing and encoding them
    during the run would load the machine in a way real services do not): each seed's picture, and
    the results of the two queries each seed leads the planner to."""

    seeds: list[SeedItem]
    results: dict[str, list[tuple[bytes, str]]]
    seed_digests: list[str]


def picture_book(scenario: Scenario, seed_count: int) -> PictureBook:
    """Seed items (a question naming the seed's number, which steers the queries) and pictures."""
    seed_numbers = [stable_seed(scenario.seed, "seed", number) for number in range(seed_count)]
    queries = [query for number in range(seed_count) for query in queries_for(f"seed {number}")]
    numbers = seed_numbers + [n for query in queries for n in result_numbers(scenario, query)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        made = pool.map(drawn, numbers, chunksize=16)
    seeds = [
        SeedItem(f"seed-{number}", f"How many bars are taller than 30? (seed {number})", "3", made[number][0], QuestionFormat.numerical)
        for number in range(seed_count)
    ]
    per_query = scenario.results_per_query
    found = made[seed_count:]
    results = {query: found[i * per_query : (i + 1) * per_query] for i, query in enumerate(queries)}
    return PictureBook(seeds, results, [digest for _, digest in made[:seed_count]])


@dataclass(frozen=True)
class EndpointCounts:
    """What the endpoint saw: chat requests by status, and tokens billed."""

    statuses: dict[int, int]
    tokens: int

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


@dataclass(frozen=True)
class WorldAddress:
    endpoint_url: str
    search_url: str


def serve(scenario: Scenario, book: PictureBook, control: Connection) -> None:
    """The child process: both fake services, answering "counts" and "stop" on `control`."""
    script = ScriptedModels(scenario)
    script.originals.update(book.seed_digests)
    endpoint = QuotaEndpoint(script, scenario).start()
    search = PictureSearch(script, scenario, book).start()
    control.send(WorldAddress(endpoint.base_url, search.url))
    try:
        while (command := control.recv()) != "stop":  # EOFError when the parent is gone ends it too
            assert command == "counts", command
            control.send(EndpointCounts(dict(sorted(Counter(endpoint.statuses()).items())), endpoint.tokens_billed))
    finally:
        search.close()
        endpoint.close()


class World:
    """A fresh endpoint and search service (fresh quotas, fresh script state) for one side.

    They run in a child process: in the measured process their threads would compete with the
    side being measured for the interpreter lock and slow it down in a way no real endpoint does.
    """

    def __init__(self, scenario: Scenario, book: PictureBook):
        processes = multiprocessing.get_context("fork")
        self._control, child = processes.Pipe()
        self._process = processes.Process(target=serve, args=(scenario, book, child), name="fake-services", daemon=True)
        self._process.start()
        child.close()
        self.address: WorldAddress = self._control.recv()

    def counts(self) -> EndpointCounts:
        self._control.send("counts")
        counts: EndpointCounts = self._control.recv()
        return counts

    def close(self) -> None:
        self._control.send("stop")
        self._process.join(timeout=30)
        self._control.close()

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- measurements -------------------------------------------------------------------------------


@dataclass
class SideResult:
    """What one side achieved and what it cost, up to the moment its last quota was met."""

    name: str
    accepted: int
    seconds: float
    cpu_seconds: float
    requests: int
    statuses: dict[int, int]
    tokens: int
    discarded: int
    failures: dict[str, int]
    """Samples that failed, by the step (or check) that stopped them."""
    unfinished: int
    """Samples whose work is lost: the reference's still running when its last quota was met, ours'
    spare tasks cancelled once their type's quota was full."""
    by_type: dict[str, int]
    time_scale: float
    accepted_at: list[float]
    """Wall-clock seconds from the start at which each accepted sample landed, in order."""

    @property
    def per_minute(self) -> float:
        """Accepted samples per wall-clock minute."""
        return self.accepted / self.seconds * 60 if self.seconds else 0.0

    @property
    def per_simulated_minute(self) -> float:
        """Accepted samples per minute at real latencies (the wall-clock rate times the time scale)."""
        return self.per_minute * self.time_scale

    @property
    def steady_per_simulated_minute(self) -> float:
        """Accepted per simulated minute between the quarter and three-quarter marks of the job:
        the running rate, without the start (nothing lands before one sample's latency) and the
        end (the last few samples and their replacements)."""
        first, last = len(self.accepted_at) // 4, (3 * len(self.accepted_at)) // 4
        span = self.accepted_at[last] - self.accepted_at[first] if last > first else 0.0
        return (last - first) / span * 60 * self.time_scale if span > 0 else 0.0

    @property
    def first_accepted_simulated_s(self) -> float:
        """Simulated seconds until the first sample landed."""
        return self.accepted_at[0] / self.time_scale if self.accepted_at else math.inf

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def last_tenth_simulated_s(self) -> float:
        """Simulated seconds the last tenth of the samples took to land."""
        if not self.accepted_at:
            return 0.0
        mark = self.accepted_at[max(0, (9 * len(self.accepted_at)) // 10 - 1)]
        return (self.accepted_at[-1] - mark) / self.time_scale

    @property
    def calls_per_accepted(self) -> float:
        return self.requests / self.accepted if self.accepted else math.inf

    @property
    def rate_limited(self) -> int:
        return self.statuses.get(429, 0)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    def used_per_minute(self, amount: int) -> float:
        """`amount` per simulated minute over this side's run."""
        return amount / (self.seconds / self.time_scale) * 60 if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "seconds": round(self.seconds, 2),
            "accepted_per_minute": round(self.per_minute, 2),
            "accepted_per_simulated_minute": round(self.per_simulated_minute, 2),
            "steady_accepted_per_simulated_minute": round(self.steady_per_simulated_minute, 2),
            "first_accepted_after_simulated_s": round(self.first_accepted_simulated_s, 1),
            "calls_per_accepted": round(self.calls_per_accepted, 2),
            "requests": self.requests,
            "rate_limited_429": self.rate_limited,
            "server_errors_5xx": self.server_errors,
            "discarded_over_quota": self.discarded,
            "failed": self.failures,
            "last_tenth_simulated_s": round(self.last_tenth_simulated_s, 1),
            "unfinished_at_end": self.unfinished,
            "requests_per_simulated_minute": round(self.used_per_minute(self.requests), 1),
            "tokens_per_simulated_minute": round(self.used_per_minute(self.tokens)),
            "cpu_seconds": round(self.cpu_seconds, 2),
            "by_type": self.by_type,
        }


# -- ours ---------------------------------------------------------------------------------------


class TimedLocalEditor(LocalEditor):
    """The local editor, taking as long as an image-edit model would."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    async def edit(self, images: list[bytes], instruction: EditInstruction) -> EditResult:
        await asyncio.sleep(self.seconds)
        return await super().edit(images, instruction)


def our_settings(scenario: Scenario, endpoint_url: str, search_url: str) -> GenerateSettings:
    """Every role on the one endpoint, each client configured with its published limits."""
    limits = scenario.limits

    def role_endpoint(role: str) -> ModelEndpoint:
        return ModelEndpoint(
            base_url=endpoint_url,
            model=f"model-{role}",
            timeout_seconds=OUR_TIMEOUT_S,
            max_concurrency=limits.max_concurrency,
            requests_per_minute=scenario.per_scaled_minute(limits.requests_per_minute),
            tokens_per_minute=scenario.per_scaled_minute(limits.tokens_per_minute),
        )

    roles = AgentRoles(**{role: role_endpoint(role) for role in AgentRoles.model_fields})
    search = SearchTool(provider="serper", base_url=search_url, results_per_query=scenario.results_per_query)
    return GenerateSettings(agents=roles, tools=Tools(search=search), max_regenerations=scenario.max_regenerations)


def run_ours(scenario: Scenario, quotas: Mapping[CapabilityType, int], book: PictureBook, brief: str) -> SideResult:
    """The generate stage's loop with the agent provider, on a throwaway local store."""
    with World(scenario, book) as services, tempfile.TemporaryDirectory() as scratch:
        settings = our_settings(scenario, services.address.endpoint_url, services.address.search_url)
        default = RetryPolicy()
        provider = AgentProvider(
            settings,
            api_keys={},
            search=SerperSearch(
                services.address.search_url,
                allow_private_hosts=True,
                thresholds=SMALL_PICTURES,
            ),
            editor=TimedLocalEditor(scenario.seconds(EDIT_S)),
            ledger=UsageLedger(),
            budget=None,
            limiters=None,
            retry=replace(
                default,
                base_delay_seconds=scenario.seconds(default.base_delay_seconds),
                max_delay_seconds=scenario.seconds(default.max_delay_seconds),
                max_retry_seconds=scenario.seconds(default.max_retry_seconds),
            ),
        )
        assert settings.agents is not None
        ctx = context(write_run(Path(scratch)), StageName.generate, 1)
        generation = Generation(
            ctx, provider, quotas, brief, book.seeds, in_flight=samples_in_flight(settings.agents), spent_limit=None, fingerprint=PERCEPTUAL
        )
        accepted_at: list[float] = []

        def advance(_: int) -> None:
            """Called as each task finishes: timestamps the samples accepted since the last call."""
            landed = sum(len(records) for records in generation.accepted.values())
            accepted_at.extend([time.monotonic() - started] * (landed - len(accepted_at)))

        cpu, started = time.process_time(), time.monotonic()
        asyncio.run(generation.run(advance))
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu
        counts = services.counts()
    return SideResult(
        name="ours",
        accepted=sum(len(records) for records in generation.accepted.values()),
        seconds=seconds,
        cpu_seconds=cpu,
        requests=counts.requests,
        statuses=counts.statuses,
        tokens=counts.tokens,
        discarded=0,
        failures=dict(sorted(generation.rejections.items())),
        unfinished=generation.cancelled,
        by_type={t.value: len(records) for t, records in generation.accepted.items() if records},
        time_scale=scenario.time_scale,
        accepted_at=accepted_at,
    )


# -- the reference's structure ------------------------------------------------------------------

REFERENCE_ATTEMPTS = 5
REFERENCE_BACKOFF_CAP_S = 30.0
REFERENCE_MAX_TOKENS = 8192
REFERENCE_RESULTS_PER_QUERY = 3
REFERENCE_MAX_EDIT_CANDIDATES = 6
ReplyT = TypeVar("ReplyT")


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
        self.http = httpx.Client(timeout=REFERENCE_DOWNLOAD_TIMEOUT_S)
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
        except (httpx.HTTPError, ValueError, KeyError):
            return []
        kept: list[bytes] = []
        for hit in hits:
            try:
                response = self.http.get(hit["imageUrl"])
            except httpx.HTTPError:
                continue
            if response.status_code == httpx.codes.OK and SMALL_PICTURES.check(response.content).ok:
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
            return self.ask("image_selector", prompts.selector(plan, capability, threshold, candidate.part), parsed(Rating))
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


def run_reference(scenario: Scenario, quotas: Mapping[CapabilityType, int], book: PictureBook, brief: str) -> SideResult:
    """The reference's batch loop: 10 threads, a window of 20 futures, quota checked on return."""
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
        with ThreadPoolExecutor(max_workers=scenario.reference_workers) as pool:
            while not manager.is_complete():
                while len(pending) < scenario.reference_window and submitted < submission_limit:
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
        name="reference",
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
    )


# -- the comparison and its report -------------------------------------------------------------


@dataclass
class Comparison:
    scenario: Scenario
    quotas: dict[str, int]
    ours: SideResult
    reference: SideResult

    @property
    def ratio(self) -> float:
        """Ours over the reference in accepted samples per minute over the whole job (the measure)."""
        return self.ours.per_minute / self.reference.per_minute if self.reference.per_minute else math.inf

    @property
    def steady_ratio(self) -> float:
        """The same between the quarter and three-quarter marks of each job."""
        reference = self.reference.steady_per_simulated_minute
        return self.ours.steady_per_simulated_minute / reference if reference else math.inf

    def as_dict(self) -> dict[str, Any]:
        limits = self.scenario.limits
        return {
            "samples": self.scenario.samples,
            "time_scale": self.scenario.time_scale,
            "seed": self.scenario.seed,
            "quotas": self.quotas,
            "limits": {
                "requests_per_minute": limits.requests_per_minute,
                "tokens_per_minute": limits.tokens_per_minute,
                "max_concurrency": limits.max_concurrency,
                "server_error_rate": round(1 / limits.server_error_every, 4),
            },
            "ours": self.ours.as_dict(),
            "reference": self.reference.as_dict(),
            "ratio": round(self.ratio, 2),
            "steady_ratio": round(self.steady_ratio, 2),
        }


class ReferenceRun:
    """The reference side in a child process of its own, running while ours runs here.

    Each side has its own copy of the services, so they share nothing but the machine; running
    them side by side halves the benchmark's duration. The reference's ten threads mostly wait, so
    the CPU it takes from ours is small (both sides' CPU seconds are reported).
    """

    def __init__(self, scenario: Scenario, quotas: Mapping[CapabilityType, int], book: PictureBook, brief: str):
        processes = multiprocessing.get_context("fork")
        self._receive, send = processes.Pipe(duplex=False)
        self._process = processes.Process(target=self._run, args=(scenario, quotas, book, brief, send), name="reference")
        self._process.start()
        send.close()

    @staticmethod
    def _run(scenario: Scenario, quotas: Mapping[CapabilityType, int], book: PictureBook, brief: str, send: Connection) -> None:
        try:
            send.send(run_reference(scenario, quotas, book, brief))
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


def compare(scenario: Scenario) -> Comparison:
    """Runs both sides at once, each on a fresh copy of the same world."""
    quotas = quotas_for(scenario.samples)
    brief = weakness_brief(quotas)
    book = picture_book(scenario, 3 * scenario.samples // 2 + 30)
    reference = ReferenceRun(scenario, quotas, book, brief)
    try:
        ours = run_ours(scenario, quotas, book, brief)
    except BaseException:
        reference.stop()
        raise
    return Comparison(scenario, {t.value: q for t, q in quotas.items()}, ours, reference.result())


ROWS: list[tuple[str, Callable[[SideResult], str]]] = [
    ("accepted samples", lambda s: f"{s.accepted}"),
    ("wall-clock seconds", lambda s: f"{s.seconds:.1f}"),
    ("accepted per wall-clock minute", lambda s: f"{s.per_minute:.1f}"),
    ("accepted per simulated minute (whole job)", lambda s: f"{s.per_simulated_minute:.2f}"),
    ("accepted per simulated minute (25%-75% of the job)", lambda s: f"{s.steady_per_simulated_minute:.2f}"),
    ("first sample accepted after (simulated s)", lambda s: f"{s.first_accepted_simulated_s:.0f}"),
    ("last tenth of the samples took (simulated s)", lambda s: f"{s.last_tenth_simulated_s:.0f}"),
    ("LLM calls per accepted sample", lambda s: f"{s.calls_per_accepted:.1f}"),
    ("429 answers", lambda s: f"{s.rate_limited}"),
    ("5xx answers", lambda s: f"{s.server_errors}"),
    ("discarded over quota", lambda s: f"{s.discarded}"),
    ("failed samples", lambda s: f"{s.failed} ({', '.join(f'{k} {v}' for k, v in s.failures.items()) or 'none'})"),
    ("unfinished, work lost (reference: running at the end; ours: cancelled spares)", lambda s: f"{s.unfinished}"),
    ("requests per simulated minute", lambda s: f"{s.used_per_minute(s.requests):.0f}"),
    ("tokens per simulated minute", lambda s: f"{s.used_per_minute(s.tokens):,.0f}"),
    ("CPU seconds (whole process)", lambda s: f"{s.cpu_seconds:.1f}"),
]


def table(comparison: Comparison) -> str:
    """The results as a Markdown table, one row per measure."""
    lines = ["| measure | ours | reference |", "|---|---:|---:|"]
    for label, cell in ROWS:
        lines.append(f"| {label} | {cell(comparison.ours)} | {cell(comparison.reference)} |")
    lines.append(f"| **ratio ours / reference, whole job (the measure)** | **{comparison.ratio:.2f}x** | |")
    lines.append(f"| ratio ours / reference, 25%-75% of the job | {comparison.steady_ratio:.2f}x | |")
    return "\n".join(lines)


def command_line(scenario: Scenario, repeats: int = 1) -> str:
    repeated = f" --repeats {repeats}" if repeats > 1 else ""
    return f"{COMMAND} --samples {scenario.samples} --time-scale {scenario.time_scale:g} --seed {scenario.seed}{repeated}"


def ceiling(side: SideResult, limits: EndpointLimits) -> float:
    """Accepted samples per simulated minute the request and token quotas would allow at this
    side's requests and tokens per accepted sample."""
    tokens_per_accepted = side.tokens / side.accepted if side.accepted else math.inf
    return min(limits.requests_per_minute / side.calls_per_accepted, limits.tokens_per_minute / tokens_per_accepted)


def use_of_quotas(side: SideResult, limits: EndpointLimits) -> str:
    """What a side sent per simulated minute, against the endpoint's quotas."""
    requests, tokens = side.used_per_minute(side.requests), side.used_per_minute(side.tokens)
    return (
        f"{requests:,.0f} requests and {tokens:,.0f} tokens per simulated minute "
        f"({requests / limits.requests_per_minute:.0%} and {tokens / limits.tokens_per_minute:.0%} of the quotas)"
    )


def repeats_line(ratios: Sequence[float]) -> str:
    """How the measure varied over the runs recorded together."""
    if len(ratios) == 1:
        return "One run."
    ordered = ", ".join(f"{ratio:.2f}x" for ratio in sorted(ratios))
    return f"{len(ratios)} runs, one after another; the measure was {ordered}. The table shows the median run."


def section(comparison: Comparison, ratios: Sequence[float]) -> str:
    """The RESULTS.md section: command, date, machine, numbers and what they mean."""
    scenario, ours, reference = comparison.scenario, comparison.ours, comparison.reference
    limits = scenario.limits
    latencies = ", ".join(f"{role} {profile.latency_s:g} s" for role, profile in ROLE_PROFILES.items())
    quota_text = ", ".join(f"{name} {quota}" for name, quota in comparison.quotas.items())
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    verdict = "meets" if comparison.ratio >= 5 else "is below"
    our_failures = ", ".join(f"{kind} {count}" for kind, count in ours.failures.items()) or "none"
    return f"""{SECTION_START}
## Agents: accepted samples per minute, ours vs the reference structure

- Command: `{command_line(scenario, len(ratios))}`
- Date: {datetime.now(UTC).date().isoformat()}
- Machine: {os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}
- Endpoint, the same for both sides: {rpm} requests/min, {tpm:,} tokens/min, {limits.max_concurrency} requests
  in flight (429 with Retry-After beyond any of them), and a 503 on every {limits.server_error_every}th request.
- Latency per reply: {latencies}.
  Search API {SEARCH_API_S:g} s, each download {DOWNLOAD_S:g} s, an edit {EDIT_S:g} s. Every duration runs at
  x{scenario.time_scale:g}; a "simulated minute" is a minute at these latencies.
- Quotas ({scenario.samples} samples): {quota_text}.
- Scripted models answer both sides alike: {scenario.usable_share:.0%} of found pictures are usable as they
  are and {scenario.edited_usable_share:.0%} of edited ones; the validator rejects the first question about 25%
  of pictures and never accepts one about 4%. The reference's planner picks each image type at random
  with the mixture's weights, the best a weakness prompt can make it do.
- The sides run at the same time, each against its own copy of the services (child processes).
- Repeats: {repeats_line(ratios)}

{table(comparison)}

**Result.** Over the whole job ours accepted {comparison.ratio:.2f}x as many samples per minute as
the reference structure ({ours.per_simulated_minute:.1f} against {reference.per_simulated_minute:.1f} per simulated minute), which {verdict}
the 5x target. While both jobs were in full swing (from a quarter to three quarters of their
samples) the ratio was {comparison.steady_ratio:.2f}x ({ours.steady_per_simulated_minute:.1f} against {reference.steady_per_simulated_minute:.1f}).

**Where the gain comes from.**
- *Endpoint capacity the reference cannot use.* Ten threads that each wait on one call at a time
  keep at most ten requests in flight: the reference sent {use_of_quotas(reference, limits)}.
  Ours ran {SAMPLES_PER_ENDPOINT_SLOT * limits.max_concurrency} samples at once (two per request slot) and sent {use_of_quotas(ours, limits)}.
  This is most of the gain, and it grows and shrinks with the endpoint's limits.
- *Independent calls in parallel.* Both searches run together and all candidates are rated at
  once, which shortens each sample (not its number of calls).
- *Quotas as plans.* Every task of ours has its type before it starts, so nothing is discarded.
  The reference threw away {reference.discarded} finished samples, still had {reference.unfinished} running when its last quota
  filled, and took {reference.last_tenth_simulated_s:.0f} simulated seconds over its last tenth of samples while its
  planner kept choosing types that were already full. Calls per accepted sample: ours
  {ours.calls_per_accepted:.1f}, the reference {reference.calls_per_accepted:.1f} (it also describes the picture again before every regeneration).
- *Pacing instead of blind retries.* Ours took {ours.rate_limited} 429s in {ours.requests} requests, each answered by
  pausing the endpoint's limiter for the Retry-After the server sent. The reference took
  {reference.rate_limited} 429s and {reference.server_errors} 5xx answers; each costs one of its ten workers a fixed wait of 4 s,
  then 8, 16 and 30 s, whatever the server asked.
- *Spares at the end instead of late replacements.* Once every needed task has started, ours
  runs spare tasks beside them, about as many as the failure rate so far says will fail (and one for
  each of a type's last two samples), so a sample failing near the end is covered by work already under way. The first tasks to finish fill
  each quota and the type's other tasks are cancelled unfinished ({ours.unfinished} this run; their spend is
  recorded, and no finished sample is dropped). Ours' last tenth of samples took {ours.last_tenth_simulated_s:.0f} simulated seconds.

**What holds ours back.**
- *The start.* All {SAMPLES_PER_ENDPOINT_SLOT * limits.max_concurrency} samples begin together and queue for the same endpoint,
  so ours' first sample landed after {ours.first_accepted_simulated_s:.0f} simulated seconds (the reference's after {reference.first_accepted_simulated_s:.0f}).
- *Failures.* Ours failed {ours.failed} samples ({our_failures}): it refuses edits the selector finds
  unusable, and near-duplicates, both of which the reference keeps.
- *Samples in flight.* Ours runs two samples per request slot of the endpoint, because a sample
  also spends time in search, editing and queues (with one per slot the full-swing rate was about
  half). At ours' calls and tokens per accepted sample the endpoint's quotas would carry about
  {ceiling(ours, limits):.0f} accepted samples per simulated minute; ours reached {ours.steady_per_simulated_minute:.1f} in full swing.
- *The job is small.* The start and the end weigh less in a job of 1000 samples, where the
  whole-job figure moves towards the full-swing one.

**Limits of the measurement.** The CPU work (encoding and hashing pictures, the HTTP clients, writing
records) is not time-compressed, so at x{scenario.time_scale:g} it weighs more than at real latencies; ours'
process used {ours.cpu_seconds:.0f} CPU seconds in {ours.seconds:.0f} s on {os.cpu_count()} cores, and its per-call latency grows with it.
Several choices favour the reference: its clock stops when its last quota fills (its running samples
are not waited for), its planner follows the mixture exactly, its fusion planner's description calls
are left out, each picture is encoded once per sample, and no latency comes near its 60 s timeout.
{SECTION_END}"""


def record(comparison: Comparison, path: Path, ratios: Sequence[float]) -> None:
    """Writes or replaces this benchmark's section of the results file."""
    replace_section(path, SECTION_START, SECTION_END, section(comparison, ratios))


def parse_args(argv: Sequence[str] | None) -> tuple[Scenario, Path, int]:
    defaults = Scenario()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--samples", type=int, default=defaults.samples, help="accepted samples each side must produce")
    parser.add_argument("--time-scale", type=float, default=defaults.time_scale, help="multiplier of every latency and quota window")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of pictures, ratings, verdicts and type choices")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="Markdown file whose section is written")
    parser.add_argument("--repeats", type=int, default=1, help="runs one after another; the median run is recorded with the spread")
    args = parser.parse_args(argv)
    if args.samples < len(MIX) or args.time_scale <= 0 or args.repeats < 1:
        parser.error(f"--samples must be at least {len(MIX)}, --time-scale positive and --repeats at least 1")
    return Scenario(samples=args.samples, time_scale=args.time_scale, seed=args.seed), args.results, args.repeats


def main(argv: Sequence[str] | None = None) -> Comparison:
    """Runs the comparison (`--repeats` times), prints each run, and records the median run."""
    scenario, results, repeats = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    comparisons = []
    for _ in range(repeats):
        comparison = compare(scenario)
        print(command_line(scenario))
        print(table(comparison))
        print(json.dumps(comparison.as_dict(), sort_keys=True), flush=True)
        comparisons.append(comparison)
    median = sorted(comparisons, key=lambda c: c.ratio)[(len(comparisons) - 1) // 2]
    record(median, results, [c.ratio for c in comparisons])
    return median


if __name__ == "__main__":
    main()
